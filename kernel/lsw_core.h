/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lsw_core.h - hot-swappable implementations of a kernel object class
 *
 * The K42 recipe, per instance: interpose, block new calls at a gate, wait
 * until no thread runs in the old implementation, transfer (and transform)
 * its state into the new implementation's layout, switch, release the
 * blocked calls. The controller (loopswap) decides when "no thread runs in
 * the old implementation" holds, from eBPF entry/exit counters and kernel
 * stacks; the core provides the gate, the switch, the hand-over and the
 * abort.
 *
 * A class module (the stable front, e.g. lswloop owning the block devices)
 * registers a struct lsw_class and creates instances. Implementation
 * modules register a struct lsw_impl. Every call from the front into an
 * implementation goes through lsw_enter()/lsw_exit().
 *
 * Conventions an implementation must follow, which the controller relies on:
 *  - Every exported function of an implementation module is an entry point
 *    whose first argument is the struct lsw_instance * it works for (the
 *    controller attributes in-flight threads to instances by it).
 *  - Every per-instance state begins with struct lsw_state_hdr, and every
 *    entry point, timer, work item and kthread of the implementation calls
 *    lsw_tripwire() on it first.
 *  - ops->quiesce() stops the implementation's own asynchronous activity
 *    for the instance and returns once none of it runs any more;
 *    ops->resume() restarts it.
 *  - The state transformer lives in the incoming implementation:
 *    ops->import_state() converts from the outgoing implementation's
 *    exported state, whose layout is identified by its state_version.
 */
#ifndef _LSW_CORE_H
#define _LSW_CORE_H

#include <linux/bug.h>
#include <linux/list.h>
#include <linux/module.h>
#include <linux/srcu.h>
#include <linux/types.h>
#include <linux/wait.h>

#define LSW_NAME_LEN 32

/* The head of every per-instance state. */
struct lsw_state_hdr {
	/* Set by the core once this state has been exported; see lsw_tripwire(). */
	bool exported;
};

/*
 * An exported state: an opaque blob in the layout named by version. The
 * exporting implementation allocates data with kvmalloc(); the core frees it.
 */
struct lsw_state {
	u32 version;
	size_t size;
	void *data;
};

struct lsw_instance;

struct lsw_impl_ops {
	/* A fresh state for a new instance; arg is class-specific. */
	struct lsw_state_hdr *(*create)(struct lsw_instance *inst, const char *arg);
	void (*destroy)(struct lsw_instance *inst, struct lsw_state_hdr *state);
	/* Stop/restart the implementation's own asynchronous activity. */
	void (*quiesce)(struct lsw_instance *inst, struct lsw_state_hdr *state);
	void (*resume)(struct lsw_instance *inst, struct lsw_state_hdr *state);
	/* Serialise the state; it must stay usable (an abort resumes it). */
	int (*export_state)(struct lsw_instance *inst, struct lsw_state_hdr *state,
			    struct lsw_state *out);
	/* Whether import_state() can convert from this state layout. */
	bool (*can_import)(u32 from_version);
	/* A new state, converted from the outgoing implementation's. */
	struct lsw_state_hdr *(*import_state)(struct lsw_instance *inst,
					      const struct lsw_state *in);
};

struct lsw_class {
	const char *name;
	/* Called by the core with the instance gated, on commit. */
	void (*switched)(struct lsw_instance *inst);
	/* private to the core */
	struct list_head node;
};

struct lsw_impl {
	const char *class_name;
	const char *name;		/* unique; by convention KBUILD_MODNAME */
	u32 version;			/* of the implementation */
	u32 state_version;		/* of the layout export_state() produces */
	const struct lsw_impl_ops *ops;
	const void *class_ops;		/* the class's own entry points */
	struct module *owner;
	/* private to the core */
	struct list_head node;
};

/* The fields an implementation and its class may read. */
struct lsw_instance {
	u32 id;				/* first: the controller reads it from arg 0 */
	char name[LSW_NAME_LEN];
	struct lsw_class *cls;
	void *class_data;
	/* private to the core */
	struct lsw_impl *impl;
	struct lsw_state_hdr *state;
	struct srcu_struct srcu;
	bool gate_closed;
	wait_queue_head_t gate_wq;
	atomic64_t held_at_gate;
	struct list_head node;
	struct lsw_swap *swap;
};

/* A call in progress: what lsw_enter() chose for it. */
struct lsw_call {
	struct lsw_instance *inst;
	const struct lsw_impl *impl;
	struct lsw_state_hdr *state;
	int srcu_idx;
};

int lsw_class_register(struct lsw_class *cls);
void lsw_class_unregister(struct lsw_class *cls);

int lsw_impl_register(struct lsw_impl *impl);
void lsw_impl_unregister(struct lsw_impl *impl);

/*
 * Create an instance of cls served by the implementation named impl_name
 * (NULL: the newest registered version). name must be unique in the class.
 */
struct lsw_instance *lsw_instance_create(struct lsw_class *cls, const char *name,
					 const char *impl_name, const char *arg,
					 void *class_data);
void lsw_instance_destroy(struct lsw_instance *inst);

/*
 * Enter an instance's current implementation: waits (does not fail) while
 * the instance's gate is closed. May sleep.
 */
void lsw_enter(struct lsw_instance *inst, struct lsw_call *call);
void lsw_exit(struct lsw_call *call);

/* Run the current implementation for every instance, e.g. on removal. */
#define lsw_call_ops(call, type) ((const type *)(call)->impl->class_ops)

/*
 * The independent check that quiescence was real: code of an
 * implementation that runs for a state it has already exported is a bug in
 * the swap, so it WARNs (tests assert there is none).
 */
static inline void lsw_tripwire(const struct lsw_state_hdr *state)
{
	WARN_ONCE(READ_ONCE(state->exported),
		  "lsw: implementation code ran after its state was exported\n");
}

#endif /* _LSW_CORE_H */
