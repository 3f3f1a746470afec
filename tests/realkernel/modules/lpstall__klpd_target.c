// SPDX-License-Identifier: GPL-2.0
/*
 * lpstall__klpd_target: patches klpd_target_sleep(). Its patching transition
 * cannot finish while a task sleeps in the original (write "sleep" to
 * /proc/klpd_target_sleep); it finishes once that task is woken ("wake").
 *
 * The replacement returns at once, unless the parameter "hold" is set: then
 * a task entering it stays there until "hold" is cleared
 * (/sys/module/lpstall__klpd_target/parameters/hold), which stalls the
 * unpatching transition instead.
 */
#include <linux/delay.h>
#include <linux/moduleparam.h>
#include <linux/sched/signal.h>
#include <linux/types.h>

static bool hold;
module_param(hold, bool, 0644);
MODULE_PARM_DESC(hold, "tasks entering the new klpd_target_sleep() stay there while set");

static int klpd_new_target_sleep(bool interruptible)
{
	while (READ_ONCE(hold) && !fatal_signal_pending(current))
		msleep(20);
	return 0;
}

#define KLPD_OBJECT "klpd_target"
#define KLPD_OLD_FUNC "klpd_target_sleep"
#define KLPD_NEW_FUNC klpd_new_target_sleep
#define KLPD_REPLACE false
#include "klpd_testpatch.h"

MODULE_DESCRIPTION("klpd test livepatch lpstall v1 for klpd_target: klpd_target_sleep -> no sleep");
MODULE_INFO(klpd_series, "lpstall");
MODULE_INFO(klpd_version, "1");
MODULE_INFO(klpd_cve, "CVE-2026-0005");
