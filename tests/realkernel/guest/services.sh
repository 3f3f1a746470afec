# Sourced by guest scenarios that run klpd: the system services it needs, started by
# hand (the guest has no systemd as PID 1). Needs KLPD_REPO (the host's work tree).

# start_dbus: the system bus, with klpd's bus policy installed.
start_dbus() {
	[ -S /run/dbus/system_bus_socket ] && return 0 # started by an earlier scenario
	cp "$KLPD_REPO"/etc/dbus-1/system.d/*.conf /etc/dbus-1/system.d/
	mkdir -p /run/dbus
	dbus-daemon --system --fork --nopidfile
}

# start_udevd: systemd-udevd re-broadcasts kernel uevents to the "udev" netlink group
# that klpd (pyudev) listens on.
start_udevd() {
	udevadm control --ping 2>/dev/null && return 0 # started by an earlier scenario
	/lib/systemd/systemd-udevd --daemon
	udevadm settle -t 30
}

# klpd_tmpfiles: what klpd's tmpfiles.d line makes at boot (the guest has no systemd as PID
# 1): /run/modprobe.d/klpd.conf -> /run/klpd/softdep.conf, so the real modprobe reads the
# softdeps klpd writes.
klpd_tmpfiles() {
	systemd-tmpfiles --create "$KLPD_REPO/units/klpd.tmpfiles" && ls -l /run/modprobe.d/klpd.conf
}

# write_klpd_config FILE [TOML...]: klpd.toml for the test modules under extra/.
write_klpd_config() {
	f=$1
	shift
	catalog='/lib/modules/{release}/extra'
	[ -n "${KLPD_CATALOG:-}" ] && catalog=$KLPD_CATALOG
	mkdir -p "$(dirname "$f")"
	{
		echo '[catalog]'
		echo "directories = [\"$catalog\"]"
		echo '[logging]'
		echo 'target = "stderr"'
		echo 'level = "debug"'
		for line in "$@"; do echo "$line"; done
	} >"$f"
}

# start_klpd CONFIG LOG: klpd in the background; its pid in $klpd_pid.
start_klpd() {
	"$KLPD_REPO/.venv/bin/klpd" --config "$1" >"$2" 2>&1 &
	klpd_pid=$!
}

# stop_klpd: SIGTERM, wait for it to exit (it never unloads anything).
stop_klpd() {
	kill -TERM "$klpd_pid" 2>/dev/null
	wait "$klpd_pid"
	echo "klpd exit $?"
}

# wait_patches TIMEOUT_S PATCH...: until every PATCH is in sysfs, enabled, not in
# transition. Prints how long it took (from /proc/uptime).
wait_patches() {
	limit=$1
	shift
	read -r w0 _ </proc/uptime
	klpd_wait_patches_i=0
	while :; do
		ok=1
		for p in "$@"; do
			{ read -r e </sys/kernel/livepatch/$p/enabled && read -r t </sys/kernel/livepatch/$p/transition; } 2>/dev/null || { ok=0; break; }
			[ "$e$t" = 10 ] || { ok=0; break; }
		done
		if [ $ok = 1 ]; then
			read -r w1 _ </proc/uptime
			echo "ready after $w0 -> $w1"
			return 0
		fi
		klpd_wait_patches_i=$((klpd_wait_patches_i + 1))
		[ $((klpd_wait_patches_i / 20)) -gt "$limit" ] && { echo "timeout"; return 1; }
		sleep 0.05
	done
}

# wait_gone TIMEOUT_S MODULE...: until no MODULE is in /proc/modules.
wait_gone() {
	limit=$1
	shift
	klpd_wait_gone_i=0
	while :; do
		left=""
		for m in "$@"; do
			grep -q "^$m " /proc/modules && left="$left $m"
		done
		[ -z "$left" ] && return 0
		klpd_wait_gone_i=$((klpd_wait_gone_i + 1))
		[ $((klpd_wait_gone_i / 20)) -gt "$limit" ] && { echo "still loaded:$left"; return 1; }
		sleep 0.05
	done
}

# wait_log_count TIMEOUT_S FILE TEXT N: until TEXT occurs on more than N lines of FILE.
wait_log_count() {
	w_i=0
	while [ "$(grep -c -- "$3" "$2" 2>/dev/null)" -le "$4" ]; do
		w_i=$((w_i + 1))
		[ $((w_i / 20)) -gt "$1" ] && { echo "timeout"; return 1; }
		sleep 0.05
	done
	grep -- "$3" "$2" | tail -n 1
}
