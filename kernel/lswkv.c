// SPDX-License-Identifier: GPL-2.0
/*
 * lswkv.c - the lswkv class front: one misc device per store, every call
 * routed through the swap core to the store's current implementation.
 *
 *   echo kv0 > /sys/kernel/lswkv/add      creates /dev/kv0 (store "kv0")
 *   echo key=value > /dev/kv0             sets a pair (one per write)
 *   cat /dev/kv0                          lists the pairs, one per line
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/fs.h>
#include <linux/kobject.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/sysfs.h>
#include <linux/uaccess.h>

#include "lswkv.h"

struct lswkv_store {
	struct miscdevice misc;
	struct lsw_instance *inst;
	char name[LSW_NAME_LEN];
	struct list_head node;
};

static struct lsw_class lswkv_class = {
	.name = LSWKV_CLASS,
};

static LIST_HEAD(stores);
static DEFINE_MUTEX(stores_lock);
static struct kobject *lswkv_kobj;

/* The store of a file opened by lswkv_open(). */
static struct lswkv_store *to_store(struct file *file)
{
	return ((struct seq_file *)file->private_data)->private;
}

static ssize_t lswkv_write(struct file *file, const char __user *ubuf, size_t len, loff_t *ppos)
{
	struct lswkv_store *store = to_store(file);
	char line[LSWKV_KEY_LEN + LSWKV_VALUE_LEN + 2];
	struct lsw_call call;
	char *value;
	int ret;

	if (len >= sizeof(line))
		return -EINVAL;
	if (copy_from_user(line, ubuf, len))
		return -EFAULT;
	line[len] = '\0';
	strim(line);
	value = strchr(line, '=');
	if (!value || value == line || value - line >= LSWKV_KEY_LEN ||
	    strlen(value + 1) >= LSWKV_VALUE_LEN)
		return -EINVAL;
	*value++ = '\0';
	lsw_enter(store->inst, &call);
	ret = lsw_call_ops(&call, struct lswkv_ops)->set(store->inst, call.state, line, value);
	lsw_exit(&call);
	return ret ? ret : len;
}

/*
 * The whole listing, as one seq_file record: built at a reader's first read
 * and kept for its later ones, so it is complete at any size and never cut
 * or repeated by writes between them. Too small a buffer is reported as an
 * overflow and seq_file calls again with a larger one.
 */
static int lswkv_show(struct seq_file *m, void *unused)
{
	struct lswkv_store *store = m->private;
	struct lsw_call call;
	size_t room, need;
	char *buf;

	room = seq_get_buf(m, &buf);
	lsw_enter(store->inst, &call);
	need = lsw_call_ops(&call, struct lswkv_ops)->dump(store->inst, call.state, buf, room);
	lsw_exit(&call);
	seq_commit(m, need < room ? need : -1);
	return 0;
}

static int lswkv_open(struct inode *inode, struct file *file)
{
	/* misc_open() set private_data to the store's miscdevice. */
	struct lswkv_store *store = container_of(file->private_data, struct lswkv_store, misc);

	/* seq_file keeps its own there. */
	file->private_data = NULL;
	return single_open(file, lswkv_show, store);
}

static const struct file_operations lswkv_fops = {
	.owner = THIS_MODULE,
	.open = lswkv_open,
	.release = single_release,
	.write = lswkv_write,
	.read = seq_read,
	.llseek = seq_lseek,
};

static int lswkv_add(const char *name)
{
	struct lswkv_store *store, *other;
	int ret;

	store = kzalloc(sizeof(*store), GFP_KERNEL);
	if (!store)
		return -ENOMEM;
	strscpy(store->name, name, sizeof(store->name));
	mutex_lock(&stores_lock);
	list_for_each_entry(other, &stores, node) {
		if (!strcmp(other->name, store->name)) {
			mutex_unlock(&stores_lock);
			kfree(store);
			return -EEXIST;
		}
	}
	store->inst = lsw_instance_create(&lswkv_class, store->name, NULL, NULL, store);
	if (IS_ERR(store->inst)) {
		ret = PTR_ERR(store->inst);
		goto unlock;
	}
	store->misc.minor = MISC_DYNAMIC_MINOR;
	store->misc.name = store->name;
	store->misc.fops = &lswkv_fops;
	store->misc.mode = 0600;
	ret = misc_register(&store->misc);
	if (ret) {
		lsw_instance_retire(store->inst);
		lsw_instance_destroy(store->inst);
		goto unlock;
	}
	list_add_tail(&store->node, &stores);
	mutex_unlock(&stores_lock);
	pr_info("%s: store of instance %u\n", store->name, store->inst->id);
	return 0;
unlock:
	mutex_unlock(&stores_lock);
	kfree(store);
	return ret;
}

static ssize_t add_store(struct kobject *kobj, struct kobj_attribute *attr,
			 const char *buf, size_t count)
{
	char name[LSW_NAME_LEN];

	if (count >= sizeof(name) || sscanf(buf, "%31s", name) != 1)
		return -EINVAL;
	return lswkv_add(name) ?: count;
}

static struct kobj_attribute add_attr = __ATTR_WO(add);

static int __init lswkv_init(void)
{
	int ret;

	ret = lsw_class_register(&lswkv_class);
	if (ret)
		return ret;
	lswkv_kobj = kobject_create_and_add(LSWKV_CLASS, kernel_kobj);
	if (!lswkv_kobj) {
		lsw_class_unregister(&lswkv_class);
		return -ENOMEM;
	}
	ret = sysfs_create_file(lswkv_kobj, &add_attr.attr);
	if (ret) {
		kobject_put(lswkv_kobj);
		lsw_class_unregister(&lswkv_class);
	}
	return ret;
}

static void __exit lswkv_exit(void)
{
	struct lswkv_store *store, *tmp;

	kobject_put(lswkv_kobj);
	list_for_each_entry_safe(store, tmp, &stores, node) {
		lsw_instance_retire(store->inst);
		misc_deregister(&store->misc);
		lsw_instance_destroy(store->inst);
		kfree(store);
	}
	lsw_class_unregister(&lswkv_class);
}

module_init(lswkv_init);
module_exit(lswkv_exit);
MODULE_DESCRIPTION("lswkv: a key/value store class whose implementation can be hot-swapped");
MODULE_LICENSE("GPL");
