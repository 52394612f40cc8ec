/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lswloop_v1.h - lswloop_v1's private state, shared with the livepatch of
 * lswloop_v1_queue_rq that `cargo xtask bench swap` times against a swap.
 */
#ifndef _LSWLOOP_V1_H
#define _LSWLOOP_V1_H

#include <linux/delay.h>

#include "lswloop.h"

struct lswloop_v1 {
	struct lsw_state_hdr hdr;
	struct file *backing;
	loff_t offset;
	loff_t size;
	u32 flags;
	atomic64_t reads;
	atomic64_t writes;
};

/* Always inlined: an out-of-line static inline copy would be notrace. */
static __always_inline struct lswloop_v1 *to_v1(struct lsw_state_hdr *hdr)
{
	return container_of(hdr, struct lswloop_v1, hdr);
}

/*
 * The whole of lswloop_v1_queue_rq(), inlined there and into the livepatch
 * that replaces it, so that both do the same; @stall_ms is the test knob.
 */
static __always_inline blk_status_t lswloop_v1_do_rq(struct lsw_state_hdr *hdr, struct request *rq,
						     unsigned int stall_ms)
{
	struct lswloop_v1 *s = to_v1(hdr);
	loff_t pos = s->offset + (blk_rq_pos(rq) << SECTOR_SHIFT);
	blk_status_t status;

	blk_mq_start_request(rq);
	if (!lsw_state_enter(hdr)) {
		blk_mq_end_request(rq, BLK_STS_IOERR);
		return BLK_STS_OK;
	}
	if (stall_ms)
		msleep(stall_ms);
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

#endif /* _LSWLOOP_V1_H */
