/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lswloop.h - the lswloop class: a loop-like block device backed by a
 * regular file, whose implementation can be swapped per device.
 *
 * The front (lswloop.ko) owns the gendisk and the blk-mq tag set, which
 * outlive any implementation; implementations (lswloop_v1.ko,
 * lswloop_v2.ko) do the I/O and keep the per-device state. The exported
 * state layouts below are the class's ABI: an implementation exports one of
 * them and imports the ones it has a transformer for.
 */
#ifndef _LSWLOOP_H
#define _LSWLOOP_H

#include <linux/blk-mq.h>
#include <linux/file.h>
#include <linux/fs.h>

#include "lsw_core.h"

#define LSWLOOP_CLASS "lswloop"

/*
 * Test knobs every implementation has (module parameters), for the tests
 * and `cargo xtask soak`: a stall inside queue_rq, and failures of the next
 * imports, as a transformer that rejects the state or as an allocation
 * that fails.
 */
#define LSWLOOP_TEST_KNOBS(impl)							\
	static unsigned int stall_ms;							\
	module_param(stall_ms, uint, 0644);						\
	MODULE_PARM_DESC(stall_ms, "test knob: every request waits this long inside " impl "_queue_rq()"); \
	static unsigned int fail_import;						\
	module_param(fail_import, uint, 0644);						\
	MODULE_PARM_DESC(fail_import, "test knob: this many imports reject the state (-EINVAL)"); \
	static unsigned int fail_alloc;							\
	module_param(fail_alloc, uint, 0644);						\
	MODULE_PARM_DESC(fail_alloc, "test knob: this many imports fail to allocate the new state")

/* Takes one injected failure from a knob, if one is left. */
static __always_inline bool lswloop_take_fault(unsigned int *left)
{
	unsigned int old = READ_ONCE(*left);

	do {
		if (!old)
			return false;
	} while (!try_cmpxchg(left, &old, old - 1));
	return true;
}

/* Entry points of an implementation, called by the front between lsw_enter/exit. */
struct lswloop_ops {
	/* Do the whole request synchronously (the queue is BLK_MQ_F_BLOCKING). */
	blk_status_t (*queue_rq)(struct lsw_instance *inst, struct lsw_state_hdr *state,
				 struct request *rq);
	/* Device size in bytes. */
	loff_t (*size)(struct lsw_instance *inst, struct lsw_state_hdr *state);
	/* One line of "key=value" facts for /sys/kernel/lswloop/devices. */
	int (*show)(struct lsw_instance *inst, struct lsw_state_hdr *state, char *buf, size_t len);
};

#define LSWLOOP_READ_ONLY	0x1

/* State version 1 (lswloop_v1): one contiguous window of the file. */
struct lswloop_state_v1 {
	struct file *backing;		/* the importer takes its own reference */
	loff_t offset;			/* of sector 0 in the file */
	loff_t size;			/* bytes */
	u32 flags;
	u32 pad;
	u64 reads;			/* requests */
	u64 writes;
};

/* State version 2 (lswloop_v2): an extent map and per-direction statistics. */
struct lswloop_extent {
	sector_t start;			/* first device sector */
	sector_t sectors;
	loff_t file_pos;		/* where it lives in the file */
};

struct lswloop_stats {
	u64 read_reqs;
	u64 write_reqs;
	u64 read_bytes;
	u64 write_bytes;
	u64 flushes;
	u64 errors;
};

#define LSWLOOP_MAX_EXTENTS 16

struct lswloop_state_v2 {
	struct file *backing;		/* the importer takes its own reference */
	u32 flags;
	u32 nr_extents;
	struct lswloop_extent extents[LSWLOOP_MAX_EXTENTS];
	struct lswloop_stats stats;
};

/*
 * Shared by both implementations: open a new device's backing file and
 * report its usable size (whole sectors). Only a non-empty regular file is
 * accepted: a block device (an lswloop one included) is refused, so a
 * device can never be backed by itself or by a device stacked on it.
 */
static __always_inline struct file *lswloop_open_backing(const char *path, loff_t *size)
{
	struct file *file = filp_open(path, O_RDWR | O_LARGEFILE, 0);

	if (IS_ERR(file))
		return file;
	if (!S_ISREG(file_inode(file)->i_mode)) {
		pr_warn("%s: not a regular file\n", path);
		fput(file);
		return ERR_PTR(-EINVAL);
	}
	*size = round_down(i_size_read(file_inode(file)), SECTOR_SIZE);
	if (!*size) {
		pr_warn("%s: empty (the device size is the file's size)\n", path);
		fput(file);
		return ERR_PTR(-EINVAL);
	}
	return file;
}

/*
 * Shared by both implementations: one bvec-at-a-time file I/O (the front
 * runs queue_rq with memalloc_noio). Always inlined: an out-of-line copy of
 * a static inline function is notrace, and loopswap refuses to swap a
 * module with code its probes cannot see.
 */
static __always_inline blk_status_t lswloop_file_rw(struct file *file, struct request *rq, loff_t pos)
{
	struct req_iterator iter;
	struct bio_vec bvec;
	struct iov_iter i;
	ssize_t done;
	bool write = req_op(rq) == REQ_OP_WRITE;

	rq_for_each_segment(bvec, rq, iter) {
		iov_iter_bvec(&i, write ? ITER_SOURCE : ITER_DEST, &bvec, 1, bvec.bv_len);
		if (write)
			done = vfs_iter_write(file, &i, &pos, 0);
		else
			done = vfs_iter_read(file, &i, &pos, 0);
		if (done != bvec.bv_len) {
			if (done >= 0 && !write) {
				/* Past the file's end reads as zeros. */
				iov_iter_zero(bvec.bv_len - done, &i);
				pos += bvec.bv_len - done;
				continue;
			}
			return BLK_STS_IOERR;
		}
	}
	if (write && (rq->cmd_flags & REQ_FUA) && vfs_fsync(file, 1))
		return BLK_STS_IOERR;
	return BLK_STS_OK;
}

#endif /* _LSWLOOP_H */
