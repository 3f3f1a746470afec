#!/bin/sh
# PID 1 of the guest after switch_root into the overlay over the host's root.
# Started by /klpd-results/boot.sh (written by vm.py), which exports:
#   KLPD_KVER       kernel version (the guest runs it)
#   KLPD_KO_DIR     host directory with the built test .ko files
#   KLPD_KMOD_DIR   host directory with the kernel image's lib/modules/<ver> (extracted .deb)
#   KLPD_SCENARIOS  space-separated absolute paths of scenario scripts
#   KLPD_RESULTS    /klpd-results, the host's writable results directory
#   KLPD_LIB        absolute path of lib.sh
# Each scenario runs in its own results subdirectory; then the guest powers off.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH LANG=C.UTF-8

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
# A fresh tmpfs /tmp would hide the work tree (modules, .venv) when it lives under /tmp, as a
# CI checkout may; the overlay over the host's root already makes /tmp writable.
case "$KLPD_REPO" in /tmp/*) ;; *) mount -t tmpfs tmpfs /tmp ;; esac
mount -t tmpfs tmpfs /dev/shm
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
exec </dev/null >/dev/console 2>&1

read -r up _ </proc/uptime
echo "KLPD-GUEST-UP $up"
echo "$up" >"$KLPD_RESULTS/guest-up"

# The image's modules, seen through the 9p root, where modprobe looks for them (the host
# does not run this kernel: its /lib/modules/<ver> is absent, or is another build of it).
mkdir -p "/lib/modules/$KLPD_KVER"
for e in "$KLPD_KMOD_DIR"/*; do
	[ -e "/lib/modules/$KLPD_KVER/${e##*/}" ] || ln -s "$e" "/lib/modules/$KLPD_KVER/${e##*/}"
done
# The test modules go where modprobe finds them, as a package would put them; the bench's
# (bench/boot_converge.py) in bench/, a catalog of their own.
mkdir -p "/lib/modules/$KLPD_KVER/extra" "/lib/modules/$KLPD_KVER/bench"
for ko in "$KLPD_KO_DIR"/*.ko; do
	case ${ko##*/} in
	*bench*) cp "$ko" "/lib/modules/$KLPD_KVER/bench/" ;;
	*) cp "$ko" "/lib/modules/$KLPD_KVER/extra/" ;;
	esac
done
# depmod ran on the host (vm.py host_depmod: 45 s here over 9p, 1 s there).
cp "$KLPD_RESULTS"/depmod/modules.* "/lib/modules/$KLPD_KVER/"
echo "$(uname -r)" >"$KLPD_RESULTS/uname-r"

for scenario in $KLPD_SCENARIOS; do
	name=$(basename "$scenario" .sh)
	out=$KLPD_RESULTS/$name
	mkdir -p "$out"
	echo "KLPD-SCENARIO-BEGIN $name"
	read -r t0 _ </proc/uptime
	KLPD_OUT=$out sh "$scenario" >"$out/scenario.log" 2>&1
	echo $? >"$out/rc"
	read -r t1 _ </proc/uptime
	echo "$t0 $t1" >"$out/time"
	echo "KLPD-SCENARIO-END $name rc=$(cat "$out/rc")"
done

dmesg >"$KLPD_RESULTS/dmesg"
read -r up _ </proc/uptime
echo "$up" >"$KLPD_RESULTS/guest-done"
echo "KLPD-GUEST-DONE $up"
sync
echo o >/proc/sysrq-trigger
while :; do read -r _ </dev/console; done
