#!/bin/sh
# Scenario "klpd_basic": klpd itself on the real kernel. Start-up reconcile, a target
# module's add uevent, keep policy across rmmod/modprobe, klpctl's view, a refused
# replace module, stop without unloading.
. "$KLPD_LIB"
. "$(dirname "$KLPD_LIB")/services.sh"

read_value() { cat /proc/klpd_target; }
klpctl() { "$KLPD_REPO/.venv/bin/klpctl" "$@"; }

step reset reset_livepatches
step services.dbus start_dbus
step services.udevd start_udevd
step python.startup "$KLPD_REPO/.venv/bin/python" -c 'import klpd.service.daemon'
step config write_klpd_config /etc/klpd/klpd.toml '[patches]' 'exclude = ["lpbad", "lpstall"]'
step config.check "$KLPD_REPO/.venv/bin/klpd" --check-config --config /etc/klpd/klpd.toml
start_klpd /etc/klpd/klpd.toml "$KLPD_OUT/klpd.log"
# At start-up: the newest of series lpa (lpa_v2) and lpb, P__vmlinux only (no target yet).
step klpd.startup wait_patches 180 lpa_v2__vmlinux lpb__vmlinux
step klpd.startup.settle sleep 3
step klpd.startup.status klpctl --json status

step target.load modprobe klpd_target
step target.patched wait_patches 60 lpa_v2__klpd_target lpb__klpd_target
step target.value read_value
step target.rmmod rmmod klpd_target
step target.rmmod.settle sleep 3
step target.reload modprobe klpd_target
step target.reload.value read_value
step status klpctl --json status
step list klpctl list
step wait klpctl wait
step stop stop_klpd
step after_stop.value read_value
exit 0
