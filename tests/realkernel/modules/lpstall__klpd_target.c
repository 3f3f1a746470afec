// SPDX-License-Identifier: GPL-2.0
/*
 * lpstall__klpd_target: patches klpd_target_sleep(). Its transition cannot
 * finish while a task sleeps in the original (write "sleep" to
 * /proc/klpd_target_sleep); it finishes once that task is woken ("wake").
 * The replacement does not sleep: it has no access to the target's wait
 * queue, and a patched sleeper is not needed by the tests.
 */
#include <linux/types.h>

static int klpd_new_target_sleep(bool interruptible)
{
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
