#!/bin/sh
# Scenario "klpd_more": klpd on the real kernel, beyond start-up.
# 1. cumulative upgrade lpa v1 -> lpa_v2 on SIGHUP (config pin removed), while a background
#    loop samples /proc/klpd_target and /proc/cmdline: never an unpatched read;
# 2. downgrade back to v1, then the upgrade again with klpd SIGKILLed right after it logged
#    its first load; a new klpd converges;
# 3. busctl (State property, introspect) and klpctl status --json against sysfs;
# 4. an atomic-replace module (lprep__vmlinux) loaded by hand behind klpd's back: klpd
#    notices the wiped patches, takes lprep away and restores them.
# lpb (same functions) is excluded so the top of the stack is always lpa or lpa_v2.
# Two klpd starts in all. Every `must` step has to succeed (the scenario's exit status).
. "$KLPD_LIB"
. "$(dirname "$KLPD_LIB")/services.sh"

CFG=/run/klpd-more.toml
LOG1=$KLPD_OUT/klpd.log
LOG2=$KLPD_OUT/klpd2.log
SAMPLES=/run/klpd-more.samples
STOP_SAMPLER=/run/klpd-more.stop

klpctl() { "$KLPD_REPO/.venv/bin/klpctl" "$@"; }
read_value() { cat /proc/klpd_target; }
read_cmdline() { cat /proc/cmdline; }

config_pinned() {
	write_klpd_config "$CFG" '[patches]' 'exclude = ["lpb", "lpbad", "lpstall"]' 'pin = {lpa = 1}'
}
config_newest() {
	write_klpd_config "$CFG" '[patches]' 'exclude = ["lpb", "lpbad", "lpstall"]'
}

# sampler OUT: read /proc/klpd_target and /proc/cmdline as fast as the shell can (builtins
# only), one "value cmdline" line per sample, until $STOP_SAMPLER exists.
sampler() {
	while [ ! -e "$STOP_SAMPLER" ]; do
		read -r s_v </proc/klpd_target
		read -r s_c </proc/cmdline
		echo "$s_v $s_c"
	done >"$1"
}

# stop_sampler: stop it, print the sample count and the runs of equal samples (uniq -c).
stop_sampler() {
	: >"$STOP_SAMPLER"
	wait "$sampler_pid"
	echo "samples $(wc -l <"$SAMPLES")"
	uniq -c "$SAMPLES"
}

kill_klpd() {
	kill -KILL "$klpd_pid"
	wait "$klpd_pid"
	echo "klpd exit $?"
}

step reset reset_livepatches
must services.dbus start_dbus
must services.udevd start_udevd
must target.load modprobe klpd_target

# ---- 1. upgrade v1 -> v2 on SIGHUP, sampled -----------------------------------------------
must v1.config config_pinned
start_klpd "$CFG" "$LOG1"
must v1.applied wait_patches 180 lpa__vmlinux lpa__klpd_target
must v1.wait klpctl wait --timeout 120
must v1.value read_value
must v1.cmdline read_cmdline
sampler "$SAMPLES" &
sampler_pid=$!
# At the lowest priority: the busy loop must not starve the loads and transitions it watches
# (on 6.12 under TCG, at normal priority, one module load took 5 minutes).
renice -n 19 -p "$sampler_pid" >/dev/null
must upgrade.config config_newest
must upgrade.hup kill -HUP "$klpd_pid"
must upgrade.applied wait_patches 120 lpa_v2__vmlinux lpa_v2__klpd_target
must upgrade.retired wait_gone 60 lpa__vmlinux lpa__klpd_target
must upgrade.wait klpctl wait --timeout 120
must upgrade.samples stop_sampler
must upgrade.value read_value
must upgrade.cmdline read_cmdline

# ---- 2. downgrade, then the upgrade again with klpd SIGKILLed mid-way -------------------------
must downgrade.config config_pinned
must downgrade.hup kill -HUP "$klpd_pid"
must downgrade.applied wait_patches 120 lpa__vmlinux lpa__klpd_target
must downgrade.retired wait_gone 60 lpa_v2__vmlinux lpa_v2__klpd_target
must downgrade.wait klpctl wait --timeout 120
must downgrade.value read_value
loads=$(grep -c -- 'load lpa_v2__vmlinux' "$LOG1")
must kill.config config_newest
must kill.hup kill -HUP "$klpd_pid"
must kill.first_load wait_log_count 60 "$LOG1" 'load lpa_v2__vmlinux' "$loads"
must kill.sigkill kill_klpd
must kill.after wait_transitions 60
start_klpd "$CFG" "$LOG2"
must restart.applied wait_patches 180 lpa_v2__vmlinux lpa_v2__klpd_target
must restart.retired wait_gone 60 lpa__vmlinux lpa__klpd_target
must restart.wait klpctl wait --timeout 120
must restart.value read_value
must restart.cmdline read_cmdline

# ---- 3. what D-Bus and klpctl say, against sysfs ----------------------------------------------
must dbus.state busctl --system get-property io.github.Klpd1 /io/github/Klpd1 \
	io.github.Klpd1.Manager State
must dbus.introspect busctl --system introspect io.github.Klpd1 /io/github/Klpd1
must dbus.status klpctl status --json
must dbus.show klpctl show lpa_v2

# ---- 4. an atomic-replace patch loaded behind klpd's back -------------------------------------
must rep.load modprobe lprep__vmlinux
must rep.noticed wait_log_count 60 "$LOG2" 'replaced by an atomic-replace' 0
must rep.gone wait_gone 120 lprep__vmlinux
must rep.restored wait_patches 120 lpa_v2__vmlinux lpa_v2__klpd_target
must rep.wait klpctl wait --timeout 120
must rep.value read_value
must rep.cmdline read_cmdline
must rep.status klpctl status --json
must stop stop_klpd
must log.first cat "$LOG1"
must log.second cat "$LOG2"
finish
