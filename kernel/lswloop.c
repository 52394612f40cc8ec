// SPDX-License-Identifier: GPL-2.0
/*
 * lswloop - the stable front of the lswloop class: loop-like block devices
 * backed by regular files, whose implementation is swappable per device.
 *
 * The front owns what must outlive any implementation (gendisk, blk-mq tag
 * set, major number) and sends every call through lsw_enter()/lsw_exit(),
 * the per-instance indirection and gate of lsw_core. Devices are created
 * and removed at run time through sysfs:
 *
 *   echo /tmp/disk.img > /sys/kernel/lswloop/add              # newest impl
 *   echo "/tmp/disk.img lswloop_v1" > /sys/kernel/lswloop/add # a chosen one
 *   cat /sys/kernel/lswloop/devices    # one line per device: name, lsw id, state
 *   echo lswloop0 > /sys/kernel/lswloop/remove
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/blk-mq.h>
#include <linux/blkdev.h>
#include <linux/idr.h>
#include <linux/kobject.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/sysfs.h>

#include "lswloop.h"

struct lswloop_device {
	int index;
	struct lsw_instance *inst;
	struct blk_mq_tag_set tag_set;
	struct gendisk *disk;
	struct list_head node;
};

static DEFINE_MUTEX(devices_lock);
static LIST_HEAD(devices);
static DEFINE_IDA(indexes);
static int lswloop_major;
static struct kobject *lswloop_kobj;

static struct lsw_class lswloop_class = {
	.name = LSWLOOP_CLASS,
};

static blk_status_t lswloop_queue_rq(struct blk_mq_hw_ctx *hctx,
				     const struct blk_mq_queue_data *bd)
{
	struct lswloop_device *dev = hctx->queue->queuedata;
	unsigned int noio;
	struct lsw_call call;
	blk_status_t ret;

	/*
	 * Reads, writes and flushes of the backing file must not recurse into
	 * this device through reclaim (the loop driver's workers run the same
	 * way), least of all while its gate is closed.
	 */
	noio = memalloc_noio_save();
	lsw_enter(dev->inst, &call);
	ret = lsw_call_ops(&call, struct lswloop_ops)->queue_rq(dev->inst, call.state, bd->rq);
	lsw_exit(&call);
	memalloc_noio_restore(noio);
	return ret;
}

static const struct blk_mq_ops lswloop_mq_ops = {
	.queue_rq = lswloop_queue_rq,
};

static const struct block_device_operations lswloop_fops = {
	.owner = THIS_MODULE,
};

static loff_t device_size(struct lswloop_device *dev)
{
	struct lsw_call call;
	loff_t size;

	lsw_enter(dev->inst, &call);
	size = lsw_call_ops(&call, struct lswloop_ops)->size(dev->inst, call.state);
	lsw_exit(&call);
	return size;
}

static int lswloop_add(const char *path, const char *impl)
{
	struct queue_limits lim = {
		.logical_block_size = 512,
		.physical_block_size = 4096,
		.max_hw_sectors = 1024,
		.features = BLK_FEAT_WRITE_CACHE | BLK_FEAT_FUA,
	};
	struct lswloop_device *dev;
	char name[LSW_NAME_LEN];
	int ret;

	dev = kzalloc(sizeof(*dev), GFP_KERNEL);
	if (!dev)
		return -ENOMEM;
	/* One minor per device. */
	ret = ida_alloc_max(&indexes, MINORMASK, GFP_KERNEL);
	if (ret < 0)
		goto free;
	dev->index = ret;
	snprintf(name, sizeof(name), "lswloop%d", dev->index);

	dev->tag_set.ops = &lswloop_mq_ops;
	dev->tag_set.nr_hw_queues = 1;
	dev->tag_set.queue_depth = 128;
	dev->tag_set.numa_node = NUMA_NO_NODE;
	/* Implementations do file I/O in queue_rq, and callers wait at the gate. */
	dev->tag_set.flags = BLK_MQ_F_SHOULD_MERGE | BLK_MQ_F_BLOCKING;
	dev->tag_set.driver_data = dev;
	ret = blk_mq_alloc_tag_set(&dev->tag_set);
	if (ret)
		goto free_index;

	dev->inst = lsw_instance_create(&lswloop_class, name, impl, path, dev);
	if (IS_ERR(dev->inst)) {
		ret = PTR_ERR(dev->inst);
		goto free_tags;
	}

	dev->disk = blk_mq_alloc_disk(&dev->tag_set, &lim, dev);
	if (IS_ERR(dev->disk)) {
		ret = PTR_ERR(dev->disk);
		goto destroy;
	}
	dev->disk->major = lswloop_major;
	dev->disk->first_minor = dev->index;
	dev->disk->minors = 1;
	dev->disk->fops = &lswloop_fops;
	dev->disk->private_data = dev;
	strscpy(dev->disk->disk_name, name, DISK_NAME_LEN);
	set_capacity(dev->disk, device_size(dev) >> SECTOR_SHIFT);
	ret = add_disk(dev->disk);
	if (ret)
		goto put_disk;

	mutex_lock(&devices_lock);
	list_add_tail(&dev->node, &devices);
	mutex_unlock(&devices_lock);
	pr_info("%s: backed by %s, lsw instance %u\n", name, path, dev->inst->id);
	return 0;

put_disk:
	put_disk(dev->disk);
destroy:
	lsw_instance_destroy(dev->inst);
free_tags:
	blk_mq_free_tag_set(&dev->tag_set);
free_index:
	ida_free(&indexes, dev->index);
free:
	kfree(dev);
	return ret;
}

static void lswloop_remove(struct lswloop_device *dev)
{
	/* No request may wait at a closed gate while the disk drains. */
	lsw_instance_retire(dev->inst);
	del_gendisk(dev->disk);
	put_disk(dev->disk);
	lsw_instance_destroy(dev->inst);
	blk_mq_free_tag_set(&dev->tag_set);
	ida_free(&indexes, dev->index);
	kfree(dev);
}

static ssize_t add_store(struct kobject *kobj, struct kobj_attribute *attr,
			 const char *buf, size_t count)
{
	char path[256], impl[LSW_NAME_LEN];
	int n, ret;

	n = sscanf(buf, "%255s %31s", path, impl);
	if (n < 1)
		return -EINVAL;
	ret = lswloop_add(path, n == 2 ? impl : NULL);
	return ret ? ret : count;
}

static ssize_t remove_store(struct kobject *kobj, struct kobj_attribute *attr,
			    const char *buf, size_t count)
{
	struct lswloop_device *dev, *found = NULL;

	mutex_lock(&devices_lock);
	list_for_each_entry(dev, &devices, node) {
		if (sysfs_streq(buf, dev->disk->disk_name)) {
			found = dev;
			list_del(&dev->node);
			break;
		}
	}
	mutex_unlock(&devices_lock);
	if (!found)
		return -ENODEV;
	lswloop_remove(found);
	return count;
}

/* Longest line of the devices listing, state included. */
#define DEVICE_LINE_MAX 512

/* Listings kept for readers that have not yet read to the end. */
#define LISTINGS_KEPT 64

/*
 * sysfs calls a binary attribute's read() once per read(2), at the file's
 * offset. Built afresh each time, the listing would shift under a reader
 * whenever a line changes length between two of its reads (a counter gains
 * a digit, a device comes or goes): text would be cut or repeated. So the
 * listing built at offset 0 is kept for that open file and every later
 * read is served from it. Once the file has read past the end only the
 * length is kept: readers such as busybox tail read again at the end after
 * a 0, and must get 0 again, not the tail of a longer listing. sysfs gives
 * a binary attribute no release(), so at most LISTINGS_KEPT are kept, the
 * least recently read going first; a reader whose listing was dropped (more
 * readers than that between two of its reads) gets a new one.
 */
struct listing {
	struct list_head node;
	const struct file *file;
	char *text;		/* NULL once read past the end */
	size_t len;
};

/* Most recently read first. Taken before devices_lock. */
static DEFINE_MUTEX(listings_lock);
static LIST_HEAD(listings);
static unsigned int nr_listings;

static void listing_free(struct listing *l)
{
	list_del(&l->node);
	nr_listings--;
	kvfree(l->text);
	kfree(l);
}

/*
 * One line per device, complete at any count. It never waits on a device:
 * one whose gate is closed for a swap shows "swapping" instead of its
 * state. The caller is in memalloc_noio: reclaim must not wait on a gated
 * device.
 */
static char *devices_text(size_t *lenp)
{
	struct lswloop_device *dev;
	size_t cap, len = 0;
	struct lsw_call call;
	char *text, *kept;

	mutex_lock(&devices_lock);
	cap = DEVICE_LINE_MAX * (list_count_nodes(&devices) + 1);
	text = kvmalloc(cap, GFP_KERNEL);
	if (!text)
		goto unlock;
	list_for_each_entry(dev, &devices, node) {
		size_t line = len;

		if (!lsw_try_enter(dev->inst, &call)) {
			len += scnprintf(text + len, cap - len, "%s id=%u swapping\n",
					 dev->disk->disk_name, dev->inst->id);
			continue;
		}
		len += scnprintf(text + len, cap - len, "%s id=%u impl=%s ",
				 dev->disk->disk_name, dev->inst->id, call.impl->name);
		len += lsw_call_ops(&call, struct lswloop_ops)->show(dev->inst, call.state,
								    text + len,
								    line + DEVICE_LINE_MAX - 1 - len);
		lsw_exit(&call);
		len += scnprintf(text + len, cap - len, "\n");
	}
	mutex_unlock(&devices_lock);
	/* Kept until read to the end: its length, not the worst case. */
	kept = kvmemdup(text, len + 1, GFP_KERNEL);
	kvfree(text);
	*lenp = len;
	return kept;
unlock:
	mutex_unlock(&devices_lock);
	return NULL;
}

/*
 * The file's listing: the one kept for it, or, at offset 0 or if it was
 * dropped, a new one. The caller holds listings_lock.
 */
static struct listing *listing_for(const struct file *file, loff_t off)
{
	struct listing *l, *found = NULL;

	list_for_each_entry(l, &listings, node) {
		if (l->file == file) {
			found = l;
			break;
		}
	}
	if (found && off) {
		list_move(&found->node, &listings);
		return found;
	}
	if (found)
		listing_free(found);
	else if (nr_listings >= LISTINGS_KEPT)
		listing_free(list_last_entry(&listings, struct listing, node));
	l = kzalloc(sizeof(*l), GFP_KERNEL);
	if (!l)
		return NULL;
	l->text = devices_text(&l->len);
	if (!l->text) {
		kfree(l);
		return NULL;
	}
	l->file = file;
	list_add(&l->node, &listings);
	nr_listings++;
	return l;
}

/* World-readable, so it never waits on a device (see devices_text()). */
static ssize_t devices_read(struct file *file, struct kobject *kobj,
			    struct bin_attribute *attr, char *buf, loff_t off, size_t count)
{
	struct listing *l;
	unsigned int noio;
	ssize_t ret = 0;

	if (mutex_lock_killable(&listings_lock))
		return -EINTR;
	noio = memalloc_noio_save();
	l = listing_for(file, off);
	/* Back inside a listing already read to the end: a new one. */
	if (l && !l->text && off < l->len)
		l = listing_for(file, 0);
	if (!l) {
		ret = -ENOMEM;
	} else if (off < l->len) {
		ret = min_t(size_t, count, l->len - off);
		memcpy(buf, l->text + off, ret);
	} else {
		/* Read to the end: the text goes, its end stays. */
		kvfree(l->text);
		l->text = NULL;
	}
	memalloc_noio_restore(noio);
	mutex_unlock(&listings_lock);
	return ret;
}

static struct kobj_attribute add_attr = __ATTR_WO(add);
static struct kobj_attribute remove_attr = __ATTR_WO(remove);
static struct bin_attribute devices_attr = __BIN_ATTR_RO(devices, 0);

static struct attribute *lswloop_attrs[] = {
	&add_attr.attr,
	&remove_attr.attr,
	NULL,
};

static struct bin_attribute *lswloop_bin_attrs[] = {
	&devices_attr,
	NULL,
};

static const struct attribute_group lswloop_group = {
	.attrs = lswloop_attrs,
	.bin_attrs = lswloop_bin_attrs,
};

static int __init lswloop_init(void)
{
	int ret;

	lswloop_major = register_blkdev(0, LSWLOOP_CLASS);
	if (lswloop_major < 0)
		return lswloop_major;
	ret = lsw_class_register(&lswloop_class);
	if (ret)
		goto unregister_blkdev;
	lswloop_kobj = kobject_create_and_add(LSWLOOP_CLASS, kernel_kobj);
	if (!lswloop_kobj) {
		ret = -ENOMEM;
		goto unregister_class;
	}
	ret = sysfs_create_group(lswloop_kobj, &lswloop_group);
	if (ret)
		goto put_kobj;
	return 0;

put_kobj:
	kobject_put(lswloop_kobj);
unregister_class:
	lsw_class_unregister(&lswloop_class);
unregister_blkdev:
	unregister_blkdev(lswloop_major, LSWLOOP_CLASS);
	return ret;
}

static void __exit lswloop_exit(void)
{
	struct lswloop_device *dev, *tmp;
	struct listing *l, *next;

	/* No read runs or starts once the files are gone. */
	kobject_del(lswloop_kobj);
	list_for_each_entry_safe(l, next, &listings, node)
		listing_free(l);
	kobject_put(lswloop_kobj);
	list_for_each_entry_safe(dev, tmp, &devices, node) {
		list_del(&dev->node);
		lswloop_remove(dev);
	}
	lsw_class_unregister(&lswloop_class);
	unregister_blkdev(lswloop_major, LSWLOOP_CLASS);
}

module_init(lswloop_init);
module_exit(lswloop_exit);
MODULE_DESCRIPTION("lswloop: file-backed block devices with swappable implementations");
MODULE_LICENSE("GPL");
