// SPDX-License-Identifier: GPL-2.0
/*
 * klpd_target - a module for livepatches to patch in klpd's real-kernel tests.
 *
 * /proc/klpd_target        read: the string klpd_target_value() returns
 *                          ("original\n" until a livepatch replaces it).
 * /proc/klpd_target_sleep  write "sleep":  the writer sleeps (killable) inside
 *                                          klpd_target_sleep() until "wake";
 *                                          a livepatch transition that patches
 *                                          klpd_target_sleep() stalls meanwhile.
 *                          write "sleepi": same, interruptible: the kernel's
 *                                          fake signal (15 s into a stalled
 *                                          transition) ends the sleep.
 *                          write "wake":   wakes every sleeper.
 *                          read:           number of current sleepers.
 *
 * Both functions are global and noinline so that livepatch can find and
 * redirect them (kallsyms + ftrace); CONFIG_LIVEPATCH builds add
 * -flive-patching=inline-clone so gcc does not clone them either.
 */
#include <linux/atomic.h>
#include <linux/delay.h>
#include <linux/module.h>
#include <linux/proc_fs.h>
#include <linux/seq_file.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/wait.h>

static unsigned int init_delay_ms;
module_param(init_delay_ms, uint, 0444);
MODULE_PARM_DESC(init_delay_ms, "sleep this long in init (shows whether the add uevent waits for init)");

static DECLARE_WAIT_QUEUE_HEAD(klpd_target_wq);
static atomic_t klpd_target_wake_generation = ATOMIC_INIT(0);
static atomic_t klpd_target_sleepers = ATOMIC_INIT(0);

noinline const char *klpd_target_value(void)
{
	return "original\n";
}

noinline int klpd_target_sleep(bool interruptible)
{
	int generation = atomic_read(&klpd_target_wake_generation);
	int ret;

	atomic_inc(&klpd_target_sleepers);
	if (interruptible)
		ret = wait_event_interruptible(klpd_target_wq,
			atomic_read(&klpd_target_wake_generation) != generation);
	else
		ret = wait_event_killable(klpd_target_wq,
			atomic_read(&klpd_target_wake_generation) != generation);
	atomic_dec(&klpd_target_sleepers);
	return ret;
}

static int klpd_target_value_show(struct seq_file *m, void *v)
{
	seq_puts(m, klpd_target_value());
	return 0;
}

static int klpd_target_value_open(struct inode *inode, struct file *file)
{
	return single_open(file, klpd_target_value_show, NULL);
}

static const struct proc_ops klpd_target_value_ops = {
	.proc_open = klpd_target_value_open,
	.proc_read = seq_read,
	.proc_lseek = seq_lseek,
	.proc_release = single_release,
};

static int klpd_target_sleepers_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%d\n", atomic_read(&klpd_target_sleepers));
	return 0;
}

static int klpd_target_sleep_open(struct inode *inode, struct file *file)
{
	return single_open(file, klpd_target_sleepers_show, NULL);
}

static ssize_t klpd_target_sleep_write(struct file *file, const char __user *buf,
				       size_t count, loff_t *ppos)
{
	char cmd[16];
	size_t len = min(count, sizeof(cmd) - 1);
	int ret;

	if (copy_from_user(cmd, buf, len))
		return -EFAULT;
	cmd[len] = '\0';
	strim(cmd);

	if (!strcmp(cmd, "wake")) {
		atomic_inc(&klpd_target_wake_generation);
		wake_up_all(&klpd_target_wq);
		return count;
	}
	if (!strcmp(cmd, "sleep") || !strcmp(cmd, "sleepi")) {
		ret = klpd_target_sleep(!strcmp(cmd, "sleepi"));
		return ret ? ret : count;
	}
	return -EINVAL;
}

static const struct proc_ops klpd_target_sleep_ops = {
	.proc_open = klpd_target_sleep_open,
	.proc_read = seq_read,
	.proc_lseek = seq_lseek,
	.proc_release = single_release,
	.proc_write = klpd_target_sleep_write,
};

static int __init klpd_target_init(void)
{
	/* Start of the unpatched window (bench/unpatched_window.py reads its timestamp). */
	pr_info("klpd_target: init\n");
	if (init_delay_ms)
		msleep(init_delay_ms);
	if (!proc_create("klpd_target", 0444, NULL, &klpd_target_value_ops))
		return -ENOMEM;
	if (!proc_create("klpd_target_sleep", 0666, NULL, &klpd_target_sleep_ops)) {
		remove_proc_entry("klpd_target", NULL);
		return -ENOMEM;
	}
	/* initstate becomes "live" right after: a loader that waits for it logs after this. */
	pr_info("klpd_target: init done\n");
	return 0;
}

static void __exit klpd_target_exit(void)
{
	/* Nobody may still sleep in this module's text once it is gone. */
	atomic_inc(&klpd_target_wake_generation);
	wake_up_all(&klpd_target_wq);
	remove_proc_entry("klpd_target_sleep", NULL);
	remove_proc_entry("klpd_target", NULL);
}

module_init(klpd_target_init);
module_exit(klpd_target_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klpd test target: /proc/klpd_target and a sleep point for stalled transitions");
