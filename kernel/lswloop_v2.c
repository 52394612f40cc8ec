// SPDX-License-Identifier: GPL-2.0
/*
 * lswloop_v2 - the second lswloop implementation: a device is an extent map
 * over its backing file, with per-direction I/O statistics and a sampler
 * timer computing throughput (asynchronous activity that quiesce stops).
 *
 * Exports state version 2; imports versions 1 (transformed into a one
 * extent map; byte counts start at zero, v1 never kept them) and 2.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/blk-mq.h>
#include <linux/delay.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/timer.h>

#include "lswloop.h"

#define SAMPLE_INTERVAL (HZ / 10)

LSWLOOP_TEST_KNOBS("lswloop_v2");

static bool leak_sampler;
module_param(leak_sampler, bool, 0644);
MODULE_PARM_DESC(leak_sampler,
		 "test knob: a broken quiesce that leaves the sampler running, every jiffy");

struct lswloop_v2 {
	struct lsw_state_hdr hdr;
	struct file *backing;
	u32 flags;
	u32 nr_extents;
	struct lswloop_extent extents[LSWLOOP_MAX_EXTENTS];
	atomic64_t read_reqs;
	atomic64_t write_reqs;
	atomic64_t read_bytes;
	atomic64_t write_bytes;
	atomic64_t flushes;
	atomic64_t errors;
	struct timer_list sampler;
	u64 sampled_bytes;
	u64 bytes_per_sec;
};

static struct lswloop_v2 *to_v2(struct lsw_state_hdr *hdr)
{
	return container_of(hdr, struct lswloop_v2, hdr);
}

blk_status_t lswloop_v2_queue_rq(struct lsw_instance *inst, struct lsw_state_hdr *hdr, struct request *rq);
loff_t lswloop_v2_size(struct lsw_instance *inst, struct lsw_state_hdr *hdr);
int lswloop_v2_show(struct lsw_instance *inst, struct lsw_state_hdr *hdr, char *buf, size_t len);

/* The extent holding the whole request, or NULL. */
static const struct lswloop_extent *find_extent(struct lswloop_v2 *s, struct request *rq)
{
	sector_t first = blk_rq_pos(rq), end = first + blk_rq_sectors(rq);
	u32 i;

	for (i = 0; i < s->nr_extents; i++) {
		const struct lswloop_extent *e = &s->extents[i];

		if (first >= e->start && end <= e->start + e->sectors)
			return e;
	}
	return NULL;
}

blk_status_t lswloop_v2_queue_rq(struct lsw_instance *inst, struct lsw_state_hdr *hdr, struct request *rq)
{
	struct lswloop_v2 *s = to_v2(hdr);
	const struct lswloop_extent *e;
	blk_status_t status;
	loff_t pos;

	blk_mq_start_request(rq);
	if (!lsw_state_enter(hdr)) {
		blk_mq_end_request(rq, BLK_STS_IOERR);
		return BLK_STS_OK;
	}
	if (READ_ONCE(stall_ms))
		msleep(READ_ONCE(stall_ms));
	switch (req_op(rq)) {
	case REQ_OP_READ:
	case REQ_OP_WRITE:
		e = find_extent(s, rq);
		if (!e) {
			status = BLK_STS_IOERR;
			break;
		}
		pos = e->file_pos + ((loff_t)(blk_rq_pos(rq) - e->start) << SECTOR_SHIFT);
		status = lswloop_file_rw(s->backing, rq, pos);
		if (req_op(rq) == REQ_OP_READ) {
			atomic64_inc(&s->read_reqs);
			atomic64_add(blk_rq_bytes(rq), &s->read_bytes);
		} else {
			atomic64_inc(&s->write_reqs);
			atomic64_add(blk_rq_bytes(rq), &s->write_bytes);
		}
		break;
	case REQ_OP_FLUSH:
		atomic64_inc(&s->flushes);
		status = vfs_fsync(s->backing, 0) ? BLK_STS_IOERR : BLK_STS_OK;
		break;
	default:
		status = BLK_STS_NOTSUPP;
	}
	if (status != BLK_STS_OK)
		atomic64_inc(&s->errors);
	lsw_state_exit(hdr);
	blk_mq_end_request(rq, status);
	return BLK_STS_OK;
}
EXPORT_SYMBOL_GPL(lswloop_v2_queue_rq);

loff_t lswloop_v2_size(struct lsw_instance *inst, struct lsw_state_hdr *hdr)
{
	struct lswloop_v2 *s = to_v2(hdr);
	loff_t sectors = 0;
	u32 i;

	if (!lsw_state_enter(hdr))
		return 0;
	for (i = 0; i < s->nr_extents; i++)
		sectors = max_t(loff_t, sectors, s->extents[i].start + s->extents[i].sectors);
	lsw_state_exit(hdr);
	return sectors << SECTOR_SHIFT;
}
EXPORT_SYMBOL_GPL(lswloop_v2_size);

int lswloop_v2_show(struct lsw_instance *inst, struct lsw_state_hdr *hdr, char *buf, size_t len)
{
	struct lswloop_v2 *s = to_v2(hdr);
	int n;

	if (!lsw_state_enter(hdr))
		return scnprintf(buf, len, "exported");
	n = scnprintf(buf, len,
			 "backing=%pD size=%lld extents=%u flags=%u reads=%lld writes=%lld read_bytes=%lld write_bytes=%lld flushes=%lld errors=%lld bytes_per_sec=%llu",
			 s->backing, lswloop_v2_size(inst, hdr), s->nr_extents, s->flags,
			 atomic64_read(&s->read_reqs), atomic64_read(&s->write_reqs),
			 atomic64_read(&s->read_bytes), atomic64_read(&s->write_bytes),
			 atomic64_read(&s->flushes), atomic64_read(&s->errors),
			 READ_ONCE(s->bytes_per_sec));
	lsw_state_exit(hdr);
	return n;
}
EXPORT_SYMBOL_GPL(lswloop_v2_show);

static void v2_sample(struct timer_list *t)
{
	struct lswloop_v2 *s = from_timer(s, t, sampler);
	unsigned long interval = READ_ONCE(leak_sampler) ? 1 : SAMPLE_INTERVAL;
	u64 bytes;

	/* A state exported under a broken quiesce: the sampler stops here. */
	if (!lsw_state_enter(&s->hdr))
		return;
	bytes = atomic64_read(&s->read_bytes) + atomic64_read(&s->write_bytes);
	WRITE_ONCE(s->bytes_per_sec, (bytes - s->sampled_bytes) * HZ / interval);
	s->sampled_bytes = bytes;
	mod_timer(&s->sampler, jiffies + interval);
	lsw_state_exit(&s->hdr);
}

static struct lswloop_v2 *v2_alloc(void)
{
	struct lswloop_v2 *s = kzalloc(sizeof(*s), GFP_KERNEL);

	if (s)
		timer_setup(&s->sampler, v2_sample, 0);
	return s;
}

static struct lsw_state_hdr *v2_create(struct lsw_instance *inst, const char *path)
{
	struct lswloop_v2 *s = v2_alloc();
	struct file *file;
	loff_t size;

	if (!s)
		return ERR_PTR(-ENOMEM);
	file = lswloop_open_backing(path, &size);
	if (IS_ERR(file)) {
		kfree(s);
		return ERR_CAST(file);
	}
	s->backing = file;
	s->nr_extents = 1;
	s->extents[0].sectors = size >> SECTOR_SHIFT;
	mod_timer(&s->sampler, jiffies + SAMPLE_INTERVAL);
	return &s->hdr;
}

/* After commit: the new state holds its own reference on the file. */
static void v2_release(struct lsw_instance *inst, struct lsw_state_hdr *hdr)
{
	struct lswloop_v2 *s = to_v2(hdr);

	timer_shutdown_sync(&s->sampler);
	fput(s->backing);
	s->backing = NULL;
}

static void v2_destroy(struct lsw_instance *inst, struct lsw_state_hdr *hdr)
{
	struct lswloop_v2 *s = to_v2(hdr);

	timer_shutdown_sync(&s->sampler);
	if (s->backing)
		fput(s->backing);
	kfree(s);
}

static void v2_quiesce(struct lsw_instance *inst, struct lsw_state_hdr *hdr)
{
	if (!READ_ONCE(leak_sampler))
		timer_delete_sync(&to_v2(hdr)->sampler);
}

static void v2_resume(struct lsw_instance *inst, struct lsw_state_hdr *hdr)
{
	mod_timer(&to_v2(hdr)->sampler, jiffies + SAMPLE_INTERVAL);
}

static int v2_export(struct lsw_instance *inst, struct lsw_state_hdr *hdr, struct lsw_state *out)
{
	struct lswloop_v2 *s = to_v2(hdr);
	struct lswloop_state_v2 *blob = kvzalloc(sizeof(*blob), GFP_KERNEL);

	if (!blob)
		return -ENOMEM;
	blob->backing = s->backing;
	blob->flags = s->flags;
	blob->nr_extents = s->nr_extents;
	memcpy(blob->extents, s->extents, sizeof(blob->extents));
	blob->stats.read_reqs = atomic64_read(&s->read_reqs);
	blob->stats.write_reqs = atomic64_read(&s->write_reqs);
	blob->stats.read_bytes = atomic64_read(&s->read_bytes);
	blob->stats.write_bytes = atomic64_read(&s->write_bytes);
	blob->stats.flushes = atomic64_read(&s->flushes);
	blob->stats.errors = atomic64_read(&s->errors);
	out->version = 2;
	out->size = sizeof(*blob);
	out->data = blob;
	return 0;
}

static bool v2_can_import(u32 version)
{
	return version == 1 || version == 2;
}

static struct lsw_state_hdr *v2_import(struct lsw_instance *inst, const struct lsw_state *in)
{
	struct lswloop_v2 *s;

	if (!v2_can_import(in->version))
		return ERR_PTR(-EPROTO);
	if (lswloop_take_fault(&fail_import))
		return ERR_PTR(-EINVAL);
	s = lswloop_take_fault(&fail_alloc) ? NULL : v2_alloc();
	if (!s)
		return ERR_PTR(-ENOMEM);
	if (in->version == 1) {
		const struct lswloop_state_v1 *v1 = in->data;

		s->backing = v1->backing;
		s->flags = v1->flags;
		s->nr_extents = 1;
		s->extents[0].start = 0;
		s->extents[0].sectors = v1->size >> SECTOR_SHIFT;
		s->extents[0].file_pos = v1->offset;
		atomic64_set(&s->read_reqs, v1->reads);
		atomic64_set(&s->write_reqs, v1->writes);
	} else {
		const struct lswloop_state_v2 *v2 = in->data;

		if (v2->nr_extents > LSWLOOP_MAX_EXTENTS) {
			kfree(s);
			return ERR_PTR(-EPROTO);
		}
		s->backing = v2->backing;
		s->flags = v2->flags;
		s->nr_extents = v2->nr_extents;
		memcpy(s->extents, v2->extents, sizeof(s->extents));
		atomic64_set(&s->read_reqs, v2->stats.read_reqs);
		atomic64_set(&s->write_reqs, v2->stats.write_reqs);
		atomic64_set(&s->read_bytes, v2->stats.read_bytes);
		atomic64_set(&s->write_bytes, v2->stats.write_bytes);
		atomic64_set(&s->flushes, v2->stats.flushes);
		atomic64_set(&s->errors, v2->stats.errors);
	}
	s->sampled_bytes = atomic64_read(&s->read_bytes) + atomic64_read(&s->write_bytes);
	get_file(s->backing);
	/* The sampler starts in resume(), once this state is committed. */
	return &s->hdr;
}

static const struct lsw_impl_ops v2_ops = {
	.create = v2_create,
	.destroy = v2_destroy,
	.release = v2_release,
	.quiesce = v2_quiesce,
	.resume = v2_resume,
	.export_state = v2_export,
	.can_import = v2_can_import,
	.import_state = v2_import,
};

static const struct lswloop_ops v2_class_ops = {
	.queue_rq = lswloop_v2_queue_rq,
	.size = lswloop_v2_size,
	.show = lswloop_v2_show,
};

static struct lsw_impl v2_impl = {
	.class_name = LSWLOOP_CLASS,
	.name = KBUILD_MODNAME,
	.version = 2,
	.state_version = 2,
	.ops = &v2_ops,
	.class_ops = &v2_class_ops,
	.owner = THIS_MODULE,
};

static int __init lswloop_v2_init(void)
{
	return lsw_impl_register(&v2_impl);
}

static void __exit lswloop_v2_exit(void)
{
	lsw_impl_unregister(&v2_impl);
}

module_init(lswloop_v2_init);
module_exit(lswloop_v2_exit);
MODULE_DESCRIPTION("lswloop implementation v2: extent map, I/O statistics, throughput sampler");
MODULE_LICENSE("GPL");
MODULE_INFO(lsw_class, LSWLOOP_CLASS);
MODULE_INFO(lsw_version, "2");
MODULE_INFO(lsw_state_version, "2");
MODULE_INFO(lsw_imports, "1,2");
