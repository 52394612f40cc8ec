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
 *    controller attributes in-flight threads to instances by it). Frames of
 *    any other function count as working for every instance.
 *  - Every per-instance state begins with struct lsw_state_hdr, and every
 *    entry point, timer, work item and kthread of the implementation
 *    brackets its work with lsw_state_enter()/lsw_state_exit() on it.
 *  - ops->quiesce() stops the implementation's own asynchronous activity
 *    for the instance and returns once none of it runs any more;
 *    ops->resume() restarts it.
 *  - The state transformer lives in the incoming implementation:
 *    ops->import_state() converts from the outgoing implementation's
 *    exported state, whose layout is identified by its state_version.
 *  - Callbacks run with memalloc_noio in force (an allocation must not
 *    write back through a gated device) and must not wait for the gated
 *    instance's own I/O.
 *
 * A swap, driven by the controller through /dev/lsw (see lsw_core.c):
 *   begin     close the gate; new calls wait (bounded by the swap's deadline)
 *   drain     wait until every call that passed the gate has left
 *   quiesce   the old implementation stops its own asynchronous work
 *             (the controller then proves, with its probes and the kernel
 *             stacks, that no thread runs old code for the instance)
 *   transfer  the state must have no call inside (lsw_state_enter count),
 *             is marked exported, exported, and imported by the new one
 *   commit    switch, resume the new implementation, open the gate
 * Any failure, the deadline, the controller's death or `abort` reopens the
 * gate on the old implementation with its state untouched.
 */
#ifndef _LSW_CORE_H
#define _LSW_CORE_H

#include <linux/atomic.h>
#include <linux/bug.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/types.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#define LSW_NAME_LEN 32

/* The head of every per-instance state. */
struct lsw_state_hdr {
	/* Set by the core just before it exports the state; see lsw_state_enter(). */
	bool exported;
	/* Warned once already. */
	bool warned;
	/* Threads between lsw_state_enter() and lsw_state_exit() on this state. */
	atomic_t inside;
	/* private to the core: on the implementation's retired list after commit */
	struct list_head retired;
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
	/* Free a state (and whatever it still holds). */
	void (*destroy)(struct lsw_instance *inst, struct lsw_state_hdr *state);
	/*
	 * Optional. After commit, drop what the old state holds (timers, file
	 * references). Its memory stays until the implementation unregisters,
	 * so a late call finds it marked exported (lsw_state_enter() WARNs and
	 * returns false) instead of reading freed memory; destroy() then frees
	 * it, and must cope with what release() dropped.
	 */
	void (*release)(struct lsw_instance *inst, struct lsw_state_hdr *state);
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

/*
 * What `loopswap check` reads from an implementation's .ko without loading
 * it, declared with MODULE_INFO next to MODULE_LICENSE: lsw_class,
 * lsw_version, lsw_state_version and lsw_imports (the state versions its
 * transformer imports, comma-separated). They must match the struct
 * lsw_impl it registers and its can_import(); see lswloop_v1.c.
 */

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
	struct list_head retired;	/* old states kept until unregister */
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
	/*
	 * Calls between lsw_enter() and lsw_exit(), and callers bouncing off
	 * a closed gate. One shared counter, not SRCU: a drain then needs no
	 * grace period, only the calls in flight to leave.
	 */
	atomic_t active ____cacheline_aligned_in_smp;
	/* Read by every call: not on the line every call writes. */
	bool gate_closed ____cacheline_aligned_in_smp;
	wait_queue_head_t gate_wq;
	atomic64_t held_at_gate;
	struct list_head node;
	struct kref ref;
	/* Serialises swap steps; never held across a wait for calls. */
	struct mutex swap_lock;
	struct lsw_swap *swap;		/* under swap_lock */
	u64 swap_gen;			/* under swap_lock: bumped when a swap starts or ends */
	bool retiring;			/* under swap_lock: no new swap */
	struct delayed_work deadline_work;
	wait_queue_head_t drain_wq;	/* woken when active drops to 0, or a swap ends */
	u64 last_abort_owner;		/* handle id of the last aborted swap */
	char last_abort[96];		/* and why the core aborted it */
};

/* A call in progress: what lsw_enter() chose for it. */
struct lsw_call {
	struct lsw_instance *inst;
	const struct lsw_impl *impl;
	struct lsw_state_hdr *state;
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
/*
 * Abort a swap in progress on inst and refuse new ones: call before
 * draining the instance's callers (e.g. del_gendisk), so none of them can
 * wait at a closed gate. Then lsw_instance_destroy().
 */
void lsw_instance_retire(struct lsw_instance *inst);
void lsw_instance_destroy(struct lsw_instance *inst);

/*
 * Enter an instance's current implementation: waits (does not fail) while
 * the instance's gate is closed, which the swap's deadline bounds. May sleep.
 */
void lsw_enter(struct lsw_instance *inst, struct lsw_call *call);
/* As lsw_enter(), but returns false at once instead of waiting at the gate. */
bool lsw_try_enter(struct lsw_instance *inst, struct lsw_call *call);
void lsw_exit(struct lsw_call *call);

/* Run the current implementation for every instance, e.g. on removal. */
#define lsw_call_ops(call, type) ((const type *)(call)->impl->class_ops)

/*
 * The independent check that quiescence was real. Implementation code
 * brackets all its work on a state with these. The core refuses to export
 * a state that has a thread inside, and marks it exported first (a full
 * barrier on both sides: either the exporter sees the thread inside, or the
 * thread sees the mark). Code that runs for a state already exported is a
 * bug in the swap: lsw_state_enter() WARNs (once per state; tests assert
 * there is none) and returns false, and the caller must then leave without
 * touching the state (fail the request, do not re-arm the timer): after a
 * commit the state has released what it held.
 */
static inline bool lsw_state_enter(struct lsw_state_hdr *state)
{
	atomic_inc(&state->inside);
	/* Pairs with the smp_mb() after the core sets exported. */
	smp_mb__after_atomic();
	if (likely(!READ_ONCE(state->exported)))
		return true;
	atomic_dec(&state->inside);
	if (!xchg(&state->warned, true))
		WARN(1, "lsw: implementation code ran for a state it had exported\n");
	return false;
}

static inline void lsw_state_exit(struct lsw_state_hdr *state)
{
	/* This call's accesses to the state happen before it counts as gone. */
	smp_mb__before_atomic();
	atomic_dec(&state->inside);
}

#endif /* _LSW_CORE_H */
