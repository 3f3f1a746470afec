// SPDX-License-Identifier: GPL-2.0
/* lpb__klpd_target: /proc/klpd_target reads "lpb" while this livepatch is active. */
static const char *klpd_new_target_value(void)
{
	return "lpb\n";
}

#define KLPD_OBJECT "klpd_target"
#define KLPD_OLD_FUNC "klpd_target_value"
#define KLPD_NEW_FUNC klpd_new_target_value
#define KLPD_REPLACE false
#include "klpd_testpatch.h"

MODULE_DESCRIPTION("klpd test livepatch lpb v1 for klpd_target: klpd_target_value -> \"lpb\"");
MODULE_INFO(klpd_series, "lpb");
MODULE_INFO(klpd_version, "1");
MODULE_INFO(klpd_cve, "CVE-2026-0002");
