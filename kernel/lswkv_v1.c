// SPDX-License-Identifier: GPL-2.0
/*
 * lswkv_v1.c - lswkv implementation 1: the pairs in a flat table.
 *
 * Exports state version 1; imports versions 1 and 2 (dropping v2's write
 * counts).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/string.h>

#include "lswkv.h"

struct lswkv_v1 {
	struct lsw_state_hdr hdr;
	spinlock_t lock;		/* guards count and pairs */
	u32 count;
	struct lswkv_pair pairs[LSWKV_MAX_PAIRS];
};

static struct lswkv_v1 *to_v1(struct lsw_state_hdr *hdr)
{
	return container_of(hdr, struct lswkv_v1, hdr);
}

int lswkv_v1_set(struct lsw_instance *inst, struct lsw_state_hdr *hdr, const char *key,
		 const char *value);
size_t lswkv_v1_dump(struct lsw_instance *inst, struct lsw_state_hdr *hdr, char *buf, size_t len);

int lswkv_v1_set(struct lsw_instance *inst, struct lsw_state_hdr *hdr, const char *key,
		 const char *value)
{
	struct lswkv_v1 *s = to_v1(hdr);
	int ret = 0;
	u32 i;

	if (!lsw_state_enter(hdr))
		return -EIO;
	spin_lock(&s->lock);
	for (i = 0; i < s->count; i++)
		if (!strcmp(s->pairs[i].key, key))
			break;
	if (i == LSWKV_MAX_PAIRS) {
		ret = -ENOSPC;
	} else {
		if (i == s->count)
			strscpy(s->pairs[s->count++].key, key, LSWKV_KEY_LEN);
		strscpy(s->pairs[i].value, value, LSWKV_VALUE_LEN);
	}
	spin_unlock(&s->lock);
	lsw_state_exit(hdr);
	return ret;
}
EXPORT_SYMBOL_GPL(lswkv_v1_set);

size_t lswkv_v1_dump(struct lsw_instance *inst, struct lsw_state_hdr *hdr, char *buf, size_t len)
{
	struct lswkv_v1 *s = to_v1(hdr);
	size_t need = 0;
	u32 i;

	if (!lsw_state_enter(hdr))
		return 0;
	spin_lock(&s->lock);
	for (i = 0; i < s->count; i++)
		need += snprintf(need < len ? buf + need : NULL, need < len ? len - need : 0,
				 "%s=%s\n", s->pairs[i].key, s->pairs[i].value);
	spin_unlock(&s->lock);
	lsw_state_exit(hdr);
	return need;
}
EXPORT_SYMBOL_GPL(lswkv_v1_dump);

static struct lswkv_v1 *v1_alloc(void)
{
	struct lswkv_v1 *s = kvzalloc(sizeof(*s), GFP_KERNEL);

	if (s)
		spin_lock_init(&s->lock);
	return s;
}

static struct lsw_state_hdr *v1_create(struct lsw_instance *inst, const char *arg)
{
	struct lswkv_v1 *s = v1_alloc();

	return s ? &s->hdr : ERR_PTR(-ENOMEM);
}

static void v1_destroy(struct lsw_instance *inst, struct lsw_state_hdr *hdr)
{
	kvfree(to_v1(hdr));
}

static int v1_export(struct lsw_instance *inst, struct lsw_state_hdr *hdr, struct lsw_state *out)
{
	struct lswkv_v1 *s = to_v1(hdr);
	struct lswkv_state_v1 *blob;

	blob = kvzalloc(struct_size(blob, pairs, s->count), GFP_KERNEL);
	if (!blob)
		return -ENOMEM;
	blob->count = s->count;
	memcpy(blob->pairs, s->pairs, flex_array_size(blob, pairs, s->count));
	out->version = 1;
	out->size = struct_size(blob, pairs, s->count);
	out->data = blob;
	return 0;
}

static bool v1_can_import(u32 version)
{
	return version == 1 || version == 2;
}

static struct lsw_state_hdr *v1_import(struct lsw_instance *inst, const struct lsw_state *in)
{
	struct lswkv_v1 *s;
	u32 i;

	if (!v1_can_import(in->version))
		return ERR_PTR(-EPROTO);
	s = v1_alloc();
	if (!s)
		return ERR_PTR(-ENOMEM);
	if (in->version == 1) {
		const struct lswkv_state_v1 *v1 = in->data;

		if (v1->count > LSWKV_MAX_PAIRS) {
			kvfree(s);
			return ERR_PTR(-ENOSPC);
		}
		s->count = v1->count;
		memcpy(s->pairs, v1->pairs, flex_array_size(v1, pairs, s->count));
	} else {
		const struct lswkv_state_v2 *v2 = in->data;

		if (v2->count > LSWKV_MAX_PAIRS) {
			kvfree(s);
			return ERR_PTR(-ENOSPC);
		}
		s->count = v2->count;
		for (i = 0; i < v2->count; i++)
			s->pairs[i] = v2->entries[i].pair;
	}
	return &s->hdr;
}

static const struct lsw_impl_ops v1_ops = {
	.create = v1_create,
	.destroy = v1_destroy,
	.export_state = v1_export,
	.can_import = v1_can_import,
	.import_state = v1_import,
};

static const struct lswkv_ops v1_class_ops = {
	.set = lswkv_v1_set,
	.dump = lswkv_v1_dump,
};

static struct lsw_impl v1_impl = {
	.class_name = LSWKV_CLASS,
	.name = KBUILD_MODNAME,
	.version = 1,
	.state_version = 1,
	.ops = &v1_ops,
	.class_ops = &v1_class_ops,
	.owner = THIS_MODULE,
};

static int __init lswkv_v1_init(void)
{
	return lsw_impl_register(&v1_impl);
}

static void __exit lswkv_v1_exit(void)
{
	lsw_impl_unregister(&v1_impl);
}

module_init(lswkv_v1_init);
module_exit(lswkv_v1_exit);
MODULE_DESCRIPTION("lswkv implementation v1: a flat table");
MODULE_LICENSE("GPL");
MODULE_INFO(lsw_class, LSWKV_CLASS);
MODULE_INFO(lsw_version, "1");
MODULE_INFO(lsw_state_version, "1");
MODULE_INFO(lsw_imports, "1,2");
