// SPDX-License-Identifier: GPL-2.0
/*
 * lpwrong__vmlinux: named for vmlinux, but its klp_patch patches klpd_target. klpd must
 * refuse it: a split module patches exactly the object its name says.
 */
static const char *klpd_new_target_value(void)
{
	return "lpwrong\n";
}

#define KLPD_OBJECT "klpd_target"
#define KLPD_OLD_FUNC "klpd_target_value"
#define KLPD_NEW_FUNC klpd_new_target_value
#define KLPD_REPLACE false
#include "klpd_testpatch.h"

MODULE_DESCRIPTION("klpd test livepatch lpwrong: its object is not the one its name says");
