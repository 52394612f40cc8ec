/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lswkv.h - the lswkv class: a small key/value store behind a character
 * device, whose implementation can be swapped per store. It shows that the
 * swap core is not specific to block devices (see docs/swappable-modules.md).
 *
 * The front (lswkv.ko) owns the misc devices; implementations keep the
 * pairs: lswkv_v1.ko in a flat table, lswkv_v2.ko in a hash table with a
 * write count per key. The exported layouts below are the class's ABI.
 */
#ifndef _LSWKV_H
#define _LSWKV_H

#include "lsw_core.h"

#define LSWKV_CLASS	"lswkv"
#define LSWKV_KEY_LEN	32
#define LSWKV_VALUE_LEN	64
#define LSWKV_MAX_PAIRS	256

/* Entry points of an implementation, called by the front between lsw_enter/exit. */
struct lswkv_ops {
	/* Set key to value (both NUL-terminated, within their lengths). */
	int (*set)(struct lsw_instance *inst, struct lsw_state_hdr *state,
		   const char *key, const char *value);
	/* Write "key=value..." lines into buf; returns the length they need. */
	size_t (*dump)(struct lsw_instance *inst, struct lsw_state_hdr *state,
		       char *buf, size_t len);
};

struct lswkv_pair {
	char key[LSWKV_KEY_LEN];
	char value[LSWKV_VALUE_LEN];
};

/* State version 1 (lswkv_v1): the pairs. */
struct lswkv_state_v1 {
	u32 count;
	u32 pad;
	struct lswkv_pair pairs[];
};

/* State version 2 (lswkv_v2): the pairs and how often each was written. */
struct lswkv_entry_v2 {
	struct lswkv_pair pair;
	u64 writes;
};

struct lswkv_state_v2 {
	u32 count;
	u32 pad;
	struct lswkv_entry_v2 entries[];
};

#endif /* _LSWKV_H */
