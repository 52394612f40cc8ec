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
	return lswloop_v1_do_rq(hdr, rq, 0);
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
