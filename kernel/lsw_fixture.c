// SPDX-License-Identifier: GPL-2.0
/*
 * lsw_fixture - holds kernel threads inside chosen functions of a module
 *
 * loopswap counts the threads executing inside a module. This module gives
 * its tests something exact to count: threads parked in an exported
 * function, in a static function reached only through a function pointer,
 * in a work item, and a crowd of hundreds in one function, until released.
 * Threads can be parked from module init (before any probe exists) or at
 * any later time through debugfs:
 *
 *   echo "park exported 3" > /sys/kernel/debug/lsw_fixture/control
 *   echo "park indirect 2" > /sys/kernel/debug/lsw_fixture/control
 *   echo "park work 2"     > /sys/kernel/debug/lsw_fixture/control
 *   echo "park crowd 300"  > /sys/kernel/debug/lsw_fixture/control
 *   echo "park spin 1"     > /sys/kernel/debug/lsw_fixture/control
 *   echo release           > /sys/kernel/debug/lsw_fixture/control
 *   echo "bench 2 1000"    > /sys/kernel/debug/lsw_fixture/control
 *   cat /sys/kernel/debug/lsw_fixture/status
 *
 * A "spin" thread busy-waits on its CPU for spin_ms inside its function
 * (its kernel stack cannot be read meanwhile), then waits there like the
 * others. "park" returns once every new thread is inside its function; "release"
 * returns once every parked thread has left the module. "bench N MS" calls
 * an empty exported function in a tight loop from N kthreads for MS
 * milliseconds and reports the number of calls in "status".
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/debugfs.h>
#include <linux/delay.h>
#include <linux/jiffies.h>
#include <linux/kthread.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

static unsigned int park_exported;
module_param(park_exported, uint, 0444);
MODULE_PARM_DESC(park_exported, "threads parked in lsw_fixture_hold_exported() at init");

static unsigned int park_indirect;
module_param(park_indirect, uint, 0444);
MODULE_PARM_DESC(park_indirect, "threads parked in fixture_hold_indirect() at init");

static unsigned int park_work;
module_param(park_work, uint, 0444);
MODULE_PARM_DESC(park_work, "work items parked in fixture_work_fn() at init");

static unsigned int park_crowd;
module_param(park_crowd, uint, 0444);
MODULE_PARM_DESC(park_crowd, "threads parked in lsw_fixture_hold_crowd() at init");

#define FIXTURE_MAX_PARKED 4096
#define FIXTURE_MAX_WORK 256	/* the workqueue's max_active */

static unsigned int spin_ms = 1500;
module_param(spin_ms, uint, 0644);
MODULE_PARM_DESC(spin_ms, "how long a \"spin\" thread stays on its CPU before it sleeps");

enum fixture_kind { KIND_EXPORTED, KIND_INDIRECT, KIND_CROWD, KIND_WORK, KIND_SPIN };

static const char * const kind_names[] = {
	[KIND_EXPORTED] = "exported",
	[KIND_INDIRECT] = "indirect",
	[KIND_CROWD] = "crowd",
	[KIND_WORK] = "work",
	[KIND_SPIN] = "spin",
};

/* A parked thread leaves once release_gen differs from the value it saw. */
static unsigned long release_gen;
static DECLARE_WAIT_QUEUE_HEAD(release_wq);

/* Threads (or work items) currently inside a hold function. */
static atomic_t parked = ATOMIC_INIT(0);
static DECLARE_WAIT_QUEUE_HEAD(parked_wq);

struct parked_thread {
	struct list_head node;
	struct task_struct *task;
	enum fixture_kind kind;
	unsigned long gen;
	int result;
};

struct parked_work {
	struct work_struct work;
	unsigned long gen;
};

static LIST_HEAD(threads);
static DEFINE_MUTEX(control_lock);
static struct workqueue_struct *fixture_wq;
static struct dentry *fixture_dir;

static u64 bench_calls;
static u64 bench_ns;
static unsigned int bench_threads;

int lsw_fixture_hold_exported(unsigned long gen);
int lsw_fixture_hold_crowd(unsigned long gen);
int lsw_fixture_nop(int x);

static void hold_until_released(unsigned long gen)
{
	atomic_inc(&parked);
	wake_up_all(&parked_wq);
	wait_event(release_wq, READ_ONCE(release_gen) != gen);
	atomic_dec(&parked);
}

/* An exported entry point, as other modules would call it. */
noinline int lsw_fixture_hold_exported(unsigned long gen)
{
	hold_until_released(gen);
	return 0;
}
EXPORT_SYMBOL_GPL(lsw_fixture_hold_exported);

/* Hundreds of threads wait here at once: more than kretprobe's maxactive. */
noinline int lsw_fixture_hold_crowd(unsigned long gen)
{
	hold_until_released(gen);
	return 0;
}
EXPORT_SYMBOL_GPL(lsw_fixture_hold_crowd);

/* Not exported: reached only through fixture_ops, like an ops table entry. */
static noinline int fixture_hold_indirect(unsigned long gen)
{
	hold_until_released(gen);
	return 0;
}

/*
 * On its CPU the whole time at first, as a thread computing inside a driver
 * would be: /proc/PID/stack is empty for it until it sleeps.
 */
static noinline int fixture_hold_spinning(unsigned long gen)
{
	unsigned long end = jiffies + msecs_to_jiffies(READ_ONCE(spin_ms));

	atomic_inc(&parked);
	wake_up_all(&parked_wq);
	while (time_before(jiffies, end))
		cpu_relax();
	wait_event(release_wq, READ_ONCE(release_gen) != gen);
	atomic_dec(&parked);
	return 0;
}

struct fixture_ops {
	int (*hold)(unsigned long gen);
};

static const struct fixture_ops indirect_ops = {
	.hold = fixture_hold_indirect,
};

/* READ_ONCE keeps the compiler from turning the call into a direct one. */
static const struct fixture_ops *fixture_ops_ptr = &indirect_ops;

static void fixture_work_fn(struct work_struct *work)
{
	struct parked_work *pw = container_of(work, struct parked_work, work);

	hold_until_released(pw->gen);
	kfree(pw);
}

/* The empty function the probe benchmark calls in a tight loop. */
noinline int lsw_fixture_nop(int x)
{
	barrier();
	return x + 1;
}
EXPORT_SYMBOL_GPL(lsw_fixture_nop);

static int fixture_thread_fn(void *data)
{
	struct parked_thread *pt = data;
	int ret;

	switch (pt->kind) {
	case KIND_EXPORTED:
		ret = lsw_fixture_hold_exported(pt->gen);
		break;
	case KIND_CROWD:
		ret = lsw_fixture_hold_crowd(pt->gen);
		break;
	case KIND_INDIRECT:
		ret = READ_ONCE(fixture_ops_ptr)->hold(pt->gen);
		break;
	case KIND_SPIN:
		ret = fixture_hold_spinning(pt->gen);
		break;
	default:
		ret = -EINVAL;
	}
	/*
	 * Work after the call keeps it from being a tail call, so this frame
	 * stays on the stack: the stack view and the probes' view agree.
	 */
	WRITE_ONCE(pt->result, ret);
	return ret;
}

/* Caller holds control_lock. Returns once all @count are inside. */
static int park(enum fixture_kind kind, unsigned int count)
{
	int target = atomic_read(&parked) + count;
	unsigned long gen = READ_ONCE(release_gen);
	unsigned int i;

	if (count > FIXTURE_MAX_PARKED ||
	    (kind == KIND_WORK && count > FIXTURE_MAX_WORK))
		return -E2BIG;

	for (i = 0; i < count; i++) {
		if (kind == KIND_WORK) {
			struct parked_work *pw = kzalloc(sizeof(*pw), GFP_KERNEL);

			if (!pw)
				return -ENOMEM;
			pw->gen = gen;
			INIT_WORK(&pw->work, fixture_work_fn);
			queue_work(fixture_wq, &pw->work);
		} else {
			struct parked_thread *pt = kzalloc(sizeof(*pt), GFP_KERNEL);
			struct task_struct *task;

			if (!pt)
				return -ENOMEM;
			pt->kind = kind;
			pt->gen = gen;
			task = kthread_create(fixture_thread_fn, pt, "lsw_fixture/%s",
					      kind_names[kind]);
			if (IS_ERR(task)) {
				kfree(pt);
				return PTR_ERR(task);
			}
			pt->task = get_task_struct(task);
			list_add_tail(&pt->node, &threads);
			wake_up_process(task);
		}
	}
	wait_event(parked_wq, atomic_read(&parked) >= target);
	return 0;
}

/* Caller holds control_lock. Returns once every parked thread has left. */
static void release(void)
{
	struct parked_thread *pt, *tmp;

	WRITE_ONCE(release_gen, release_gen + 1);
	wake_up_all(&release_wq);
	list_for_each_entry_safe(pt, tmp, &threads, node) {
		kthread_stop(pt->task);
		put_task_struct(pt->task);
		list_del(&pt->node);
		kfree(pt);
	}
	flush_workqueue(fixture_wq);
}

struct bench_thread {
	unsigned long end;
	u64 calls;
};

static int fixture_bench_thread(void *data)
{
	struct bench_thread *bt = data;
	int x = 0;
	int i;

	while (time_before(jiffies, bt->end)) {
		for (i = 0; i < 1024; i++)
			x = lsw_fixture_nop(x);
		bt->calls += 1024;
		cond_resched();
	}
	while (!kthread_should_stop())
		schedule_timeout_interruptible(1);
	return x;
}

/* Caller holds control_lock. */
static int bench(unsigned int nthreads, unsigned int msecs)
{
	struct bench_thread *bt;
	struct task_struct **tasks;
	unsigned int i;
	ktime_t start;

	if (!nthreads || nthreads > 64 || !msecs || msecs > 60000)
		return -EINVAL;
	bt = kcalloc(nthreads, sizeof(*bt), GFP_KERNEL);
	tasks = kcalloc(nthreads, sizeof(*tasks), GFP_KERNEL);
	if (!bt || !tasks) {
		kfree(bt);
		kfree(tasks);
		return -ENOMEM;
	}
	start = ktime_get();
	for (i = 0; i < nthreads; i++) {
		bt[i].end = jiffies + msecs_to_jiffies(msecs);
		tasks[i] = kthread_run(fixture_bench_thread, &bt[i], "lsw_fixture/bench");
		if (IS_ERR(tasks[i])) {
			tasks[i] = NULL;
			break;
		}
		get_task_struct(tasks[i]);
	}
	msleep(msecs);
	bench_calls = 0;
	for (i = 0; i < nthreads; i++) {
		if (!tasks[i])
			continue;
		kthread_stop(tasks[i]);
		put_task_struct(tasks[i]);
		bench_calls += bt[i].calls;
	}
	bench_ns = ktime_to_ns(ktime_sub(ktime_get(), start));
	bench_threads = nthreads;
	kfree(bt);
	kfree(tasks);
	return 0;
}

static int parse_kind(const char *name, enum fixture_kind *kind)
{
	int i;

	for (i = 0; i < ARRAY_SIZE(kind_names); i++) {
		if (!strcmp(name, kind_names[i])) {
			*kind = i;
			return 0;
		}
	}
	return -EINVAL;
}

static ssize_t control_write(struct file *file, const char __user *ubuf,
			     size_t len, loff_t *ppos)
{
	char buf[64], word[16];
	unsigned int a, b;
	enum fixture_kind kind;
	int ret;

	if (len >= sizeof(buf))
		return -EINVAL;
	if (copy_from_user(buf, ubuf, len))
		return -EFAULT;
	buf[len] = '\0';

	mutex_lock(&control_lock);
	if (sscanf(buf, "park %15s %u", word, &a) == 2) {
		ret = parse_kind(word, &kind);
		if (!ret)
			ret = park(kind, a);
	} else if (sysfs_streq(buf, "release")) {
		release();
		ret = 0;
	} else if (sscanf(buf, "bench %u %u", &a, &b) == 2) {
		ret = bench(a, b);
	} else {
		ret = -EINVAL;
	}
	mutex_unlock(&control_lock);
	return ret ? ret : len;
}

static int status_show(struct seq_file *m, void *unused)
{
	seq_printf(m, "parked %d\n", atomic_read(&parked));
	seq_printf(m, "bench_threads %u\n", bench_threads);
	seq_printf(m, "bench_calls %llu\n", bench_calls);
	seq_printf(m, "bench_ns %llu\n", bench_ns);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(status);

static const struct file_operations control_fops = {
	.owner = THIS_MODULE,
	.write = control_write,
	.llseek = noop_llseek,
};

static int __init lsw_fixture_init(void)
{
	static const struct {
		enum fixture_kind kind;
		unsigned int *count;
	} at_init[] = {
		{ KIND_EXPORTED, &park_exported },
		{ KIND_INDIRECT, &park_indirect },
		{ KIND_WORK, &park_work },
		{ KIND_CROWD, &park_crowd },
	};
	int i, ret;

	fixture_wq = alloc_workqueue("lsw_fixture", WQ_UNBOUND, FIXTURE_MAX_WORK);
	if (!fixture_wq)
		return -ENOMEM;
	fixture_dir = debugfs_create_dir(KBUILD_MODNAME, NULL);
	debugfs_create_file("control", 0200, fixture_dir, NULL, &control_fops);
	debugfs_create_file("status", 0444, fixture_dir, NULL, &status_fops);

	mutex_lock(&control_lock);
	for (i = 0; i < ARRAY_SIZE(at_init); i++) {
		ret = park(at_init[i].kind, *at_init[i].count);
		if (ret) {
			release();
			mutex_unlock(&control_lock);
			debugfs_remove_recursive(fixture_dir);
			destroy_workqueue(fixture_wq);
			return ret;
		}
	}
	mutex_unlock(&control_lock);
	pr_info("loaded, %d parked\n", atomic_read(&parked));
	return 0;
}

static void __exit lsw_fixture_exit(void)
{
	debugfs_remove_recursive(fixture_dir);
	mutex_lock(&control_lock);
	release();
	mutex_unlock(&control_lock);
	destroy_workqueue(fixture_wq);
}

module_init(lsw_fixture_init);
module_exit(lsw_fixture_exit);
MODULE_DESCRIPTION("Threads held inside a module, for loopswap's tests");
MODULE_LICENSE("GPL");
