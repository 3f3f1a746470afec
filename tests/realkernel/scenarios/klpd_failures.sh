#!/bin/sh
# Scenario "klpd_failures": klpd meets a stalled transition and a broken patch module.
# A task sleeps in klpd_target_sleep() before klpd starts; klpd must load lpstall__vmlinux,
# lpbad__vmlinux, then lpstall__klpd_target (stalls; on_stall = "revert" after 30 s) and
# lpbad__klpd_target (fails EINVAL), report both, and leave the rest working. stall_timeout
# is 30 s so that `klpctl blocking` (several seconds to start under TCG) sees the stall.
. "$KLPD_LIB"
. "$(dirname "$KLPD_LIB")/services.sh"

klpctl() { "$KLPD_REPO/.venv/bin/klpctl" "$@"; }

step reset reset_livepatches
must services.dbus start_dbus
must services.udevd start_udevd
must target.load modprobe klpd_target
sh -c 'echo sleep > /proc/klpd_target_sleep' &
sleeper=$!
must sleeper wait_sleepers 1
must config write_klpd_config /run/klpd-failures.toml \
	'[patches]' 'desired = ["lpstall", "lpbad"]' \
	'[transition]' 'stall_timeout = 30.0' 'on_stall = "revert"'
start_klpd /run/klpd-failures.toml "$KLPD_OUT/klpd.log"
must klpd.mains wait_patches 180 lpstall__vmlinux lpbad__vmlinux
# lpstall__klpd_target is loaded, stalls, is reverted by klpd after stall_timeout.
must klpd.stall.seen wait_stall_seen 60
must klpd.blocking klpctl blocking
must klpd.reverted wait_reverted 60
must klpd.settle wait_gone 60 lpstall__klpd_target
step status klpctl --json status
step status.exit klpctl status
must wake sysfs_write wake /proc/klpd_target_sleep
wait "$sleeper"
must stop stop_klpd
finish
