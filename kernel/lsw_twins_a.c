// SPDX-License-Identifier: GPL-2.0
/* One of two static functions named twin_hold(); see lsw_twins_b.c. */

#include <linux/compiler.h>

#include "lsw_twins.h"

static noinline int twin_hold(void)
{
	int ret = lsw_twins_wait();

	/* Not a tail call: this frame stays on the stack. */
	barrier();
	return ret;
}

int lsw_twins_thread_a(void *data)
{
	int ret = twin_hold();

	barrier();
	return ret;
}
