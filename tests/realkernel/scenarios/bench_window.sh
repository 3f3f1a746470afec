#!/bin/sh
# Scenario "bench_window" (bench/unpatched_window.py): the unpatched window of module
# klpd_target — from its init to the end of lpa__klpd_target's patching transition —
# with different loaders. Each iteration writes "klpd-bench MODE I" to the kernel log;
# the host reads the timings from the kernel's own timestamps.
#   baseline      udevadm monitor | while read: modprobe P__m on "add /module/m"
#   klpd_remove   klpd, on_object_removed = "remove" (P__m unloaded when m goes)
#   klpd_keep     klpd, on_object_removed = "keep" (P__m stays; the kernel patches m)
#   klpd_softdep  klpd, remove policy + softdep m pre: P__m in /run/modprobe.d
. "$KLPD_LIB"
. "$(dirname "$KLPD_LIB")/services.sh"
N=${KLPD_BENCH_ITERATIONS:-5}

mark() { echo "klpd-bench $1 $2" >/dev/kmsg; }
disable_rmmod() { # PATCH
	/bin/echo 0 >"/sys/kernel/livepatch/$1/enabled" && wait_transitions 30 && rmmod "$1"
}

step reset reset_livepatches
step services.dbus start_dbus
step services.udevd start_udevd
step services.tmpfiles klpd_tmpfiles

# --- baseline: a shell loop on the kernel's module uevents ---------------------------------
step baseline.main modprobe lpa__vmlinux
step baseline.main.wait wait_transitions 30
mkfifo /run/uevents
udevadm monitor --kernel --subsystem-match=module >/run/uevents &
monitor_pid=$!
while read -r _ action devpath _; do
	if [ "$action $devpath" = "add /module/klpd_target" ]; then
		modprobe lpa__klpd_target
	fi
done </run/uevents &
loop_pid=$!
sleep 2
iter=1
while [ $iter -le "$N" ]; do
	mark baseline $iter
	step "baseline.$iter.load" modprobe klpd_target
	step "baseline.$iter.patched" wait_patches 30 lpa__klpd_target
	step "baseline.$iter.rmmod" rmmod klpd_target
	step "baseline.$iter.unload" disable_rmmod lpa__klpd_target
	iter=$((iter + 1))
done
mark end 0
kill "$monitor_pid" "$loop_pid"
step baseline.reset reset_livepatches

# --- klpd ------------------------------------------------------------------------------------
mkdir -p /run/bench-catalog
cp "/lib/modules/$(uname -r)/extra/lpa__vmlinux.ko" "/lib/modules/$(uname -r)/extra/lpa__klpd_target.ko" /run/bench-catalog/
export KLPD_CATALOG=/run/bench-catalog

klpd_mode() { # MODE ITERATIONS POLICY [TOML...]
	mode=$1 n=$2 policy=$3
	shift 3
	write_klpd_config "/run/klpd-$mode.toml" '[policy]' "on_object_removed = \"$policy\"" "$@"
	start_klpd "/run/klpd-$mode.toml" "$KLPD_OUT/klpd-$mode.log"
	step "$mode.startup" wait_patches 180 lpa__vmlinux
	sleep 2
	iter=1
	while [ $iter -le "$n" ]; do
		mark "$mode" $iter
		step "$mode.$iter.load" modprobe klpd_target
		step "$mode.$iter.patched" wait_patches 30 lpa__klpd_target
		step "$mode.$iter.rmmod" rmmod klpd_target
		if [ "$policy" = remove ]; then
			step "$mode.$iter.unloaded" wait_gone 30 lpa__klpd_target
		else
			step "$mode.$iter.settle" sleep 2
		fi
		iter=$((iter + 1))
	done
	mark end 0
	step "$mode.softdep_file" cat /run/modprobe.d/klpd.conf
	step "$mode.stop" stop_klpd
	step "$mode.reset" reset_livepatches
}

klpd_mode klpd_remove "$N" remove
klpd_mode klpd_keep 2 keep
klpd_mode klpd_softdep 2 remove '[softdep]' 'enabled = true' 'path = "/run/modprobe.d/klpd.conf"'
exit 0
