// SPDX-License-Identifier: GPL-2.0
/* lprep__vmlinux: /proc/cmdline reads "lprep-vmlinux" while this livepatch is active. */
#include <linux/seq_file.h>

static int klpd_new_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_puts(m, "lprep-vmlinux\n");
	return 0;
}

#define KLPD_OBJECT NULL
#define KLPD_OLD_FUNC "cmdline_proc_show"
#define KLPD_NEW_FUNC klpd_new_cmdline_proc_show
#define KLPD_REPLACE true
#include "klpd_testpatch.h"

MODULE_DESCRIPTION("klpd test livepatch lprep v1 for vmlinux: cmdline_proc_show -> \"lprep-vmlinux\"");
MODULE_INFO(klpd_series, "lprep");
MODULE_INFO(klpd_version, "1");
MODULE_INFO(klpd_cve, "CVE-2026-0004");
/* How klpd recognises a replace module before loading it (klpd/catalog.py). */
MODULE_INFO(klpd_replace, "Y");
