#!/bin/sh
# Scenario "quarantine_boot1" (issue 12, first boot): klpd's state directory on its own disk
# (/dev/vda, ext4, made by the host); lpa applied and its load record closed after the grace
# period; then lpb applied and the guest crashed at once (sysrq c) while lpb's record is
# still open. quarantine_boot2 runs in the next boot with the same disk.
. "$KLPD_LIB"
. "$(dirname "$KLPD_LIB")/services.sh"

CFG=/etc/klpd/klpd.toml
LOG=$KLPD_OUT/klpd.log
STATE=/var/lib/klpd
klpctl() { "$KLPD_REPO/.venv/bin/klpctl" "$@"; }
config() {
	write_klpd_config "$CFG" '[state]' "directory = \"$STATE\"" '[boot_guard]' \
		'grace_period = 3.0' '[patches]' "$@"
}
export KLPD_CATALOG=/run/klpd-quarantine
mkdir -p "$KLPD_CATALOG"
cp /lib/modules/"$(uname -r)"/extra/lpa__vmlinux.ko /lib/modules/"$(uname -r)"/extra/lpb__vmlinux.ko "$KLPD_CATALOG/"

step disk.modules modprobe -a virtio_blk ext4
step disk.mount sh -c "mkdir -p $STATE && mount -t ext4 /dev/vda $STATE"
step boot_id cat /proc/sys/kernel/random/boot_id
step services.dbus start_dbus
step services.udevd start_udevd
step config config 'desired = ["lpa"]'
start_klpd "$CFG" "$LOG"
step lpa.applied wait_patches 180 lpa__vmlinux
step lpa.wait klpctl wait --timeout 120
step lpa.grace sleep 6
step lpa.record cat "$STATE/bootguard.json"
# lpb's grace period is long: its record stays open until the crash.
step config.lpb write_klpd_config "$CFG" '[state]' "directory = \"$STATE\"" '[boot_guard]' \
	'grace_period = 120.0' '[patches]' 'desired = ["lpa", "lpb"]'
kill -HUP "$klpd_pid"
step lpb.applied wait_patches 180 lpb__vmlinux
# Past ext4's 5 s commit interval before the crash: in one of two runs a record written
# (and fsynced) ~3 s before the panic was not on the disk in the next boot; see
# /work/notes/inspect.md. The crash itself: no step between, sysrq c.
sleep 6
cat "$STATE/bootguard.json" >"$KLPD_OUT/record-before-crash"
sync "$KLPD_OUT/record-before-crash"
echo c >/proc/sysrq-trigger
