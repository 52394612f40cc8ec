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

static struct lswkv_store *to_store(struct file *file)
{
	return container_of(file->private_data, struct lswkv_store, misc);
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

/* The whole listing is built at the first read, so it is complete at any size. */
static ssize_t lswkv_read(struct file *file, char __user *ubuf, size_t len, loff_t *ppos)
{
	struct lswkv_store *store = to_store(file);
	size_t size = PAGE_SIZE, need;
	struct lsw_call call;
	ssize_t ret;
	char *buf;

	for (;;) {
		buf = kvmalloc(size, GFP_KERNEL);
		if (!buf)
			return -ENOMEM;
		lsw_enter(store->inst, &call);
		need = lsw_call_ops(&call, struct lswkv_ops)->dump(store->inst, call.state, buf, size);
		lsw_exit(&call);
		if (need < size)
			break;
		kvfree(buf);
		size = need + 1;
	}
	ret = simple_read_from_buffer(ubuf, len, ppos, buf, need);
	kvfree(buf);
	return ret;
}

static const struct file_operations lswkv_fops = {
	.owner = THIS_MODULE,
	.write = lswkv_write,
	.read = lswkv_read,
	.llseek = default_llseek,
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
