/* SPDX-License-Identifier: GPL-2.0 */
/*
 * One upstream livepatch with one object and one function: what every
 * split livepatch module <patch>__<object> of klpd's real-kernel tests is.
 *
 * Before including this header, define:
 *   KLPD_OBJECT    NULL for vmlinux, else the target module's name
 *   KLPD_OLD_FUNC  the name of the function to replace
 *   KLPD_NEW_FUNC  the replacement (defined above the #include)
 *   KLPD_REPLACE   true only for an atomic-replace (cumulative) patch
 *
 * The module does not reference any symbol of KLPD_OBJECT, so it can be
 * loaded before, after and without its target (modinfo depends: empty).
 */
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>

static struct klp_func klpd_testpatch_funcs[] = {
	{
		.old_name = KLPD_OLD_FUNC,
		.new_func = KLPD_NEW_FUNC,
	},
	{ }
};

static struct klp_object klpd_testpatch_objs[] = {
	{
		.name = KLPD_OBJECT,
		.funcs = klpd_testpatch_funcs,
	},
	{ }
};

static struct klp_patch klpd_testpatch = {
	.mod = THIS_MODULE,
	.objs = klpd_testpatch_objs,
	.replace = KLPD_REPLACE,
};

static int __init klpd_testpatch_init(void)
{
	return klp_enable_patch(&klpd_testpatch);
}

static void __exit klpd_testpatch_exit(void)
{
}

module_init(klpd_testpatch_init);
module_exit(klpd_testpatch_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
