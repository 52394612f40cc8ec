// SPDX-License-Identifier: GPL-2.0
/*
 * lswkv_v2.c - lswkv implementation 2: the pairs in a hash table, with a
 * count of writes per key (listed as "key=value writes=N").
 *
 * Exports state version 2; imports versions 1 (write counts start at 0)
 * and 2.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/hashtable.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <linux/stringhash.h>

#include "lswkv.h"

struct lswkv_v2_entry {
	struct hlist_node node;
	struct lswkv_pair pair;
	u64 writes;
};

struct lswkv_v2 {
	struct lsw_state_hdr hdr;
	spinlock_t lock;		/* guards count and table */
	u32 count;
	DECLARE_HASHTABLE(table, 6);
};

static struct lswkv_v2 *to_v2(struct lsw_state_hdr *hdr)
{
	return container_of(hdr, struct lswkv_v2, hdr);
}

static __always_inline u32 key_hash(const char *key)
{
	return full_name_hash(NULL, key, strlen(key));
}

static struct lswkv_v2_entry *find(struct lswkv_v2 *s, const char *key)
{
	struct lswkv_v2_entry *entry;

	hash_for_each_possible(s->table, entry, node, key_hash(key))
		if (!strcmp(entry->pair.key, key))
			return entry;
	return NULL;
}

int lswkv_v2_set(struct lsw_instance *inst, struct lsw_state_hdr *hdr, const char *key,
		 const char *value);
size_t lswkv_v2_dump(struct lsw_instance *inst, struct lsw_state_hdr *hdr, char *buf, size_t len);

int lswkv_v2_set(struct lsw_instance *inst, struct lsw_state_hdr *hdr, const char *key,
		 const char *value)
{
	struct lswkv_v2 *s = to_v2(hdr);
	struct lswkv_v2_entry *entry, *spare;
	int ret = 0;

	if (!lsw_state_enter(hdr))
		return -EIO;
	/* Allocated before the lock, freed if the key exists. */
	spare = kzalloc(sizeof(*spare), GFP_KERNEL);
	spin_lock(&s->lock);
	entry = find(s, key);
	if (!entry && (!spare || s->count == LSWKV_MAX_PAIRS)) {
		ret = spare ? -ENOSPC : -ENOMEM;
	} else {
		if (!entry) {
			entry = spare;
			spare = NULL;
			strscpy(entry->pair.key, key, LSWKV_KEY_LEN);
			hash_add(s->table, &entry->node, key_hash(key));
			s->count++;
		}
		strscpy(entry->pair.value, value, LSWKV_VALUE_LEN);
		entry->writes++;
	}
	spin_unlock(&s->lock);
	kfree(spare);
	lsw_state_exit(hdr);
	return ret;
}
EXPORT_SYMBOL_GPL(lswkv_v2_set);

size_t lswkv_v2_dump(struct lsw_instance *inst, struct lsw_state_hdr *hdr, char *buf, size_t len)
{
	struct lswkv_v2 *s = to_v2(hdr);
	struct lswkv_v2_entry *entry;
	size_t need = 0;
	int bucket;

	if (!lsw_state_enter(hdr))
		return 0;
	spin_lock(&s->lock);
	hash_for_each(s->table, bucket, entry, node)
		need += snprintf(need < len ? buf + need : NULL, need < len ? len - need : 0,
				 "%s=%s writes=%llu\n", entry->pair.key, entry->pair.value,
				 entry->writes);
	spin_unlock(&s->lock);
	lsw_state_exit(hdr);
	return need;
}
EXPORT_SYMBOL_GPL(lswkv_v2_dump);

static struct lswkv_v2 *v2_alloc(void)
{
	struct lswkv_v2 *s = kzalloc(sizeof(*s), GFP_KERNEL);

	if (s) {
		spin_lock_init(&s->lock);
		hash_init(s->table);
	}
	return s;
}

static struct lsw_state_hdr *v2_create(struct lsw_instance *inst, const char *arg)
{
	struct lswkv_v2 *s = v2_alloc();

	return s ? &s->hdr : ERR_PTR(-ENOMEM);
}

static void v2_destroy(struct lsw_instance *inst, struct lsw_state_hdr *hdr)
{
	struct lswkv_v2 *s = to_v2(hdr);
	struct lswkv_v2_entry *entry;
	struct hlist_node *tmp;
	int bucket;

	hash_for_each_safe(s->table, bucket, tmp, entry, node)
		kfree(entry);
	kfree(s);
}

static int v2_export(struct lsw_instance *inst, struct lsw_state_hdr *hdr, struct lsw_state *out)
{
	struct lswkv_v2 *s = to_v2(hdr);
	struct lswkv_v2_entry *entry;
	struct lswkv_state_v2 *blob;
	u32 i = 0;
	int bucket;

	blob = kvzalloc(struct_size(blob, entries, s->count), GFP_KERNEL);
	if (!blob)
		return -ENOMEM;
	hash_for_each(s->table, bucket, entry, node) {
		blob->entries[i].pair = entry->pair;
		blob->entries[i].writes = entry->writes;
		i++;
	}
	blob->count = i;
	out->version = 2;
	out->size = struct_size(blob, entries, i);
	out->data = blob;
	return 0;
}

static bool v2_can_import(u32 version)
{
	return version == 1 || version == 2;
}

static int v2_add(struct lswkv_v2 *s, const struct lswkv_pair *pair, u64 writes)
{
	struct lswkv_v2_entry *entry = kzalloc(sizeof(*entry), GFP_KERNEL);

	if (!entry)
		return -ENOMEM;
	entry->pair = *pair;
	entry->writes = writes;
	hash_add(s->table, &entry->node, key_hash(pair->key));
	s->count++;
	return 0;
}

static struct lsw_state_hdr *v2_import(struct lsw_instance *inst, const struct lsw_state *in)
{
	struct lswkv_v2 *s;
	int ret = 0;
	u32 i;

	if (!v2_can_import(in->version))
		return ERR_PTR(-EPROTO);
	s = v2_alloc();
	if (!s)
		return ERR_PTR(-ENOMEM);
	if (in->version == 1) {
		const struct lswkv_state_v1 *v1 = in->data;

		for (i = 0; i < v1->count && !ret; i++)
			ret = v2_add(s, &v1->pairs[i], 0);
	} else {
		const struct lswkv_state_v2 *v2 = in->data;

		for (i = 0; i < v2->count && !ret; i++)
			ret = v2_add(s, &v2->entries[i].pair, v2->entries[i].writes);
	}
	if (ret) {
		v2_destroy(inst, &s->hdr);
		return ERR_PTR(ret);
	}
	return &s->hdr;
}

static const struct lsw_impl_ops v2_ops = {
	.create = v2_create,
	.destroy = v2_destroy,
	.export_state = v2_export,
	.can_import = v2_can_import,
	.import_state = v2_import,
};

static const struct lswkv_ops v2_class_ops = {
	.set = lswkv_v2_set,
	.dump = lswkv_v2_dump,
};

static struct lsw_impl v2_impl = {
	.class_name = LSWKV_CLASS,
	.name = KBUILD_MODNAME,
	.version = 2,
	.state_version = 2,
	.ops = &v2_ops,
	.class_ops = &v2_class_ops,
	.owner = THIS_MODULE,
};

static int __init lswkv_v2_init(void)
{
	return lsw_impl_register(&v2_impl);
}

static void __exit lswkv_v2_exit(void)
{
	lsw_impl_unregister(&v2_impl);
}

module_init(lswkv_v2_init);
module_exit(lswkv_v2_exit);
MODULE_DESCRIPTION("lswkv implementation v2: a hash table with write counts");
MODULE_LICENSE("GPL");
MODULE_INFO(lsw_class, LSWKV_CLASS);
MODULE_INFO(lsw_version, "2");
MODULE_INFO(lsw_state_version, "2");
MODULE_INFO(lsw_imports, "1,2");
