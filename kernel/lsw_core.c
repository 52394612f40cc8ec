// SPDX-License-Identifier: GPL-2.0
/*
 * lsw_core - per-instance hot swap of kernel object implementations
 *
 * See lsw_core.h for the model. The controller drives a swap through
 * /dev/lsw (root only), one text command per write(), the reply read back
 * with read() until it returns 0:
 *
 *   list                          classes, implementations, instances
 *   begin ID FROM TO TIMEOUT_MS   close instance ID's gate for a swap from
 *                                 FROM (checked) to TO; the core aborts the
 *                                 swap by itself TIMEOUT_MS later
 *   drain ID TIMEOUT_MS           wait (interruptibly, bounded) until every
 *                                 call that passed the gate has left
 *   quiesce ID                    stop the old implementation's async work
 *   transfer ID                   export the old state (refused while any
 *                                 thread is inside it), import it into TO
 *   commit ID                     switch to TO, resume it, open the gate
 *   abort ID                      undo, reopen on the old implementation;
 *                                 from another handle, a forced abort
 *
 * A swap belongs to the file handle that began it: closing the handle (the
 * controller exits or is killed) aborts it, and so does its deadline.
 *
 * Locking: lsw_lock guards the lists only and is never held across a
 * callback into an implementation or a wait. Each instance's swap_lock
 * serialises that instance's swap steps (callbacks included, under
 * memalloc_noio) but never a wait for calls; lock order
 * is lsw_lock, then swap_lock. Every lock a command takes is taken
 * killably, and every wait a command makes is interruptible and bounded.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/jiffies.h>
#include <linux/kstrtox.h>
#include <linux/ktime.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#include "lsw_core.h"

#define LSW_CMD_MAX 128
#define LSW_MAX_WORDS 5
/*
 * Callers wait at a closed gate in D state: the longest deadline stays well
 * under the hung-task detector's default 120 s.
 */
#define LSW_TIMEOUT_MAX_MS (60U * 1000U)

enum lsw_phase { LSW_GATED, LSW_DRAINED, LSW_QUIESCED, LSW_TRANSFERRED };

static const char * const phase_names[] = {
	[LSW_GATED] = "gated",
	[LSW_DRAINED] = "drained",
	[LSW_QUIESCED] = "quiesced",
	[LSW_TRANSFERRED] = "transferred",
};

struct lsw_handle;

struct lsw_swap {
	struct list_head node;		/* in owner->swaps, under owner->swaps_lock */
	struct lsw_handle *owner;
	struct lsw_instance *inst;	/* holds a reference */
	struct lsw_impl *from;
	struct lsw_impl *to;		/* holds a reference on to->owner */
	enum lsw_phase phase;
	struct lsw_state_hdr *new_state;
	ktime_t gate_closed_at;
	s64 held_before;
	unsigned long deadline;		/* jiffies */
	u64 gen;			/* inst->swap_gen while this swap lives */
};

struct lsw_handle {
	u64 id;
	struct mutex lock;		/* one command at a time, and its reply */
	spinlock_t swaps_lock;
	struct list_head swaps;
	char *reply;
	size_t reply_len;
	size_t reply_cap;
	size_t reply_pos;
	bool reply_failed;
};

static DEFINE_MUTEX(lsw_lock);
static LIST_HEAD(lsw_classes);
static LIST_HEAD(lsw_impls);
static LIST_HEAD(lsw_instances);
static DEFINE_IDA(lsw_ids);
static atomic64_t lsw_handle_ids = ATOMIC64_INIT(0);
/*
 * Deadline aborts reopen gates that memory reclaim may be waiting on (dirty
 * pages of a gated device): they run on a rescuer-backed workqueue.
 */
static struct workqueue_struct *lsw_deadline_wq;

static struct lsw_class *find_class(const char *name)
{
	struct lsw_class *cls;

	list_for_each_entry(cls, &lsw_classes, node)
		if (!strcmp(cls->name, name))
			return cls;
	return NULL;
}

static struct lsw_impl *find_impl(const char *name)
{
	struct lsw_impl *impl;

	list_for_each_entry(impl, &lsw_impls, node)
		if (!strcmp(impl->name, name))
			return impl;
	return NULL;
}

int lsw_class_register(struct lsw_class *cls)
{
	int ret = 0;

	mutex_lock(&lsw_lock);
	if (find_class(cls->name))
		ret = -EEXIST;
	else
		list_add_tail(&cls->node, &lsw_classes);
	mutex_unlock(&lsw_lock);
	return ret;
}
EXPORT_SYMBOL_GPL(lsw_class_register);

void lsw_class_unregister(struct lsw_class *cls)
{
	mutex_lock(&lsw_lock);
	list_del(&cls->node);
	mutex_unlock(&lsw_lock);
}
EXPORT_SYMBOL_GPL(lsw_class_unregister);

static unsigned int fail_register;
module_param(fail_register, uint, 0644);
MODULE_PARM_DESC(fail_register,
		 "test knob: this many lsw_impl_register() calls fail (-ENOMEM), as an init that fails");

int lsw_impl_register(struct lsw_impl *impl)
{
	unsigned int left = READ_ONCE(fail_register);
	int ret = 0;

	if (!impl->ops || !impl->ops->create || !impl->ops->destroy ||
	    !impl->ops->export_state || !impl->ops->import_state ||
	    !impl->ops->can_import)
		return -EINVAL;
	while (left && !try_cmpxchg(&fail_register, &left, left - 1))
		;
	if (left) {
		pr_info("%s: registration failed by the fail_register test knob\n", impl->name);
		return -ENOMEM;
	}
	INIT_LIST_HEAD(&impl->retired);
	mutex_lock(&lsw_lock);
	if (find_impl(impl->name)) {
		ret = -EEXIST;
	} else if (!find_class(impl->class_name)) {
		pr_err("%s: class %s is not registered (load its class module first)\n",
		       impl->name, impl->class_name);
		ret = -ENXIO;
	} else {
		list_add_tail(&impl->node, &lsw_impls);
	}
	mutex_unlock(&lsw_lock);
	if (!ret)
		pr_info("%s: %s version %u (state version %u) registered\n",
			impl->class_name, impl->name, impl->version, impl->state_version);
	return ret;
}
EXPORT_SYMBOL_GPL(lsw_impl_register);

/*
 * No instance or swap can use @impl here: each holds a reference on the
 * owner module. Old states retired by commits are freed now.
 */
void lsw_impl_unregister(struct lsw_impl *impl)
{
	struct lsw_state_hdr *state, *tmp;
	LIST_HEAD(retired);

	mutex_lock(&lsw_lock);
	list_del(&impl->node);
	list_splice_init(&impl->retired, &retired);
	mutex_unlock(&lsw_lock);
	list_for_each_entry_safe(state, tmp, &retired, retired) {
		list_del(&state->retired);
		impl->ops->destroy(NULL, state);
	}
}
EXPORT_SYMBOL_GPL(lsw_impl_unregister);

static struct lsw_impl *newest_impl(struct lsw_class *cls)
{
	struct lsw_impl *impl, *best = NULL;

	list_for_each_entry(impl, &lsw_impls, node)
		if (!strcmp(impl->class_name, cls->name) &&
		    (!best || impl->version > best->version))
			best = impl;
	return best;
}

static void instance_free(struct kref *ref)
{
	struct lsw_instance *inst = container_of(ref, struct lsw_instance, ref);

	kfree(inst);
}

static void instance_put(struct lsw_instance *inst)
{
	kref_put(&inst->ref, instance_free);
}

static void deadline_fn(struct work_struct *work);

struct lsw_instance *lsw_instance_create(struct lsw_class *cls, const char *name,
					 const char *impl_name, const char *arg,
					 void *class_data)
{
	struct lsw_state_hdr *state;
	struct lsw_instance *inst;
	struct lsw_impl *impl;
	int ret;

	inst = kzalloc(sizeof(*inst), GFP_KERNEL);
	if (!inst)
		return ERR_PTR(-ENOMEM);
	init_waitqueue_head(&inst->gate_wq);
	init_waitqueue_head(&inst->drain_wq);
	kref_init(&inst->ref);
	mutex_init(&inst->swap_lock);
	INIT_DELAYED_WORK(&inst->deadline_work, deadline_fn);
	strscpy(inst->name, name, sizeof(inst->name));
	inst->cls = cls;
	inst->class_data = class_data;

	mutex_lock(&lsw_lock);
	impl = impl_name ? find_impl(impl_name) : newest_impl(cls);
	if (!impl || strcmp(impl->class_name, cls->name) || !try_module_get(impl->owner)) {
		mutex_unlock(&lsw_lock);
		instance_put(inst);
		return ERR_PTR(-ENOENT);
	}
	ret = ida_alloc(&lsw_ids, GFP_KERNEL);
	mutex_unlock(&lsw_lock);
	if (ret < 0)
		goto put;
	inst->id = ret;
	inst->impl = impl;

	/* Not under lsw_lock: create() opens files, which may wait on I/O. */
	state = impl->ops->create(inst, arg);
	if (IS_ERR(state)) {
		ret = PTR_ERR(state);
		ida_free(&lsw_ids, inst->id);
		goto put;
	}
	inst->state = state;
	mutex_lock(&lsw_lock);
	list_add_tail(&inst->node, &lsw_instances);
	mutex_unlock(&lsw_lock);
	return inst;

put:
	module_put(impl->owner);
	instance_put(inst);
	return ERR_PTR(ret);
}
EXPORT_SYMBOL_GPL(lsw_instance_create);

static void swap_abort(struct lsw_swap *swap, const char *why);

void lsw_instance_retire(struct lsw_instance *inst)
{
	mutex_lock(&inst->swap_lock);
	inst->retiring = true;
	if (inst->swap)
		swap_abort(inst->swap, "the instance is being removed");
	mutex_unlock(&inst->swap_lock);
	/* No swap can begin any more, so nothing re-arms it. */
	cancel_delayed_work_sync(&inst->deadline_work);
}
EXPORT_SYMBOL_GPL(lsw_instance_retire);

/* The caller has stopped all calls into @inst. */
void lsw_instance_destroy(struct lsw_instance *inst)
{
	lsw_instance_retire(inst);
	mutex_lock(&lsw_lock);
	list_del(&inst->node);
	ida_free(&lsw_ids, inst->id);
	mutex_unlock(&lsw_lock);
	inst->impl->ops->destroy(inst, inst->state);
	module_put(inst->impl->owner);
	instance_put(inst);
}
EXPORT_SYMBOL_GPL(lsw_instance_destroy);

static void enter_as(struct lsw_instance *inst, struct lsw_call *call)
{
	call->inst = inst;
	call->impl = inst->impl;
	call->state = inst->state;
}

/*
 * Counted in before the gate is read, with a full barrier between: either
 * the drain's read of active (after the barrier in cmd_begin()) sees this
 * call, or this call sees the gate closed, as with the state tripwire.
 */
static bool enter_gate(struct lsw_instance *inst)
{
	atomic_inc(&inst->active);
	/* Pairs with the smp_mb() after closing the gate in cmd_begin(). */
	smp_mb__after_atomic();
	/* Pairs with the release in gate_open(): see the new impl/state. */
	return !smp_load_acquire(&inst->gate_closed);
}

/*
 * Counted out after the call's last access (a fully ordered atomic). The
 * last call out wakes a drain waiting for none inside.
 */
static void leave_gate(struct lsw_instance *inst)
{
	/* The decrement is the full barrier that waitqueue_active() needs. */
	if (atomic_dec_and_test(&inst->active) && waitqueue_active(&inst->drain_wq))
		wake_up_all(&inst->drain_wq);
}

void lsw_enter(struct lsw_instance *inst, struct lsw_call *call)
{
	while (!enter_gate(inst)) {
		leave_gate(inst);
		atomic64_inc(&inst->held_at_gate);
		/* Bounded: the swap's deadline reopens the gate. */
		wait_event(inst->gate_wq, !smp_load_acquire(&inst->gate_closed));
	}
	enter_as(inst, call);
}
EXPORT_SYMBOL_GPL(lsw_enter);

bool lsw_try_enter(struct lsw_instance *inst, struct lsw_call *call)
{
	if (!enter_gate(inst)) {
		leave_gate(inst);
		return false;
	}
	enter_as(inst, call);
	return true;
}
EXPORT_SYMBOL_GPL(lsw_try_enter);

void lsw_exit(struct lsw_call *call)
{
	leave_gate(call->inst);
}
EXPORT_SYMBOL_GPL(lsw_exit);

static void gate_open(struct lsw_instance *inst)
{
	/* Publishes impl and state to callers that see the gate open. */
	smp_store_release(&inst->gate_closed, false);
	wake_up_all(&inst->gate_wq);
}

static s64 blackout_us(struct lsw_swap *swap)
{
	return ktime_us_delta(ktime_get(), swap->gate_closed_at);
}

static s64 held_calls(struct lsw_swap *swap)
{
	return atomic64_read(&swap->inst->held_at_gate) - swap->held_before;
}

/* Caller holds inst->swap_lock, and a reference on inst besides the swap's. */
static void swap_free(struct lsw_swap *swap, bool put_to)
{
	struct lsw_instance *inst = swap->inst;

	inst->swap = NULL;
	WRITE_ONCE(inst->swap_gen, inst->swap_gen + 1);
	/* A drain of this swap stops waiting. */
	wake_up_all(&inst->drain_wq);
	spin_lock(&swap->owner->swaps_lock);
	list_del(&swap->node);
	spin_unlock(&swap->owner->swaps_lock);
	if (put_to)
		module_put(swap->to->owner);
	kfree(swap);
	instance_put(inst);
}

/* Caller holds inst->swap_lock. Back to the old implementation, state untouched. */
static void swap_abort(struct lsw_swap *swap, const char *why)
{
	struct lsw_instance *inst = swap->inst;
	unsigned int noio = memalloc_noio_save();

	if (swap->phase >= LSW_TRANSFERRED) {
		swap->to->ops->destroy(inst, swap->new_state);
		WRITE_ONCE(inst->state->exported, false);
		/* The next swap of this state may trip the wire again. */
		WRITE_ONCE(inst->state->warned, false);
	}
	if (swap->phase >= LSW_QUIESCED && swap->from->ops->resume)
		swap->from->ops->resume(inst, inst->state);
	memalloc_noio_restore(noio);
	gate_open(inst);
	inst->last_abort_owner = swap->owner->id;
	strscpy(inst->last_abort, why, sizeof(inst->last_abort));
	pr_info("%s: swap %s -> %s aborted in phase %s (%s), blackout %lld us\n",
		inst->name, swap->from->name, swap->to->name,
		phase_names[swap->phase], why, blackout_us(swap));
	swap_free(swap, true);
}

static void deadline_fn(struct work_struct *work)
{
	struct lsw_instance *inst = container_of(to_delayed_work(work),
						 struct lsw_instance, deadline_work);

	/*
	 * The instance is alive: lsw_instance_retire() cancels this work
	 * before the instance can go.
	 */
	mutex_lock(&inst->swap_lock);
	if (inst->swap && time_after_eq(jiffies, inst->swap->deadline))
		swap_abort(inst->swap, "its deadline passed (the controller stopped or hung)");
	mutex_unlock(&inst->swap_lock);
}

static __printf(2, 3) void reply(struct lsw_handle *h, const char *fmt, ...)
{
	va_list args, again;
	size_t room, cap;
	char *bigger;
	int len;

	if (h->reply_failed)
		return;
	va_start(args, fmt);
	va_copy(again, args);
	room = h->reply_cap - h->reply_len;
	len = vsnprintf(h->reply + h->reply_len, room, fmt, args);
	if (len >= room) {
		/* Grow: a listing is complete at any size. */
		cap = max(2 * h->reply_cap, h->reply_len + len + 1);
		bigger = kvmalloc(cap, GFP_KERNEL);
		if (!bigger) {
			h->reply_failed = true;
			goto out;
		}
		memcpy(bigger, h->reply, h->reply_len);
		kvfree(h->reply);
		h->reply = bigger;
		h->reply_cap = cap;
		vsnprintf(h->reply + h->reply_len, cap - h->reply_len, fmt, again);
	}
	h->reply_len += len;
out:
	va_end(again);
	va_end(args);
}

static int cmd_list(struct lsw_handle *h)
{
	struct lsw_instance *inst;
	struct lsw_class *cls;
	struct lsw_impl *impl;

	if (mutex_lock_killable(&lsw_lock))
		return -EINTR;
	list_for_each_entry(cls, &lsw_classes, node)
		reply(h, "class %s\n", cls->name);
	list_for_each_entry(impl, &lsw_impls, node)
		reply(h, "impl %s class=%s version=%u state_version=%u module=%s\n",
		      impl->name, impl->class_name, impl->version,
		      impl->state_version, module_name(impl->owner));
	list_for_each_entry(inst, &lsw_instances, node) {
		/* Bounded: holders of swap_lock never wait for calls. */
		mutex_lock(&inst->swap_lock);
		reply(h, "instance %u name=%s class=%s impl=%s gate=%s held=%lld",
		      inst->id, inst->name, inst->cls->name, inst->impl->name,
		      inst->gate_closed ? "closed" : "open",
		      atomic64_read(&inst->held_at_gate));
		if (inst->swap)
			reply(h, " swap=%s:%s\n", phase_names[inst->swap->phase],
			      inst->swap->to->name);
		else
			reply(h, " swap=none\n");
		mutex_unlock(&inst->swap_lock);
	}
	mutex_unlock(&lsw_lock);
	reply(h, "end\n");
	return 0;
}

static struct lsw_instance *get_instance(struct lsw_handle *h, const char *word)
{
	struct lsw_instance *inst, *found = NULL;
	u32 id;

	if (kstrtou32(word, 10, &id)) {
		reply(h, "bad instance id %s: a decimal number (loopswap status lists them)\n", word);
		return ERR_PTR(-EINVAL);
	}
	if (mutex_lock_killable(&lsw_lock))
		return ERR_PTR(-EINTR);
	list_for_each_entry(inst, &lsw_instances, node) {
		if (inst->id == id) {
			kref_get(&inst->ref);
			found = inst;
			break;
		}
	}
	mutex_unlock(&lsw_lock);
	if (!found) {
		reply(h, "no instance %u\n", id);
		return ERR_PTR(-ENOENT);
	}
	return found;
}

static int parse_timeout(struct lsw_handle *h, const char *word, unsigned int *ms)
{
	if (kstrtouint(word, 10, ms) || !*ms || *ms > LSW_TIMEOUT_MAX_MS) {
		reply(h, "bad timeout %s: milliseconds, 1 to %u\n", word, LSW_TIMEOUT_MAX_MS);
		return -EINVAL;
	}
	return 0;
}

/*
 * The swap @h began on @inst, or NULL with the reason in the reply. Caller
 * holds inst->swap_lock.
 */
static struct lsw_swap *owned_swap(struct lsw_handle *h, struct lsw_instance *inst,
				   const char *verb, int *err)
{
	struct lsw_swap *swap = inst->swap;

	if (swap && swap->owner == h)
		return swap;
	if (!swap && inst->last_abort_owner == h->id) {
		reply(h, "%s: the core aborted this swap: %s\n", verb, inst->last_abort);
		*err = -ECANCELED;
	} else {
		reply(h, "%s: instance %u has no swap begun on this handle\n", verb, inst->id);
		*err = -ENOENT;
	}
	return NULL;
}

static int cmd_begin(struct lsw_handle *h, struct lsw_instance *inst, const char *from_name,
		     const char *to_name, unsigned int timeout_ms)
{
	struct lsw_swap *swap;
	struct lsw_impl *to;
	int ret;

	swap = kzalloc(sizeof(*swap), GFP_KERNEL);
	if (!swap)
		return -ENOMEM;
	if (mutex_lock_killable(&lsw_lock)) {
		kfree(swap);
		return -EINTR;
	}
	to = find_impl(to_name);
	if (to && !try_module_get(to->owner))
		to = NULL;
	mutex_unlock(&lsw_lock);
	if (!to) {
		kfree(swap);
		reply(h, "no implementation named %s is registered\n", to_name);
		return -ENOENT;
	}
	if (mutex_lock_killable(&inst->swap_lock)) {
		ret = -EINTR;
		goto put;
	}
	ret = -ENODEV;
	if (inst->retiring) {
		reply(h, "instance %u is being removed\n", inst->id);
		goto unlock;
	}
	ret = -EBUSY;
	if (inst->swap) {
		reply(h, "instance %u is already being swapped (%s -> %s) by another controller\n",
		      inst->id, inst->swap->from->name, inst->swap->to->name);
		goto unlock;
	}
	ret = -ESTALE;
	if (strcmp(inst->impl->name, from_name)) {
		reply(h, "instance %u runs %s, not %s\n", inst->id, inst->impl->name, from_name);
		goto unlock;
	}
	ret = -ENOENT;
	if (strcmp(to->class_name, inst->cls->name)) {
		reply(h, "%s is a %s implementation, instance %u is a %s\n",
		      to->name, to->class_name, inst->id, inst->cls->name);
		goto unlock;
	}
	ret = -EALREADY;
	if (to == inst->impl) {
		reply(h, "instance %u already runs %s\n", inst->id, to->name);
		goto unlock;
	}
	ret = -EPROTO;
	if (!to->ops->can_import(inst->impl->state_version)) {
		reply(h, "%s has no transformer from %s's state version %u\n",
		      to->name, inst->impl->name, inst->impl->state_version);
		goto unlock;
	}
	kref_get(&inst->ref);
	swap->owner = h;
	swap->inst = inst;
	swap->from = inst->impl;
	swap->to = to;
	swap->phase = LSW_GATED;
	swap->held_before = atomic64_read(&inst->held_at_gate);
	swap->deadline = jiffies + msecs_to_jiffies(timeout_ms);
	spin_lock(&h->swaps_lock);
	list_add_tail(&swap->node, &h->swaps);
	spin_unlock(&h->swaps_lock);
	inst->swap = swap;
	WRITE_ONCE(inst->swap_gen, inst->swap_gen + 1);
	swap->gen = inst->swap_gen;
	swap->gate_closed_at = ktime_get();
	WRITE_ONCE(inst->gate_closed, true);
	/* Order the gate before whatever the controller reads next. */
	smp_mb();
	mod_delayed_work(lsw_deadline_wq, &inst->deadline_work, msecs_to_jiffies(timeout_ms));
	/* Calls the drain will wait for (and any bouncing off the gate now). */
	reply(h, "ok gated %s -> %s deadline_ms=%u inflight=%d\n",
	      swap->from->name, to->name, timeout_ms, atomic_read(&inst->active));
	mutex_unlock(&inst->swap_lock);
	return 0;

unlock:
	mutex_unlock(&inst->swap_lock);
put:
	module_put(to->owner);
	kfree(swap);
	return ret;
}

/*
 * Calls that passed the gate before it closed are counted in active: wait
 * until they have left, interruptibly, bounded, and no longer than the
 * swap lives (an abort meanwhile wakes this wait).
 */
static int cmd_drain(struct lsw_handle *h, struct lsw_instance *inst, unsigned int timeout_ms)
{
	unsigned long until;
	struct lsw_swap *swap;
	long left, waited;
	u64 gen;
	ktime_t started;
	int ret = 0;

	if (mutex_lock_killable(&inst->swap_lock))
		return -EINTR;
	swap = owned_swap(h, inst, "drain", &ret);
	if (!swap)
		goto unlock;
	if (swap->phase != LSW_GATED) {
		reply(h, "drain: swap is %s, not gated\n", phase_names[swap->phase]);
		ret = -EINVAL;
		goto unlock;
	}
	until = jiffies + msecs_to_jiffies(timeout_ms);
	if (time_before(swap->deadline, until))
		until = swap->deadline;
	gen = swap->gen;
	started = ktime_get();
	mutex_unlock(&inst->swap_lock);

	left = max_t(long, (long)(until - jiffies), 0);
	waited = wait_event_interruptible_timeout(inst->drain_wq,
						  !atomic_read(&inst->active) ||
						  READ_ONCE(inst->swap_gen) != gen,
						  left);
	if (waited < 0)
		ret = -EINTR;
	else if (!waited)
		ret = -ETIMEDOUT;
	/*
	 * Pairs with leave_gate()'s fully ordered decrement: what the calls
	 * did happens before what the controller does next.
	 */
	smp_mb();

	if (mutex_lock_killable(&inst->swap_lock))
		return -EINTR;
	if (inst->swap_gen != gen) {
		/* Aborted meanwhile (deadline, forced abort, removal). */
		ret = -ECANCELED;
		owned_swap(h, inst, "drain", &ret);
		goto unlock;
	}
	if (ret == -ETIMEDOUT)
		reply(h, "drain: %d calls that passed the gate are still inside %s after %lld ms\n",
		      atomic_read(&inst->active), swap->from->name,
		      ktime_ms_delta(ktime_get(), started));
	else if (ret == -EINTR)
		reply(h, "drain: interrupted by a signal\n");
	else {
		swap->phase = LSW_DRAINED;
		reply(h, "ok drained in %lld us\n", ktime_us_delta(ktime_get(), started));
	}
unlock:
	mutex_unlock(&inst->swap_lock);
	return ret;
}

static int cmd_quiesce(struct lsw_handle *h, struct lsw_swap *swap)
{
	if (swap->phase != LSW_DRAINED) {
		reply(h, "quiesce: swap is %s, not drained\n", phase_names[swap->phase]);
		return -EINVAL;
	}
	if (swap->from->ops->quiesce)
		swap->from->ops->quiesce(swap->inst, swap->inst->state);
	swap->phase = LSW_QUIESCED;
	reply(h, "ok quiesced\n");
	return 0;
}

static int cmd_transfer(struct lsw_handle *h, struct lsw_swap *swap)
{
	struct lsw_instance *inst = swap->inst;
	struct lsw_state_hdr *old = inst->state;
	struct lsw_state blob = {};
	struct lsw_state_hdr *new_state;
	int inside, ret;

	if (swap->phase != LSW_QUIESCED) {
		reply(h, "transfer: swap is %s, not quiesced\n", phase_names[swap->phase]);
		return -EINVAL;
	}
	/*
	 * The tripwire, armed before the export: a thread that enters the old
	 * state from now on WARNs; one still inside refuses the export. The
	 * full barrier pairs with the one in lsw_state_enter().
	 */
	WRITE_ONCE(old->exported, true);
	/* Pairs with smp_mb__after_atomic() in lsw_state_enter(). */
	smp_mb();
	/* Acquire: the export reads what the last thread to leave wrote. */
	inside = atomic_read_acquire(&old->inside);
	if (inside) {
		WRITE_ONCE(old->exported, false);
		reply(h, "transfer: %d thread(s) still inside %s for this instance: not quiescent\n",
		      inside, swap->from->name);
		return -EBUSY;
	}
	ret = swap->from->ops->export_state(inst, old, &blob);
	if (ret) {
		WRITE_ONCE(old->exported, false);
		reply(h, "transfer: %s could not export its state: %d\n", swap->from->name, ret);
		return ret;
	}
	new_state = swap->to->ops->import_state(inst, &blob);
	kvfree(blob.data);
	if (IS_ERR(new_state)) {
		WRITE_ONCE(old->exported, false);
		reply(h, "transfer: %s could not import state version %u: %ld\n",
		      swap->to->name, blob.version, PTR_ERR(new_state));
		return PTR_ERR(new_state);
	}
	swap->new_state = new_state;
	swap->phase = LSW_TRANSFERRED;
	reply(h, "ok transferred state version %u (%zu bytes)\n", blob.version, blob.size);
	return 0;
}

/* Returns the old state for the caller to retire once swap_lock is dropped. */
static struct lsw_state_hdr *cmd_commit(struct lsw_handle *h, struct lsw_swap *swap, int *err)
{
	struct lsw_instance *inst = swap->inst;
	struct lsw_state_hdr *old = inst->state;
	struct lsw_impl *from = swap->from;

	if (swap->phase != LSW_TRANSFERRED) {
		reply(h, "commit: swap is %s, not transferred\n", phase_names[swap->phase]);
		*err = -EINVAL;
		return NULL;
	}
	inst->impl = swap->to;
	inst->state = swap->new_state;
	if (swap->to->ops->resume)
		swap->to->ops->resume(inst, inst->state);
	if (inst->cls->switched)
		inst->cls->switched(inst);
	gate_open(inst);
	reply(h, "ok committed blackout_us=%lld held=%lld\n", blackout_us(swap), held_calls(swap));
	pr_info("%s: %s -> %s, blackout %lld us, %lld calls held\n", inst->name,
		from->name, swap->to->name, blackout_us(swap), held_calls(swap));
	/* The instance now holds the reference on the new module. */
	swap_free(swap, false);
	if (from->ops->release)
		from->ops->release(inst, old);
	return old;
}

/* Keep a committed swap's old state until its implementation unregisters. */
static void retire_state(struct lsw_impl *from, struct lsw_state_hdr *old)
{
	mutex_lock(&lsw_lock);
	list_add_tail(&old->retired, &from->retired);
	mutex_unlock(&lsw_lock);
	module_put(from->owner);
}

static int cmd_abort(struct lsw_handle *h, struct lsw_instance *inst)
{
	struct lsw_swap *swap;
	int ret = 0;

	if (mutex_lock_killable(&inst->swap_lock))
		return -EINTR;
	swap = inst->swap;
	if (!swap) {
		if (inst->last_abort_owner == h->id) {
			reply(h, "abort: the core already aborted this swap: %s\n", inst->last_abort);
			ret = -ECANCELED;
		} else {
			reply(h, "abort: no swap in progress on instance %u\n", inst->id);
			ret = -ENOENT;
		}
	} else {
		reply(h, "ok aborted%s in phase %s, blackout_us=%lld held=%lld\n",
		      swap->owner == h ? "" : " (forced: another controller's swap)",
		      phase_names[swap->phase], blackout_us(swap), held_calls(swap));
		swap_abort(swap, swap->owner == h ? "aborted by its controller" :
			   "force-aborted from another handle");
	}
	mutex_unlock(&inst->swap_lock);
	return ret;
}

/* quiesce, transfer, commit: one step of a swap this handle owns. */
static int cmd_step(struct lsw_handle *h, struct lsw_instance *inst, const char *verb)
{
	struct lsw_state_hdr *retired = NULL;
	struct lsw_impl *from = NULL;
	struct lsw_swap *swap;
	int ret = 0;

	if (mutex_lock_killable(&inst->swap_lock))
		return -EINTR;
	swap = owned_swap(h, inst, verb, &ret);
	if (swap) {
		if (!strcmp(verb, "quiesce")) {
			ret = cmd_quiesce(h, swap);
		} else if (!strcmp(verb, "transfer")) {
			ret = cmd_transfer(h, swap);
		} else {
			from = swap->from;
			retired = cmd_commit(h, swap, &ret);
		}
	}
	mutex_unlock(&inst->swap_lock);
	if (retired)
		retire_state(from, retired);
	return ret;
}

/* Stores at most LSW_MAX_WORDS words; returns how many there are. */
static int split_words(char *line, char **words)
{
	int n = 0;
	char *word;

	while ((word = strsep(&line, " \t")) != NULL) {
		if (!*word)
			continue;
		if (n < LSW_MAX_WORDS)
			words[n] = word;
		n++;
	}
	return n;
}

struct lsw_verb {
	const char *name;
	int words;		/* including the verb */
	const char *usage;
};

static const struct lsw_verb verbs[] = {
	{ "list", 1, "list" },
	{ "begin", 5, "begin ID FROM TO TIMEOUT_MS" },
	{ "drain", 3, "drain ID TIMEOUT_MS" },
	{ "quiesce", 2, "quiesce ID" },
	{ "transfer", 2, "transfer ID" },
	{ "commit", 2, "commit ID" },
	{ "abort", 2, "abort ID" },
};

static int run_command(struct lsw_handle *h, char *line)
{
	const struct lsw_verb *verb = NULL;
	char *words[LSW_MAX_WORDS];
	struct lsw_instance *inst;
	unsigned int timeout_ms;
	int i, n, ret;

	n = split_words(line, words);
	if (n > 0) {
		for (i = 0; i < ARRAY_SIZE(verbs); i++)
			if (!strcmp(words[0], verbs[i].name))
				verb = &verbs[i];
	}
	if (!verb) {
		reply(h, "unknown command %s: list, begin, drain, quiesce, transfer, commit or abort\n",
		      n > 0 ? words[0] : "(empty)");
		return -EINVAL;
	}
	if (n != verb->words) {
		reply(h, "usage: %s\n", verb->usage);
		return -EINVAL;
	}
	if (verb == &verbs[0])
		return cmd_list(h);
	if (n > 2 && parse_timeout(h, words[n - 1], &timeout_ms))
		return -EINVAL;
	inst = get_instance(h, words[1]);
	if (IS_ERR(inst))
		return PTR_ERR(inst);
	if (!strcmp(verb->name, "begin"))
		ret = cmd_begin(h, inst, words[2], words[3], timeout_ms);
	else if (!strcmp(verb->name, "drain"))
		ret = cmd_drain(h, inst, timeout_ms);
	else if (!strcmp(verb->name, "abort"))
		ret = cmd_abort(h, inst);
	else
		ret = cmd_step(h, inst, verb->name);
	instance_put(inst);
	return ret;
}

static int lsw_open(struct inode *inode, struct file *file)
{
	struct lsw_handle *h;

	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	h = kzalloc(sizeof(*h), GFP_KERNEL);
	if (!h)
		return -ENOMEM;
	h->reply_cap = PAGE_SIZE;
	h->reply = kvzalloc(h->reply_cap, GFP_KERNEL);
	if (!h->reply) {
		kfree(h);
		return -ENOMEM;
	}
	h->id = atomic64_inc_return(&lsw_handle_ids);
	mutex_init(&h->lock);
	spin_lock_init(&h->swaps_lock);
	INIT_LIST_HEAD(&h->swaps);
	file->private_data = h;
	return nonseekable_open(inode, file);
}

static int lsw_release(struct inode *inode, struct file *file)
{
	struct lsw_handle *h = file->private_data;
	struct lsw_instance *inst;
	struct lsw_swap *swap;

	for (;;) {
		spin_lock(&h->swaps_lock);
		swap = list_first_entry_or_null(&h->swaps, struct lsw_swap, node);
		inst = swap ? swap->inst : NULL;
		if (inst)
			kref_get(&inst->ref);
		spin_unlock(&h->swaps_lock);
		if (!inst)
			break;
		mutex_lock(&inst->swap_lock);
		if (inst->swap && inst->swap->owner == h)
			swap_abort(inst->swap, "the controller closed /dev/lsw (it exited or was killed)");
		mutex_unlock(&inst->swap_lock);
		instance_put(inst);
	}
	kvfree(h->reply);
	kfree(h);
	return 0;
}

static ssize_t lsw_write(struct file *file, const char __user *ubuf, size_t len, loff_t *ppos)
{
	struct lsw_handle *h = file->private_data;
	char line[LSW_CMD_MAX];
	unsigned int noio;
	int ret;

	if (!len || len >= sizeof(line))
		return -EINVAL;
	if (copy_from_user(line, ubuf, len))
		return -EFAULT;
	line[len] = '\0';

	if (mutex_lock_killable(&h->lock))
		return -EINTR;
	h->reply_len = 0;
	h->reply_pos = 0;
	h->reply_failed = false;
	h->reply[0] = '\0';
	/* Nothing a command allocates may write back through a gated device. */
	noio = memalloc_noio_save();
	ret = run_command(h, strim(line));
	memalloc_noio_restore(noio);
	if (!ret && h->reply_failed)
		ret = -ENOMEM;
	mutex_unlock(&h->lock);
	return ret ? ret : len;
}

/* The reply to the last command, in as many reads as it takes; then 0. */
static ssize_t lsw_read(struct file *file, char __user *ubuf, size_t len, loff_t *ppos)
{
	struct lsw_handle *h = file->private_data;
	size_t n;
	ssize_t ret;

	if (mutex_lock_killable(&h->lock))
		return -EINTR;
	n = min(len, h->reply_len - h->reply_pos);
	if (copy_to_user(ubuf, h->reply + h->reply_pos, n)) {
		ret = -EFAULT;
	} else {
		h->reply_pos += n;
		ret = n;
	}
	mutex_unlock(&h->lock);
	return ret;
}

static const struct file_operations lsw_fops = {
	.owner = THIS_MODULE,
	.open = lsw_open,
	.release = lsw_release,
	.read = lsw_read,
	.write = lsw_write,
};

static struct miscdevice lsw_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "lsw",
	.fops = &lsw_fops,
	.mode = 0600,
};

static int __init lsw_core_init(void)
{
	int ret;

	/*
	 * Unbound: the deadline must fire even while the controller that set
	 * it holds its CPU (it runs SCHED_FIFO while a gate is closed).
	 */
	lsw_deadline_wq = alloc_workqueue("lsw_deadline",
					  WQ_MEM_RECLAIM | WQ_UNBOUND | WQ_HIGHPRI, 0);
	if (!lsw_deadline_wq)
		return -ENOMEM;
	ret = misc_register(&lsw_misc);
	if (ret)
		destroy_workqueue(lsw_deadline_wq);
	return ret;
}

static void __exit lsw_core_exit(void)
{
	misc_deregister(&lsw_misc);
	destroy_workqueue(lsw_deadline_wq);
}

module_init(lsw_core_init);
module_exit(lsw_core_exit);
MODULE_DESCRIPTION("Per-instance hot swap of kernel object implementations");
MODULE_LICENSE("GPL");
