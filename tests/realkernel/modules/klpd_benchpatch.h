/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A bench livepatch bench_<s>__<object> (bench/boot_converge.py): three series (x, y, z),
 * each for vmlinux (cmdline_proc_show) and klpd_bench1..3 (klpd_bench_value). Each .c
 * defines KLPD_BENCH_SERIES ("x"), KLPD_OBJECT (NULL for vmlinux), KLPD_OLD_FUNC and
 * KLPD_REPLACE (its facts, which tests/realkernel/test_inspect_modules.py reads) and, for
 * vmlinux, KLPD_BENCH_VMLINUX, then includes this.
 */
#include <linux/seq_file.h>

#ifdef KLPD_BENCH_VMLINUX
static int klpd_bench_new(struct seq_file *m, void *v)
{
	seq_puts(m, "bench_" KLPD_BENCH_SERIES "-vmlinux\n");
	return 0;
}
#else
static const char *klpd_bench_new(void)
{
	return "bench_" KLPD_BENCH_SERIES "\n";
}
#endif
#define KLPD_NEW_FUNC klpd_bench_new
#include "klpd_testpatch.h"

MODULE_DESCRIPTION("klpd bench livepatch");
MODULE_INFO(klpd_series, "bench_" KLPD_BENCH_SERIES);
MODULE_INFO(klpd_version, "1");
MODULE_INFO(klpd_cve, "CVE-2026-0100");
