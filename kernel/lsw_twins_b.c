// SPDX-License-Identifier: GPL-2.0
/*
 * lsw_twins - a fixture for loopswap watch: at load it parks one kernel
 * thread in each of two static functions that share the name twin_hold()
 * (one per source file, so the kernel refuses "lsw_twins:twin_hold" as
 * ambiguous) and one in twin_hidden(), which is notrace (ftrace cannot hook
 * it, and kprobes refuse it). They leave when the module is removed.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/err.h>
#include <linux/kthread.h>
#include <linux/module.h>
#include <linux/wait.h>

#include "lsw_twins.h"

static DECLARE_WAIT_QUEUE_HEAD(twins_wq);
static struct task_struct *twins[3];

int lsw_twins_wait(void)
{
	/* Interruptible: kthreads take no signals, and it is no hung task. */
	wait_event_interruptible(twins_wq, kthread_should_stop());
	return 0;
}

static noinline int twin_hold(void)
{
	int ret = lsw_twins_wait();

	barrier();
	return ret;
}

static noinline notrace int twin_hidden(void)
{
	int ret = lsw_twins_wait();

	barrier();
	return ret;
}

static int thread_b(void *data)
{
	int ret = twin_hold();

	barrier();
	return ret;
}

static int thread_hidden(void *data)
{
	int ret = twin_hidden();

	barrier();
	return ret;
}

static int __init lsw_twins_init(void)
{
	int (*fns[])(void *) = { lsw_twins_thread_a, thread_b, thread_hidden };
	int i;

	for (i = 0; i < ARRAY_SIZE(twins); i++) {
		twins[i] = kthread_run(fns[i], NULL, "lsw_twins/%d", i);
		if (IS_ERR(twins[i])) {
			int ret = PTR_ERR(twins[i]);

			while (i--)
				kthread_stop(twins[i]);
			return ret;
		}
	}
	return 0;
}

static void __exit lsw_twins_exit(void)
{
	int i;

	for (i = 0; i < ARRAY_SIZE(twins); i++)
		kthread_stop(twins[i]);
}

module_init(lsw_twins_init);
module_exit(lsw_twins_exit);
MODULE_DESCRIPTION("loopswap test fixture: same-named static functions and a notrace one");
MODULE_LICENSE("GPL");
