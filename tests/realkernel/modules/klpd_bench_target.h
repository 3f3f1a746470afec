/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A bench target (bench/boot_converge.py): klpd_bench1..3 are this file under three names.
 * /proc/<name> reads what klpd_bench_value() returns ("original" until a livepatch replaces
 * it). Nothing else: the bench only needs objects to patch.
 */
#include <linux/module.h>
#include <linux/proc_fs.h>
#include <linux/seq_file.h>

noinline const char *klpd_bench_value(void)
{
	return "original\n";
}

static int klpd_bench_show(struct seq_file *m, void *v)
{
	seq_puts(m, klpd_bench_value());
	return 0;
}

static int __init klpd_bench_init(void)
{
	return proc_create_single(KBUILD_MODNAME, 0444, NULL, klpd_bench_show) ? 0 : -ENOMEM;
}

static void __exit klpd_bench_exit(void)
{
	remove_proc_entry(KBUILD_MODNAME, NULL);
}

module_init(klpd_bench_init);
module_exit(klpd_bench_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klpd bench target: /proc/<name> reads klpd_bench_value()");
