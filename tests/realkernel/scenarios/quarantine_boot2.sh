#!/bin/sh
# Scenario "quarantine_boot2" (issue 12, the boot after quarantine_boot1's crash): klpd
# starts with the same state disk and catalog, quarantines lpb__vmlinux (its load record was
# left open by the previous boot), applies lpa; `klpctl enable lpb` lifts the quarantine.
. "$KLPD_LIB"
. "$(dirname "$KLPD_LIB")/services.sh"

CFG=/etc/klpd/klpd.toml
LOG=$KLPD_OUT/klpd.log
STATE=/var/lib/klpd
klpctl() { "$KLPD_REPO/.venv/bin/klpctl" "$@"; }
export KLPD_CATALOG=/run/klpd-quarantine
mkdir -p "$KLPD_CATALOG"
cp /lib/modules/"$(uname -r)"/extra/lpa__vmlinux.ko /lib/modules/"$(uname -r)"/extra/lpb__vmlinux.ko "$KLPD_CATALOG/"

step disk.modules modprobe -a virtio_blk ext4
step disk.mount sh -c "mkdir -p $STATE && mount -t ext4 /dev/vda $STATE"
step boot_id cat /proc/sys/kernel/random/boot_id
step record.before cat "$STATE/bootguard.json"
step services.dbus start_dbus
step services.udevd start_udevd
step config write_klpd_config "$CFG" '[state]' "directory = \"$STATE\"" '[boot_guard]' \
	'grace_period = 3.0' '[patches]' 'desired = ["lpa", "lpb"]'
start_klpd "$CFG" "$LOG"
step lpa.applied wait_patches 180 lpa__vmlinux
step wait klpctl wait --timeout 120
step status klpctl --json status
step lpb.not_loaded sh -c '! grep -q "^lpb__vmlinux " /proc/modules'
step record.after cat "$STATE/bootguard.json"
step enable klpctl enable lpb
step lpb.applied wait_patches 180 lpb__vmlinux
step wait.after klpctl wait --timeout 120
step status.after klpctl --json status
step stop stop_klpd
exit 0
