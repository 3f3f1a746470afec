// SPDX-License-Identifier: GPL-2.0
/*
 * lptwo__vmlinux: one upstream livepatch for two objects (vmlinux and klpd_target), not a
 * split module; klpd must refuse it. Its vmlinux function gives old_sympos 1 (the first,
 * here only, cmdline_proc_show), so inspection shows a non-zero sympos.
 */
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

static int lptwo_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_puts(m, "lptwo-vmlinux\n");
	return 0;
}

static const char *lptwo_target_value(void)
{
	return "lptwo\n";
}

static struct klp_func lptwo_vmlinux_funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = lptwo_cmdline_proc_show, .old_sympos = 1 },
	{ }
};

static struct klp_func lptwo_target_funcs[] = {
	{ .old_name = "klpd_target_value", .new_func = lptwo_target_value },
	{ }
};

static struct klp_object lptwo_objs[] = {
	{ .name = NULL, .funcs = lptwo_vmlinux_funcs },
	{ .name = "klpd_target", .funcs = lptwo_target_funcs },
	{ }
};

static struct klp_patch lptwo_patch = {
	.mod = THIS_MODULE,
	.objs = lptwo_objs,
};

static int __init lptwo_init(void)
{
	return klp_enable_patch(&lptwo_patch);
}

static void __exit lptwo_exit(void)
{
}

module_init(lptwo_init);
module_exit(lptwo_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("klpd test livepatch lptwo: two objects in one module (not split)");
