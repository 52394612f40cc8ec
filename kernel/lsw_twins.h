/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lsw_twins.h - a fixture module built from two files, each with a static
 * function named twin_hold(), plus a notrace function: the shapes that
 * defeat probing by name and by ftrace. See lsw_twins_b.c.
 */
#ifndef _LSW_TWINS_H
#define _LSW_TWINS_H

int lsw_twins_wait(void);
int lsw_twins_thread_a(void *data);

#endif /* _LSW_TWINS_H */
