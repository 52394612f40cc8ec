// SPDX-License-Identifier: GPL-2.0
/*
 * lsw_many.c - a module of 2,000 small functions, to show that loopswap
 * watches a large module in one attach (kprobe.multi) and counts every
 * call. Writing 1 to the call_all parameter calls each function once.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>

/* Global and noinline, so the compiler keeps each as a traceable function. */
#define MANY_FN(a, b, c) \
	noinline int lsw_many_##a##b##c(int x); \
	noinline int lsw_many_##a##b##c(int x) { return x + 1; }
#define MANY_FN10(a, b) \
	MANY_FN(a, b, 0) MANY_FN(a, b, 1) MANY_FN(a, b, 2) MANY_FN(a, b, 3) MANY_FN(a, b, 4) \
	MANY_FN(a, b, 5) MANY_FN(a, b, 6) MANY_FN(a, b, 7) MANY_FN(a, b, 8) MANY_FN(a, b, 9)
#define MANY_FN100(a) \
	MANY_FN10(a, 0) MANY_FN10(a, 1) MANY_FN10(a, 2) MANY_FN10(a, 3) MANY_FN10(a, 4) \
	MANY_FN10(a, 5) MANY_FN10(a, 6) MANY_FN10(a, 7) MANY_FN10(a, 8) MANY_FN10(a, 9)

MANY_FN100(0) MANY_FN100(1) MANY_FN100(2) MANY_FN100(3) MANY_FN100(4)
MANY_FN100(5) MANY_FN100(6) MANY_FN100(7) MANY_FN100(8) MANY_FN100(9)
MANY_FN100(a) MANY_FN100(b) MANY_FN100(c) MANY_FN100(d) MANY_FN100(e)
MANY_FN100(f) MANY_FN100(g) MANY_FN100(h) MANY_FN100(i) MANY_FN100(j)

#define MANY_REF(a, b, c) lsw_many_##a##b##c,
#define MANY_REF10(a, b) \
	MANY_REF(a, b, 0) MANY_REF(a, b, 1) MANY_REF(a, b, 2) MANY_REF(a, b, 3) MANY_REF(a, b, 4) \
	MANY_REF(a, b, 5) MANY_REF(a, b, 6) MANY_REF(a, b, 7) MANY_REF(a, b, 8) MANY_REF(a, b, 9)
#define MANY_REF100(a) \
	MANY_REF10(a, 0) MANY_REF10(a, 1) MANY_REF10(a, 2) MANY_REF10(a, 3) MANY_REF10(a, 4) \
	MANY_REF10(a, 5) MANY_REF10(a, 6) MANY_REF10(a, 7) MANY_REF10(a, 8) MANY_REF10(a, 9)

static int (* const many[])(int) = {
	MANY_REF100(0) MANY_REF100(1) MANY_REF100(2) MANY_REF100(3) MANY_REF100(4)
	MANY_REF100(5) MANY_REF100(6) MANY_REF100(7) MANY_REF100(8) MANY_REF100(9)
	MANY_REF100(a) MANY_REF100(b) MANY_REF100(c) MANY_REF100(d) MANY_REF100(e)
	MANY_REF100(f) MANY_REF100(g) MANY_REF100(h) MANY_REF100(i) MANY_REF100(j)
};

static int call_all_set(const char *val, const struct kernel_param *kp)
{
	unsigned int i;
	bool call;
	int ret, sum = 0;

	ret = kstrtobool(val, &call);
	if (ret)
		return ret;
	if (!call)
		return 0;
	for (i = 0; i < ARRAY_SIZE(many); i++)
		sum = many[i](sum);
	pr_info("called %u functions\n", sum);
	return 0;
}

static const struct kernel_param_ops call_all_ops = {
	.set = call_all_set,
};
module_param_cb(call_all, &call_all_ops, NULL, 0200);
MODULE_PARM_DESC(call_all, "write 1: call each of the 2,000 functions once");

MODULE_DESCRIPTION("loopswap test fixture: a module of 2,000 functions");
MODULE_LICENSE("GPL");
