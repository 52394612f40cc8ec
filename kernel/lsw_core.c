// SPDX-License-Identifier: GPL-2.0
/*
 * lsw_core - per-instance hot swap of kernel object implementations
 *
 * See lsw_core.h for the model. The controller drives a swap through
 * /dev/lsw (root only), one text command per write(), the reply read back
 * with read():
 *
 *   list                 classes, implementations, instances
 *   begin ID IMPL        close instance ID's gate for a swap to IMPL
 *   quiesce ID           stop the outgoing implementation's async work
 *   transfer ID          export the old state, import it into IMPL
 *   commit ID            switch to IMPL, resume it, open the gate
 *   abort ID             undo whatever was done, reopen on the old one
 *
 * A swap belongs to the file handle that began it: closing the handle (the
 * controller exits or is killed) aborts it, and the old implementation
 * resumes serving with its state untouched.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/ktime.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "lsw_core.h"

#define LSW_REPLY_MAX 8192

enum lsw_phase { LSW_GATED, LSW_QUIESCED, LSW_TRANSFERRED };

static const char * const phase_names[] = {
	[LSW_GATED] = "gated",
	[LSW_QUIESCED] = "quiesced",
	[LSW_TRANSFERRED] = "transferred",
};

struct lsw_handle;

struct lsw_swap {
	struct list_head node;		/* in the owning handle's list */
	struct lsw_handle *owner;
	struct lsw_instance *inst;
	struct lsw_impl *from;
	struct lsw_impl *to;
	enum lsw_phase phase;
	struct lsw_state_hdr *new_state;
	ktime_t gate_closed_at;
	s64 held_before;
};

struct lsw_handle {
	struct list_head swaps;
	char *reply;
	size_t reply_len;
	bool reply_pending;
};

/* Protects the lists and every swap's state. */
static DEFINE_MUTEX(lsw_lock);
static LIST_HEAD(lsw_classes);
static LIST_HEAD(lsw_impls);
static LIST_HEAD(lsw_instances);
static DEFINE_IDA(lsw_ids);

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

static struct lsw_instance *find_instance(u32 id)
{
	struct lsw_instance *inst;

	list_for_each_entry(inst, &lsw_instances, node)
		if (inst->id == id)
			return inst;
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

int lsw_impl_register(struct lsw_impl *impl)
{
	int ret = 0;

	if (!impl->ops || !impl->ops->create || !impl->ops->destroy ||
	    !impl->ops->export_state || !impl->ops->import_state ||
	    !impl->ops->can_import)
		return -EINVAL;
	mutex_lock(&lsw_lock);
	if (find_impl(impl->name))
		ret = -EEXIST;
	else if (!find_class(impl->class_name))
		ret = -ENOENT;
	else
		list_add_tail(&impl->node, &lsw_impls);
	mutex_unlock(&lsw_lock);
	if (!ret)
		pr_info("%s: %s version %u (state version %u) registered\n",
			impl->class_name, impl->name, impl->version, impl->state_version);
	return ret;
}
EXPORT_SYMBOL_GPL(lsw_impl_register);

/*
 * No instance can use @impl here: each holds a reference on the owner
 * module, and so does each swap towards it.
 */
void lsw_impl_unregister(struct lsw_impl *impl)
{
	mutex_lock(&lsw_lock);
	list_del(&impl->node);
	mutex_unlock(&lsw_lock);
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

struct lsw_instance *lsw_instance_create(struct lsw_class *cls, const char *name,
					 const char *impl_name, const char *arg,
					 void *class_data)
{
	struct lsw_instance *inst;
	struct lsw_impl *impl;
	int ret;

	inst = kzalloc(sizeof(*inst), GFP_KERNEL);
	if (!inst)
		return ERR_PTR(-ENOMEM);
	ret = init_srcu_struct(&inst->srcu);
	if (ret)
		goto free;
	init_waitqueue_head(&inst->gate_wq);
	strscpy(inst->name, name, sizeof(inst->name));
	inst->cls = cls;
	inst->class_data = class_data;

	mutex_lock(&lsw_lock);
	impl = impl_name ? find_impl(impl_name) : newest_impl(cls);
	if (!impl || strcmp(impl->class_name, cls->name)) {
		ret = -ENOENT;
		goto unlock;
	}
	if (!try_module_get(impl->owner)) {
		ret = -ENOENT;
		goto unlock;
	}
	ret = ida_alloc(&lsw_ids, GFP_KERNEL);
	if (ret < 0)
		goto put;
	inst->id = ret;
	inst->impl = impl;
	inst->state = impl->ops->create(inst, arg);
	if (IS_ERR(inst->state)) {
		ret = PTR_ERR(inst->state);
		ida_free(&lsw_ids, inst->id);
		goto put;
	}
	list_add_tail(&inst->node, &lsw_instances);
	mutex_unlock(&lsw_lock);
	return inst;

put:
	module_put(impl->owner);
unlock:
	mutex_unlock(&lsw_lock);
	cleanup_srcu_struct(&inst->srcu);
free:
	kfree(inst);
	return ERR_PTR(ret);
}
EXPORT_SYMBOL_GPL(lsw_instance_create);

static void swap_abort(struct lsw_swap *swap);

/* The caller has stopped all calls into @inst. */
void lsw_instance_destroy(struct lsw_instance *inst)
{
	mutex_lock(&lsw_lock);
	if (inst->swap)
		swap_abort(inst->swap);
	list_del(&inst->node);
	inst->impl->ops->destroy(inst, inst->state);
	module_put(inst->impl->owner);
	ida_free(&lsw_ids, inst->id);
	mutex_unlock(&lsw_lock);
	cleanup_srcu_struct(&inst->srcu);
	kfree(inst);
}
EXPORT_SYMBOL_GPL(lsw_instance_destroy);

void lsw_enter(struct lsw_instance *inst, struct lsw_call *call)
{
	for (;;) {
		call->srcu_idx = srcu_read_lock(&inst->srcu);
		/* Pairs with the release in gate_open(): see the new impl/state. */
		if (!smp_load_acquire(&inst->gate_closed))
			break;
		srcu_read_unlock(&inst->srcu, call->srcu_idx);
		atomic64_inc(&inst->held_at_gate);
		wait_event(inst->gate_wq, !smp_load_acquire(&inst->gate_closed));
	}
	call->inst = inst;
	call->impl = inst->impl;
	call->state = inst->state;
}
EXPORT_SYMBOL_GPL(lsw_enter);

void lsw_exit(struct lsw_call *call)
{
	srcu_read_unlock(&call->inst->srcu, call->srcu_idx);
}
EXPORT_SYMBOL_GPL(lsw_exit);

static void gate_open(struct lsw_instance *inst)
{
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

static void swap_free(struct lsw_swap *swap)
{
	swap->inst->swap = NULL;
	list_del(&swap->node);
	kfree(swap);
}

/* Caller holds lsw_lock. Back to the old implementation, state untouched. */
static void swap_abort(struct lsw_swap *swap)
{
	struct lsw_instance *inst = swap->inst;

	if (swap->phase >= LSW_TRANSFERRED) {
		swap->to->ops->destroy(inst, swap->new_state);
		WRITE_ONCE(inst->state->exported, false);
	}
	if (swap->phase >= LSW_QUIESCED && swap->from->ops->resume)
		swap->from->ops->resume(inst, inst->state);
	gate_open(inst);
	module_put(swap->to->owner);
	pr_info("%s: swap %s -> %s aborted in phase %s, blackout %lld us\n",
		inst->name, swap->from->name, swap->to->name,
		phase_names[swap->phase], blackout_us(swap));
	swap_free(swap);
}

static int reply(struct lsw_handle *h, const char *fmt, ...)
{
	va_list args;
	int len;

	va_start(args, fmt);
	len = vsnprintf(h->reply + h->reply_len, LSW_REPLY_MAX - h->reply_len, fmt, args);
	va_end(args);
	h->reply_len = min_t(size_t, h->reply_len + len, LSW_REPLY_MAX - 1);
	return 0;
}

static int cmd_list(struct lsw_handle *h)
{
	struct lsw_class *cls;
	struct lsw_impl *impl;
	struct lsw_instance *inst;

	list_for_each_entry(cls, &lsw_classes, node)
		reply(h, "class %s\n", cls->name);
	list_for_each_entry(impl, &lsw_impls, node)
		reply(h, "impl %s class=%s version=%u state_version=%u module=%s\n",
		      impl->name, impl->class_name, impl->version,
		      impl->state_version, module_name(impl->owner));
	list_for_each_entry(inst, &lsw_instances, node) {
		reply(h, "instance %u name=%s class=%s impl=%s gate=%s held=%lld",
		      inst->id, inst->name, inst->cls->name, inst->impl->name,
		      inst->gate_closed ? "closed" : "open",
		      atomic64_read(&inst->held_at_gate));
		if (inst->swap)
			reply(h, " swap=%s:%s\n", phase_names[inst->swap->phase],
			      inst->swap->to->name);
		else
			reply(h, " swap=none\n");
	}
	return 0;
}

static int cmd_begin(struct lsw_handle *h, struct lsw_instance *inst, const char *to_name)
{
	struct lsw_impl *to = find_impl(to_name);
	struct lsw_impl *from = inst->impl;
	struct lsw_swap *swap;

	if (inst->swap) {
		reply(h, "instance %u is already being swapped\n", inst->id);
		return -EBUSY;
	}
	if (!to || strcmp(to->class_name, inst->cls->name)) {
		reply(h, "no %s implementation named %s is registered\n", inst->cls->name, to_name);
		return -ENOENT;
	}
	if (to == from) {
		reply(h, "instance %u already runs %s\n", inst->id, to->name);
		return -EALREADY;
	}
	if (!to->ops->can_import(from->state_version)) {
		reply(h, "%s has no transformer from %s's state version %u\n",
		      to->name, from->name, from->state_version);
		return -EPROTO;
	}
	swap = kzalloc(sizeof(*swap), GFP_KERNEL);
	if (!swap)
		return -ENOMEM;
	if (!try_module_get(to->owner)) {
		kfree(swap);
		reply(h, "%s is being unloaded\n", to->name);
		return -ENOENT;
	}
	swap->owner = h;
	swap->inst = inst;
	swap->from = from;
	swap->to = to;
	swap->phase = LSW_GATED;
	swap->held_before = atomic64_read(&inst->held_at_gate);
	swap->gate_closed_at = ktime_get();
	list_add_tail(&swap->node, &h->swaps);
	inst->swap = swap;
	WRITE_ONCE(inst->gate_closed, true);
	/* Order the gate before whatever the controller reads next. */
	smp_mb();
	reply(h, "ok gated %s -> %s\n", from->name, to->name);
	return 0;
}

static int cmd_quiesce(struct lsw_handle *h, struct lsw_swap *swap)
{
	if (swap->phase != LSW_GATED) {
		reply(h, "quiesce: swap is %s, not gated\n", phase_names[swap->phase]);
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
	struct lsw_state blob = {};
	struct lsw_state_hdr *new_state;
	int ret;

	if (swap->phase != LSW_QUIESCED) {
		reply(h, "transfer: swap is %s, not quiesced\n", phase_names[swap->phase]);
		return -EINVAL;
	}
	/*
	 * The controller has seen no thread in the old code for this instance.
	 * A caller that passed the gate just before it closed and has not yet
	 * reached the implementation is still inside an SRCU read section:
	 * wait for it (it runs on the old state, which is still live).
	 */
	synchronize_srcu(&inst->srcu);
	ret = swap->from->ops->export_state(inst, inst->state, &blob);
	if (ret) {
		reply(h, "%s could not export its state: %d\n", swap->from->name, ret);
		return ret;
	}
	WRITE_ONCE(inst->state->exported, true);
	new_state = swap->to->ops->import_state(inst, &blob);
	kvfree(blob.data);
	if (IS_ERR(new_state)) {
		WRITE_ONCE(inst->state->exported, false);
		reply(h, "%s could not import state version %u: %ld\n",
		      swap->to->name, blob.version, PTR_ERR(new_state));
		return PTR_ERR(new_state);
	}
	swap->new_state = new_state;
	swap->phase = LSW_TRANSFERRED;
	reply(h, "ok transferred state version %u (%zu bytes)\n", blob.version, blob.size);
	return 0;
}

static int cmd_commit(struct lsw_handle *h, struct lsw_swap *swap)
{
	struct lsw_instance *inst = swap->inst;
	struct lsw_state_hdr *old_state = inst->state;
	struct lsw_impl *from = swap->from;

	if (swap->phase != LSW_TRANSFERRED) {
		reply(h, "commit: swap is %s, not transferred\n", phase_names[swap->phase]);
		return -EINVAL;
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
	swap_free(swap);
	/* The old state was exported and nothing runs on it: free it. */
	from->ops->destroy(inst, old_state);
	module_put(from->owner);
	return 0;
}

static int run_command(struct lsw_handle *h, char *line)
{
	char verb[16], impl[LSW_NAME_LEN];
	struct lsw_instance *inst;
	struct lsw_swap *swap;
	unsigned int id;
	int n;

	if (sysfs_streq(line, "list"))
		return cmd_list(h);
	n = sscanf(line, "%15s %u %31s", verb, &id, impl);
	if (n < 2) {
		reply(h, "unknown command: %s\n", line);
		return -EINVAL;
	}
	inst = find_instance(id);
	if (!inst) {
		reply(h, "no instance %u\n", id);
		return -ENOENT;
	}
	if (!strcmp(verb, "begin")) {
		if (n != 3) {
			reply(h, "begin: usage: begin ID IMPL\n");
			return -EINVAL;
		}
		return cmd_begin(h, inst, impl);
	}
	swap = inst->swap;
	if (!swap || swap->owner != h) {
		reply(h, "%s: instance %u has no swap begun on this handle\n", verb, id);
		return -ENOENT;
	}
	if (!strcmp(verb, "quiesce"))
		return cmd_quiesce(h, swap);
	if (!strcmp(verb, "transfer"))
		return cmd_transfer(h, swap);
	if (!strcmp(verb, "commit"))
		return cmd_commit(h, swap);
	if (!strcmp(verb, "abort")) {
		reply(h, "ok aborted in phase %s, blackout_us=%lld held=%lld\n",
		      phase_names[swap->phase], blackout_us(swap), held_calls(swap));
		swap_abort(swap);
		return 0;
	}
	reply(h, "unknown command: %s\n", verb);
	return -EINVAL;
}

static int lsw_open(struct inode *inode, struct file *file)
{
	struct lsw_handle *h;

	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	h = kzalloc(sizeof(*h), GFP_KERNEL);
	if (!h)
		return -ENOMEM;
	h->reply = kvzalloc(LSW_REPLY_MAX, GFP_KERNEL);
	if (!h->reply) {
		kfree(h);
		return -ENOMEM;
	}
	INIT_LIST_HEAD(&h->swaps);
	file->private_data = h;
	return nonseekable_open(inode, file);
}

static int lsw_release(struct inode *inode, struct file *file)
{
	struct lsw_handle *h = file->private_data;
	struct lsw_swap *swap, *tmp;

	mutex_lock(&lsw_lock);
	list_for_each_entry_safe(swap, tmp, &h->swaps, node) {
		pr_warn("%s: controller went away mid-swap, aborting\n", swap->inst->name);
		swap_abort(swap);
	}
	mutex_unlock(&lsw_lock);
	kvfree(h->reply);
	kfree(h);
	return 0;
}

static ssize_t lsw_write(struct file *file, const char __user *ubuf, size_t len, loff_t *ppos)
{
	struct lsw_handle *h = file->private_data;
	char line[96];
	int ret;

	if (len >= sizeof(line))
		return -EINVAL;
	if (copy_from_user(line, ubuf, len))
		return -EFAULT;
	line[len] = '\0';
	strim(line);

	mutex_lock(&lsw_lock);
	h->reply_len = 0;
	h->reply[0] = '\0';
	ret = run_command(h, line);
	h->reply_pending = true;
	mutex_unlock(&lsw_lock);
	return ret ? ret : len;
}

/* The whole reply to the last command, once. */
static ssize_t lsw_read(struct file *file, char __user *ubuf, size_t len, loff_t *ppos)
{
	struct lsw_handle *h = file->private_data;
	ssize_t ret;

	mutex_lock(&lsw_lock);
	if (!h->reply_pending) {
		ret = 0;
	} else if (len < h->reply_len) {
		ret = -EINVAL;
	} else {
		ret = copy_to_user(ubuf, h->reply, h->reply_len) ? -EFAULT : h->reply_len;
		h->reply_pending = false;
	}
	mutex_unlock(&lsw_lock);
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
	return misc_register(&lsw_misc);
}

static void __exit lsw_core_exit(void)
{
	misc_deregister(&lsw_misc);
}

module_init(lsw_core_init);
module_exit(lsw_core_exit);
MODULE_DESCRIPTION("Per-instance hot swap of kernel object implementations");
MODULE_LICENSE("GPL");
