/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lswloop_v1.h - lswloop_v1's private state, shared with the livepatch of
 * lswloop_v1_queue_rq that `cargo xtask bench swap` times against a swap.
 */
#ifndef _LSWLOOP_V1_H
#define _LSWLOOP_V1_H

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

static inline struct lswloop_v1 *to_v1(struct lsw_state_hdr *hdr)
{
	return container_of(hdr, struct lswloop_v1, hdr);
}

#endif /* _LSWLOOP_V1_H */
