#!/bin/sh
# Scenario "klpd_failures": klpd meets a stalled transition and a broken patch module.
# A task sleeps in klpd_target_sleep() before klpd starts; klpd must load lpstall__vmlinux,
# lpbad__vmlinux, then lpstall__klpd_target (stalls; on_stall = "revert" after 5 s) and
# lpbad__klpd_target (fails EINVAL), report both, and leave the rest working.
. "$KLPD_LIB"
. "$(dirname "$KLPD_LIB")/services.sh"

klpctl() { "$KLPD_REPO/.venv/bin/klpctl" "$@"; }

step reset reset_livepatches
step services.dbus start_dbus
step services.udevd start_udevd
step target.load modprobe klpd_target
sh -c 'echo sleep > /proc/klpd_target_sleep' &
sleeper=$!
step sleeper wait_sleepers 1
step config write_klpd_config /run/klpd-failures.toml \
	'[patches]' 'desired = ["lpstall", "lpbad"]' \
	'[transition]' 'stall_timeout = 5.0' 'on_stall = "revert"'
start_klpd /run/klpd-failures.toml "$KLPD_OUT/klpd.log"
step klpd.mains wait_patches 180 lpstall__vmlinux lpbad__vmlinux
# lpstall__klpd_target is loaded, stalls, is reverted by klpd after stall_timeout.
step klpd.stall.seen wait_stall_seen 60
step klpd.blocking klpctl blocking
step klpd.reverted wait_reverted 60
step klpd.settle sleep 5
step status klpctl --json status
step status.exit klpctl status
step wake sysfs_write wake /proc/klpd_target_sleep
wait "$sleeper"
step stop stop_klpd
exit 0
