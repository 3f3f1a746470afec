#!/bin/sh
# Scenario "kernel_facts": how the real kernel treats split livepatch modules,
# without klpd. Every step is recorded (lib.sh); the assertions live on the host
# (tests/realkernel/test_realkernel.py) so that a surprise is recorded, not hidden: a plain
# `step` may fail (EBUSY, EINVAL, ... are facts too); a `must` step (waiting for transitions
# and sleepers) failing makes the scenario exit non-zero.
# Step names are the trace's keys: keep them stable.
. "$KLPD_LIB"

read_value() { cat /proc/klpd_target; }
read_cmdline() { cat /proc/cmdline; }
attrs() { find /sys/kernel/livepatch -mindepth 1 -maxdepth 3 | sort; }

# Earlier scenarios of the same boot may have left patches behind.
step baseline.reset reset_livepatches
step baseline.modinfo modinfo lpa_v2__klpd_target
step baseline.modinfo_depends modinfo -F depends lpa__klpd_target
step baseline.cmdline read_cmdline

# --- load order: target, P__vmlinux, P__m ---------------------------------
step target.load modprobe klpd_target
step target.value read_value
# P__m at once after P__vmlinux, while P__vmlinux is (probably) still in transition.
step lpa.load_at_once modprobe_at_once lpa__vmlinux lpa__klpd_target
lpa_busy=$?
must lpa.vmlinux.wait wait_transitions 30
step lpa.vmlinux.cmdline read_cmdline
if [ "$lpa_busy" != 0 ]; then
	step lpa.target.load modprobe lpa__klpd_target
fi
must lpa.target.wait wait_transitions 30
step lpa.target.value read_value
step lpa.attrs attrs

# --- a second patch series on the same objects stacks on top ----------------
step lpb.vmlinux.load modprobe lpb__vmlinux
must lpb.vmlinux.wait wait_transitions 30
step lpb.target.load modprobe lpb__klpd_target
must lpb.target.wait wait_transitions 30
step lpb.target.value read_value
step lpb.vmlinux.cmdline read_cmdline

# --- enabled livepatch modules cannot be removed -----------------------------
step lpb.target.rmmod_enabled rmmod lpb__klpd_target
step lpb.target.enable_again sysfs_write 1 /sys/kernel/livepatch/lpb__klpd_target/enabled

# --- the target goes and comes back while its patches stay -------------------
step target.rmmod_patched rmmod klpd_target
step target.reload modprobe klpd_target
step target.reload.value read_value

# --- disable + rmmod, any order (lpb is on top of lpa) ----------------------
step lpa.target.disable_under_lpb sysfs_write 0 /sys/kernel/livepatch/lpa__klpd_target/enabled
must lpa.target.disable_under_lpb.wait wait_transitions 30
step lpa.target.rmmod rmmod lpa__klpd_target
step lpa.target.rmmod.value read_value
step lpb.target.disable sysfs_write 0 /sys/kernel/livepatch/lpb__klpd_target/enabled
must lpb.target.disable.wait wait_transitions 30
step lpb.target.rmmod rmmod lpb__klpd_target
step lpb.target.rmmod.value read_value
step lpb.vmlinux.disable sysfs_write 0 /sys/kernel/livepatch/lpb__vmlinux/enabled
must lpb.vmlinux.disable.wait wait_transitions 30
step lpb.vmlinux.rmmod rmmod lpb__vmlinux
step lpb.vmlinux.rmmod.cmdline read_cmdline

# --- a P__m loaded before its target m --------------------------------------
step target.rmmod_unpatched rmmod klpd_target
step lpa.target.load_without_target modprobe lpa__klpd_target
must lpa.target.load_without_target.wait wait_transitions 30
step target.load_after_patch modprobe klpd_target
step target.load_after_patch.value read_value

# --- cumulative upgrade lpa -> lpa_v2 by stacking, then retiring lpa --------
step lpa_v2.vmlinux.load modprobe lpa_v2__vmlinux
must lpa_v2.vmlinux.wait wait_transitions 30
step lpa_v2.target.load modprobe lpa_v2__klpd_target
must lpa_v2.target.wait wait_transitions 30
step lpa_v2.target.value read_value
step lpa_v2.vmlinux.cmdline read_cmdline
step lpa.retire.target.disable sysfs_write 0 /sys/kernel/livepatch/lpa__klpd_target/enabled
must lpa.retire.target.wait wait_transitions 30
step lpa.retire.target.rmmod rmmod lpa__klpd_target
step lpa.retire.vmlinux.disable sysfs_write 0 /sys/kernel/livepatch/lpa__vmlinux/enabled
must lpa.retire.vmlinux.wait wait_transitions 30
step lpa.retire.vmlinux.rmmod rmmod lpa__vmlinux
step lpa.retire.value read_value
step lpa.retire.cmdline read_cmdline

# --- a broken patch ----------------------------------------------------------
step lpbad.load_with_target modprobe lpbad__klpd_target
step target.rmmod_for_lpbad rmmod klpd_target
step lpbad.load_without_target modprobe lpbad__klpd_target
must lpbad.load_without_target.wait wait_transitions 30
step lpbad.target.load modprobe klpd_target
step lpbad.disable sysfs_write 0 /sys/kernel/livepatch/lpbad__klpd_target/enabled
must lpbad.disable.wait wait_transitions 30
step lpbad.rmmod rmmod lpbad__klpd_target
step target.load_after_lpbad modprobe klpd_target
step target.load_after_lpbad.value read_value

# --- stalled transitions -----------------------------------------------------
# 1) ended by waking the sleeper
sh -c 'echo sleep > /proc/klpd_target_sleep' &
sleeper=$!
must stall1.sleeping wait_sleepers 1
step stall1.load modprobe lpstall__klpd_target
step stall1.stays expect_transition_stays 3
step stall1.task task_state "$sleeper"
step stall1.load_other_busy modprobe lpb__vmlinux
step stall1.rmmod_busy rmmod lpstall__klpd_target
step stall1.wake sysfs_write wake /proc/klpd_target_sleep
must stall1.wake.wait wait_transitions 30
wait "$sleeper"
step stall1.done.task_gone test ! -e "/proc/$sleeper"
step stall1.disable sysfs_write 0 /sys/kernel/livepatch/lpstall__klpd_target/enabled
must stall1.disable.wait wait_transitions 30
step stall1.rmmod rmmod lpstall__klpd_target

# 2) ended by reversing it (writing the opposite value to enabled)
sh -c 'echo sleep > /proc/klpd_target_sleep' &
sleeper=$!
must stall2.sleeping wait_sleepers 1
step stall2.load modprobe lpstall__klpd_target
step stall2.stays expect_transition_stays 2
step stall2.reverse sysfs_write 0 /sys/kernel/livepatch/lpstall__klpd_target/enabled
must stall2.reverse.wait wait_transitions 30
step stall2.rmmod rmmod lpstall__klpd_target
step stall2.wake sysfs_write wake /proc/klpd_target_sleep
wait "$sleeper"

# 3) interruptible sleeper: the kernel's fake signal ends it by itself
sh -c 'echo sleepi > /proc/klpd_target_sleep' &
sleeper=$!
must stall3.sleeping wait_sleepers 1
step stall3.load modprobe lpstall__klpd_target
step stall3.task task_state "$sleeper"
must stall3.wait_fake_signal wait_transitions 40
step stall3.sleepers_after sleepers
step stall3.disable sysfs_write 0 /sys/kernel/livepatch/lpstall__klpd_target/enabled
must stall3.disable.wait wait_transitions 30
step stall3.rmmod rmmod lpstall__klpd_target
sysfs_write wake /proc/klpd_target_sleep
wait "$sleeper"

# --- atomic replace ----------------------------------------------------------
step rep.pre.lpa_v2.value read_value
step rep.pre.lpb.vmlinux.load modprobe lpb__vmlinux
must rep.pre.lpb.vmlinux.wait wait_transitions 30
step rep.load modprobe lprep__vmlinux
must rep.wait wait_transitions 30
step rep.value read_value
step rep.cmdline read_cmdline
step rep.rmmod.lpa_v2.target rmmod lpa_v2__klpd_target
step rep.rmmod.lpa_v2.vmlinux rmmod lpa_v2__vmlinux
step rep.rmmod.lpb.vmlinux rmmod lpb__vmlinux
step rep.disable sysfs_write 0 /sys/kernel/livepatch/lprep__vmlinux/enabled
must rep.disable.wait wait_transitions 30
step rep.rmmod rmmod lprep__vmlinux
step rep.after.cmdline read_cmdline

# --- uevents, names -----------------------------------------------------------------------
step uevent.target.rmmod rmmod klpd_target
# init sleeps 1 s: a uevent sent before init would find initstate "coming"
step uevent.initstate initstate_at_add klpd_target init_delay_ms=1000
step uevent.patch_load uevents_during modprobe lpb__vmlinux
must uevent.patch_wait wait_transitions 30
step uevent.patch_disable uevents_during sysfs_write 0 /sys/kernel/livepatch/lpb__vmlinux/enabled
must uevent.patch_disable.wait wait_transitions 30
step uevent.patch_rmmod uevents_during rmmod lpb__vmlinux
step names.dashes modprobe lpb--vmlinux
must names.dashes.wait wait_transitions 30
step names.dashes.disable sysfs_write 0 /sys/kernel/livepatch/lpb__vmlinux/enabled
must names.dashes.disable.wait wait_transitions 30
step names.dashes.rmmod rmmod lpb-_vmlinux

# --- force: ends a stalled transition, the module stays forever ---------------
sh -c 'echo sleep > /proc/klpd_target_sleep' &
sleeper=$!
must force.sleeping wait_sleepers 1
step force.load modprobe lpstall__klpd_target
step force.stays expect_transition_stays 2
step force.force sysfs_write 1 /sys/kernel/livepatch/lpstall__klpd_target/force
must force.wait wait_transitions 30
step force.wake sysfs_write wake /proc/klpd_target_sleep
wait "$sleeper"
step force.disable sysfs_write 0 /sys/kernel/livepatch/lpstall__klpd_target/enabled
must force.disable.wait wait_transitions 30
step force.rmmod rmmod lpstall__klpd_target

# --- force on an unpatching transition: the forced patch's module stays forever ----------
# (last: what it leaves behind cannot be cleaned up). Before 5.18 forcing marks every patch
# forced, the patching one above included: lpstall__klpd_target is then still loaded and the
# section below cannot run; the step says so.
step forceun.other.load modprobe lpb__vmlinux
must forceun.other.wait wait_transitions 30
step forceun.target.load modprobe klpd_target
if grep -q '^lpstall__klpd_target ' /proc/modules; then
	step forceun.pinned_before grep '^lpstall__klpd_target ' /proc/modules
else
	step forceun.load modprobe lpstall__klpd_target hold=1
	must forceun.load.wait wait_transitions 30
	sh -c 'echo sleep > /proc/klpd_target_sleep' &
	sleeper=$!
	must forceun.sleeping wait_stack "$sleeper" klpd_new_target_sleep
	step forceun.disable sysfs_write 0 /sys/kernel/livepatch/lpstall__klpd_target/enabled
	step forceun.stays expect_transition_stays 2
	step forceun.task task_state "$sleeper"
	step forceun.force sysfs_write 1 /sys/kernel/livepatch/lpstall__klpd_target/force
	must forceun.wait wait_transitions 30
	step forceun.rmmod rmmod lpstall__klpd_target
	step forceun.release sysfs_write 0 /sys/module/lpstall__klpd_target/parameters/hold
	wait "$sleeper"
	step forceun.rmmod_released rmmod lpstall__klpd_target
fi
step forceun.other.disable sysfs_write 0 /sys/kernel/livepatch/lpb__vmlinux/enabled
must forceun.other.disable.wait wait_transitions 30
step forceun.other.rmmod rmmod lpb__vmlinux
finish
