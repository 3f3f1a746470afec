// SPDX-License-Identifier: GPL-2.0
/*
 * lpbad__klpd_target: a broken livepatch. It names a function that
 * klpd_target does not have, so klp_enable_patch() fails with -EINVAL while
 * klpd_target is loaded. While klpd_target is absent the patch is accepted
 * (the object is only resolved when the module comes), and then the kernel
 * refuses to load klpd_target instead.
 */
static const char *klpd_new_missing(void)
{
	return "lpbad\n";
}

#define KLPD_OBJECT "klpd_target"
#define KLPD_OLD_FUNC "klpd_target_no_such_function"
#define KLPD_NEW_FUNC klpd_new_missing
#define KLPD_REPLACE false
#include "klpd_testpatch.h"

MODULE_DESCRIPTION("klpd test livepatch lpbad v1 for klpd_target: names a missing function");
MODULE_INFO(klpd_series, "lpbad");
MODULE_INFO(klpd_version, "1");
MODULE_INFO(klpd_cve, "CVE-2026-0006");
