// SPDX-License-Identifier: GPL-2.0
/*
 * lswloop_v1_livepatch - for `cargo xtask bench swap` only: a livepatch of
 * lswloop_v1_queue_rq() with the same body (less the test stall), so that
 * the bench can time a livepatch transition against a swap, on the same
 * machine under the same load. Loading it enables the patch; the bench
 * disables it through sysfs before unloading it.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/blk-mq.h>
#include <linux/livepatch.h>
#include <linux/module.h>

#include "lswloop_v1.h"

static blk_status_t livepatch_queue_rq(struct lsw_instance *inst, struct lsw_state_hdr *hdr,
				       struct request *rq)
{
	struct lswloop_v1 *s = to_v1(hdr);
	loff_t pos = s->offset + (blk_rq_pos(rq) << SECTOR_SHIFT);
	blk_status_t status;

	blk_mq_start_request(rq);
	if (!lsw_state_enter(hdr)) {
		blk_mq_end_request(rq, BLK_STS_IOERR);
		return BLK_STS_OK;
	}
	switch (req_op(rq)) {
	case REQ_OP_READ:
		atomic64_inc(&s->reads);
		status = lswloop_file_rw(s->backing, rq, pos);
		break;
	case REQ_OP_WRITE:
		atomic64_inc(&s->writes);
		status = lswloop_file_rw(s->backing, rq, pos);
		break;
	case REQ_OP_FLUSH:
		status = vfs_fsync(s->backing, 0) ? BLK_STS_IOERR : BLK_STS_OK;
		break;
	default:
		status = BLK_STS_NOTSUPP;
	}
	lsw_state_exit(hdr);
	blk_mq_end_request(rq, status);
	return BLK_STS_OK;
}

static struct klp_func funcs[] = {
	{
		.old_name = "lswloop_v1_queue_rq",
		.new_func = livepatch_queue_rq,
	},
	{ }
};

static struct klp_object objs[] = {
	{
		.name = "lswloop_v1",
		.funcs = funcs,
	},
	{ }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int livepatch_init(void)
{
	return klp_enable_patch(&patch);
}

static void livepatch_exit(void)
{
}

module_init(livepatch_init);
module_exit(livepatch_exit);
MODULE_DESCRIPTION("Bench only: a livepatch of lswloop_v1_queue_rq with the same body");
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
