#!/bin/sh
# Scenario "inspect_guard" (issue 12): klpd's module inspection against the real kernel.
# 1. What `klpctl inspect` reads from each module file, then what the kernel does with the
#    module: its sysfs objects and functions (<func>,<sympos>), its replace attribute where
#    the kernel has one (6.11+), and the wipe an atomic-replace patch causes.
# 2. An atomic-replace module that does not declare it (lpundecl: no klpd_replace modinfo)
#    dropped into klpd's catalog, then `klpctl reload`: refused before loading; the patched
#    functions are sampled all the while and must never read their original output.
. "$KLPD_LIB"
. "$(dirname "$KLPD_LIB")/services.sh"

CFG=/etc/klpd/klpd.toml
LOG=$KLPD_OUT/klpd.log
EXTRA=/lib/modules/$(uname -r)/extra
klpctl() { "$KLPD_REPO/.venv/bin/klpctl" "$@"; }
# The catalog is extra/ only: scanning all of /lib/modules over 9p under TCG takes minutes.
inspect() { klpctl inspect --json --config /etc/klpd/inspect.toml --kernel "$(uname -r)" "$@"; }
replace_attrs() { # the replace attribute of every livepatch, where the kernel has one
	for f in /sys/kernel/livepatch/*/replace; do
		[ -e "$f" ] && echo "$f $(cat "$f")"
	done
	echo done
}

step reset reset_livepatches
step target.load modprobe klpd_target
step original.cmdline cat /proc/cmdline
step original.target cat /proc/klpd_target

# ---- 1. inspection vs the kernel ---------------------------------------------------------
step inspect.config write_klpd_config /etc/klpd/inspect.toml
step inspect.all inspect "$EXTRA/lpa__vmlinux.ko" "$EXTRA/lpa__klpd_target.ko" \
	"$EXTRA/lptwo__vmlinux.ko" "$EXTRA/lpwrong__vmlinux.ko" "$EXTRA/lpundecl__vmlinux.ko" \
	"$EXTRA/lprep__vmlinux.ko"
step kernel.lpa modprobe lpa__vmlinux
step kernel.lpa.wait wait_patches 60 lpa__vmlinux
step kernel.lpa_target modprobe lpa__klpd_target
step kernel.lpa_target.wait wait_patches 60 lpa__klpd_target
step kernel.lptwo modprobe lptwo__vmlinux
step kernel.lptwo.wait wait_patches 60 lptwo__vmlinux
step kernel.lpwrong modprobe lpwrong__vmlinux
step kernel.lpwrong.wait wait_patches 60 lpwrong__vmlinux
step kernel.replace_attrs replace_attrs
step kernel.lpundecl modprobe lpundecl__vmlinux
step kernel.lpundecl.wait wait_patches 60 lpundecl__vmlinux
step kernel.lpundecl.settle sleep 2
step kernel.after_replace replace_attrs
step reset2 reset_livepatches

# ---- 2. klpd refuses an undeclared replace module: no wipe -----------------------------------
step services.dbus start_dbus
step services.udevd start_udevd
export KLPD_CATALOG=/run/klpd-inspect
mkdir -p "$KLPD_CATALOG"
cp "$EXTRA"/lpa__*.ko "$EXTRA"/lpb__*.ko "$KLPD_CATALOG/"
step target.load2 modprobe klpd_target
step config write_klpd_config "$CFG" '[boot_guard]' 'enabled = false'
start_klpd "$CFG" "$LOG"
step klpd.applied wait_patches 180 lpa__vmlinux lpb__vmlinux lpa__klpd_target lpb__klpd_target
step klpd.wait klpctl wait --timeout 120
sample() { # until $KLPD_OUT/stop-sampling exists: one line per read of both outputs
	while [ ! -e "$KLPD_OUT/stop-sampling" ]; do
		read -r c </proc/cmdline
		read -r t </proc/klpd_target
		echo "$c|$t"
	done >"$KLPD_OUT/samples"
}
sample &
sampler=$!
step sampling.started sleep 2
step arrive cp "$EXTRA/lpundecl__vmlinux.ko" "$KLPD_CATALOG/"
step reload klpctl reload
step reload.wait klpctl wait --timeout 120
step reload.settle sleep 3
touch "$KLPD_OUT/stop-sampling"
wait "$sampler"
step samples.count wc -l "$KLPD_OUT/samples"
step status klpctl --json status
step lpundecl.not_loaded sh -c '! grep -q "^lpundecl__vmlinux " /proc/modules'
step stop stop_klpd
step reset3 reset_livepatches
exit 0
