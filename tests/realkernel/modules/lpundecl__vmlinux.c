// SPDX-License-Identifier: GPL-2.0
/*
 * lpundecl__vmlinux: an atomic-replace livepatch that does not say so in its modinfo (no
 * klpd_replace), as the kernel's own klp-build makes them unless built --no-replace.
 * /proc/cmdline reads "lpundecl-vmlinux" while it is active. klpd must refuse it by
 * reading its struct klp_patch.
 */
#include <linux/seq_file.h>

static int klpd_new_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_puts(m, "lpundecl-vmlinux\n");
	return 0;
}

#define KLPD_OBJECT NULL
#define KLPD_OLD_FUNC "cmdline_proc_show"
#define KLPD_NEW_FUNC klpd_new_cmdline_proc_show
#define KLPD_REPLACE true
#include "klpd_testpatch.h"

MODULE_DESCRIPTION("klpd test livepatch lpundecl: an undeclared atomic-replace patch");
