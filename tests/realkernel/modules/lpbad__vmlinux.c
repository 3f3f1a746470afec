// SPDX-License-Identifier: GPL-2.0
/* lpbad__vmlinux: /proc/cmdline reads "lpbad-vmlinux" while this livepatch is active. */
#include <linux/seq_file.h>

static int klpd_new_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_puts(m, "lpbad-vmlinux\n");
	return 0;
}

#define KLPD_OBJECT NULL
#define KLPD_OLD_FUNC "cmdline_proc_show"
#define KLPD_NEW_FUNC klpd_new_cmdline_proc_show
#define KLPD_REPLACE false
#include "klpd_testpatch.h"

MODULE_DESCRIPTION("klpd test livepatch lpbad v1 for vmlinux: cmdline_proc_show -> \"lpbad-vmlinux\"");
MODULE_INFO(klpd_series, "lpbad");
MODULE_INFO(klpd_version, "1");
MODULE_INFO(klpd_cve, "CVE-2026-0006");
