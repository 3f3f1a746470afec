// SPDX-License-Identifier: GPL-2.0
/* lpa__klpd_target: /proc/klpd_target reads "lpa" while this livepatch is active. */
static const char *klpd_new_target_value(void)
{
	return "lpa\n";
}

#define KLPD_OBJECT "klpd_target"
#define KLPD_OLD_FUNC "klpd_target_value"
#define KLPD_NEW_FUNC klpd_new_target_value
#define KLPD_REPLACE false
#include "klpd_testpatch.h"

MODULE_DESCRIPTION("klpd test livepatch lpa v1 for klpd_target: klpd_target_value -> \"lpa\"");
MODULE_INFO(klpd_series, "lpa");
MODULE_INFO(klpd_version, "1");
MODULE_INFO(klpd_cve, "CVE-2026-0001");
