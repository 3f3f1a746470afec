// SPDX-License-Identifier: GPL-2.0
/* lpa__vmlinux: /proc/cmdline reads "lpa-vmlinux" while this livepatch is active. */
#include <linux/seq_file.h>

static int klpd_new_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_puts(m, "lpa-vmlinux\n");
	return 0;
}

#define KLPD_OBJECT NULL
#define KLPD_OLD_FUNC "cmdline_proc_show"
#define KLPD_NEW_FUNC klpd_new_cmdline_proc_show
#define KLPD_REPLACE false
#include "klpd_testpatch.h"

MODULE_DESCRIPTION("klpd test livepatch lpa v1 for vmlinux: cmdline_proc_show -> \"lpa-vmlinux\"");
MODULE_INFO(klpd_series, "lpa");
MODULE_INFO(klpd_version, "1");
MODULE_INFO(klpd_cve, "CVE-2026-0001");
