/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A bench livepatch bench_<s>__<object> (bench/boot_converge.py): three series (x, y, z),
 * each for vmlinux (cmdline_proc_show) and klpd_bench1..3 (klpd_bench_value). Define
 * KLPD_BENCH_SERIES ("x") and KLPD_OBJECT (NULL for vmlinux) before including it.
 */
#include <linux/seq_file.h>

#ifdef KLPD_BENCH_VMLINUX
static int klpd_bench_new(struct seq_file *m, void *v)
{
	seq_puts(m, "bench_" KLPD_BENCH_SERIES "-vmlinux\n");
	return 0;
}
#define KLPD_OLD_FUNC "cmdline_proc_show"
#else
static const char *klpd_bench_new(void)
{
	return "bench_" KLPD_BENCH_SERIES "\n";
}
#define KLPD_OLD_FUNC "klpd_bench_value"
#endif
#define KLPD_NEW_FUNC klpd_bench_new
#define KLPD_REPLACE false
#include "klpd_testpatch.h"

MODULE_DESCRIPTION("klpd bench livepatch");
MODULE_INFO(klpd_series, "bench_" KLPD_BENCH_SERIES);
MODULE_INFO(klpd_version, "1");
MODULE_INFO(klpd_cve, "CVE-2026-0100");
