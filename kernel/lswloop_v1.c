// SPDX-License-Identifier: GPL-2.0
/*
 * lswloop_v1 - the first lswloop implementation: a device is one contiguous
 * window of its backing file, with request counters.
 *
 * Exports state version 1; imports versions 1 and 2 (from version 2 only
 * when the extent map is one extent starting at sector 0, the only shape v1
 * can represent).
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/blk-mq.h>
#include <linux/delay.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/module.h>
#include <linux/slab.h>

#include "lswloop_v1.h"

LSWLOOP_TEST_KNOBS("lswloop_v1");

blk_status_t lswloop_v1_queue_rq(struct lsw_instance *inst, struct lsw_state_hdr *hdr, struct request *rq);
loff_t lswloop_v1_size(struct lsw_instance *inst, struct lsw_state_hdr *hdr);
int lswloop_v1_show(struct lsw_instance *inst, struct lsw_state_hdr *hdr, char *buf, size_t len);

blk_status_t lswloop_v1_queue_rq(struct lsw_instance *inst, struct lsw_state_hdr *hdr, struct request *rq)
{
	return lswloop_v1_do_rq(hdr, rq, READ_ONCE(stall_ms));
}
EXPORT_SYMBOL_GPL(lswloop_v1_queue_rq);

loff_t lswloop_v1_size(struct lsw_instance *inst, struct lsw_state_hdr *hdr)
{
	loff_t size;

	if (!lsw_state_enter(hdr))
		return 0;
	size = to_v1(hdr)->size;
	lsw_state_exit(hdr);
	return size;
}
EXPORT_SYMBOL_GPL(lswloop_v1_size);

int lswloop_v1_show(struct lsw_instance *inst, struct lsw_state_hdr *hdr, char *buf, size_t len)
{
	struct lswloop_v1 *s = to_v1(hdr);
	int n;

	if (!lsw_state_enter(hdr))
		return scnprintf(buf, len, "exported");
	n = scnprintf(buf, len, "backing=%pD size=%lld offset=%lld flags=%u reads=%lld writes=%lld",
		      s->backing, s->size, s->offset, s->flags,
		      atomic64_read(&s->reads), atomic64_read(&s->writes));
	lsw_state_exit(hdr);
	return n;
}
EXPORT_SYMBOL_GPL(lswloop_v1_show);

static struct lsw_state_hdr *v1_create(struct lsw_instance *inst, const char *path)
{
	struct lswloop_v1 *s = kzalloc(sizeof(*s), GFP_KERNEL);
	struct file *file;

	if (!s)
		return ERR_PTR(-ENOMEM);
	file = lswloop_open_backing(path, &s->size);
	if (IS_ERR(file)) {
		kfree(s);
		return ERR_CAST(file);
	}
	s->backing = file;
	return &s->hdr;
}

/* After commit: the new state holds its own reference on the file. */
static void v1_release(struct lsw_instance *inst, struct lsw_state_hdr *hdr)
{
	struct lswloop_v1 *s = to_v1(hdr);

	fput(s->backing);
	s->backing = NULL;
}

static void v1_destroy(struct lsw_instance *inst, struct lsw_state_hdr *hdr)
{
	struct lswloop_v1 *s = to_v1(hdr);

	if (s->backing)
		fput(s->backing);
	kfree(s);
}

static int v1_export(struct lsw_instance *inst, struct lsw_state_hdr *hdr, struct lsw_state *out)
{
	struct lswloop_v1 *s = to_v1(hdr);
	struct lswloop_state_v1 *blob = kvzalloc(sizeof(*blob), GFP_KERNEL);

	if (!blob)
		return -ENOMEM;
	blob->backing = s->backing;
	blob->offset = s->offset;
	blob->size = s->size;
	blob->flags = s->flags;
	blob->reads = atomic64_read(&s->reads);
	blob->writes = atomic64_read(&s->writes);
	out->version = 1;
	out->size = sizeof(*blob);
	out->data = blob;
	return 0;
}

static bool v1_can_import(u32 version)
{
	return version == 1 || version == 2;
}

static struct lsw_state_hdr *v1_import(struct lsw_instance *inst, const struct lsw_state *in)
{
	struct lswloop_v1 *s;

	if (!v1_can_import(in->version))
		return ERR_PTR(-EPROTO);
	if (lswloop_take_fault(&fail_import))
		return ERR_PTR(-EINVAL);
	s = lswloop_take_fault(&fail_alloc) ? NULL : kzalloc(sizeof(*s), GFP_KERNEL);
	if (!s)
		return ERR_PTR(-ENOMEM);
	if (in->version == 1) {
		const struct lswloop_state_v1 *v1 = in->data;

		s->backing = v1->backing;
		s->offset = v1->offset;
		s->size = v1->size;
		s->flags = v1->flags;
		atomic64_set(&s->reads, v1->reads);
		atomic64_set(&s->writes, v1->writes);
	} else {
		const struct lswloop_state_v2 *v2 = in->data;

		/* v1 can only represent one extent mapped from sector 0. */
		if (v2->nr_extents != 1 || v2->extents[0].start != 0) {
			kfree(s);
			return ERR_PTR(-EPROTO);
		}
		s->backing = v2->backing;
		s->offset = v2->extents[0].file_pos;
		s->size = (loff_t)v2->extents[0].sectors << SECTOR_SHIFT;
		s->flags = v2->flags;
		atomic64_set(&s->reads, v2->stats.read_reqs);
		atomic64_set(&s->writes, v2->stats.write_reqs);
	}
	get_file(s->backing);
	return &s->hdr;
}

static const struct lsw_impl_ops v1_ops = {
	.create = v1_create,
	.destroy = v1_destroy,
	.release = v1_release,
	.export_state = v1_export,
	.can_import = v1_can_import,
	.import_state = v1_import,
};

static const struct lswloop_ops v1_class_ops = {
	.queue_rq = lswloop_v1_queue_rq,
	.size = lswloop_v1_size,
	.show = lswloop_v1_show,
};

static struct lsw_impl v1_impl = {
	.class_name = LSWLOOP_CLASS,
	.name = KBUILD_MODNAME,
	.version = 1,
	.state_version = 1,
	.ops = &v1_ops,
	.class_ops = &v1_class_ops,
	.owner = THIS_MODULE,
};

static int __init lswloop_v1_init(void)
{
	return lsw_impl_register(&v1_impl);
}

static void __exit lswloop_v1_exit(void)
{
	lsw_impl_unregister(&v1_impl);
}

module_init(lswloop_v1_init);
module_exit(lswloop_v1_exit);
MODULE_DESCRIPTION("lswloop implementation v1: contiguous mapping, request counters");
MODULE_LICENSE("GPL");
MODULE_INFO(lsw_class, LSWLOOP_CLASS);
MODULE_INFO(lsw_version, "1");
MODULE_INFO(lsw_state_version, "1");
MODULE_INFO(lsw_imports, "1,2");
