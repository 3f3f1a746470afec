#!/bin/bash
# The real-system scenarios of tests/system, run inside the Debian 13 guest by
# klpd-test.service after multi-user.target. Each boot runs one stage:
#   1  boot state, the unit under systemd, the whole job, reload, polkit, journal,
#      watchdog, dbus restart, stop; then reboots
#   2  the next boot converges again; measurements; powers off
#   3  (kernel command line klpd.enable=0) nothing started, nothing loaded; powers off
# Everything goes to /var/lib/klpd-test/results/ (the host reads it with debugfs):
# NAME.out + NAME.rc per command (rec), NAME.snap per snapshot (snap), NAME.txt values.
# The host's tests/system/test_system.py asserts on them; this script asserts nothing.
set -u
export LANG=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0
R=/var/lib/klpd-test/results
mkdir -p "$R"
stage=$(cat /var/lib/klpd-test/stage 2>/dev/null || echo 1)
echo "klpd-test: stage $stage" >/dev/kmsg

rec() { # NAME CMD...: stdout+stderr in NAME.out, exit status in NAME.rc
	local name=$1
	shift
	"$@" >"$R/$name.out" 2>&1
	echo $? >"$R/$name.rc"
}
as() { # USER CMD...: CMD as USER with USER's groups
	local user=$1
	shift
	setpriv --reuid="$user" --regid="$user" --init-groups -- "$@"
}
snap() { # NAME: the livepatch sysfs switches, the test modules, the patched functions
	{
		for f in /sys/kernel/livepatch/*/enabled /sys/kernel/livepatch/*/transition; do
			[ -e "$f" ] && echo "$f $(cat "$f")"
		done
		echo "modules $(awk '$1 ~ /__|^klpd_target$/ {print $1}' /proc/modules | sort | tr '\n' ' ')"
		echo "cmdline_proc_show $(cat /proc/cmdline)"
		echo "klpd_target_value $(cat /proc/klpd_target 2>/dev/null || echo absent)"
	} >"$R/$1.snap"
}
show() { # NAME: klpd.service's state as systemd sees it
	systemctl show klpd -p ActiveState -p SubState -p MainPID -p NRestarts -p StatusText \
		-p Result -p ConditionResult >"$R/$1.show"
}
main_pid() { systemctl show klpd -p MainPID --value; }
wait_for() { # SECONDS CMD...: poll CMD (0.2 s apart) until it succeeds; 1 on timeout
	local end=$(($(date +%s) + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		[ "$(date +%s)" -ge "$end" ] && return 1
		sleep 0.2
	done
}
new_main_pid() { # OLD: klpd active under a main pid other than OLD
	local pid
	pid=$(main_pid)
	[ "$pid" != 0 ] && [ "$pid" != "$1" ] && systemctl is-active -q klpd
}
elapsed() { # NAME CMD...: seconds CMD took, into NAME.txt
	local name=$1 t0 t1
	shift
	t0=$(date +%s.%N)
	"$@"
	t1=$(date +%s.%N)
	echo "$t0 $t1" | awk '{printf "%.2f\n", $2 - $1}' >"$R/$name.txt"
}
metrics() { # NAME: node_exporter's /metrics
	python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:9100/metrics", timeout=30).read().decode(), end="")' \
		>"$R/$1.prom" 2>"$R/$1.err"
}

stage1() {
	# --- boot: started, converged, ordered before network-pre.target, STATUS= ---------
	rec boot_active systemctl is-active klpd
	rec boot_wait klpctl wait --timeout 300
	snap boot
	show boot
	rec boot_status systemctl status klpd --no-pager --lines=0
	# --- the shipped unit, as installed, with nothing but the documented drop-in ------
	cp /usr/lib/systemd/system/klpd.service "$R/unit.installed"
	rec unit_cat systemctl cat klpd
	systemctl show klpd -p DropInPaths -p FragmentPath >"$R/unit.show"
	rec security systemd-analyze security klpd --no-pager
	rec metrics_file cat /var/lib/prometheus/node-exporter/klpd.prom
	wait_for 120 systemctl is-active -q prometheus-node-exporter
	metrics node1

	# --- the whole job under the unit: load on module add, softdep, unload ------------
	rec load_modprobe modprobe klpd_target
	wait_for 120 test -e /sys/kernel/livepatch/lpa__klpd_target
	rec load_wait klpctl wait --timeout 300
	snap load
	rec softdep cat /run/modprobe.d/klpd.conf
	rec unload_rmmod rmmod klpd_target
	rec unload_wait klpctl wait --timeout 300
	snap unload
	# reloaded with the module coming back: patched again
	rec load2_modprobe modprobe klpd_target
	wait_for 120 test -e /sys/kernel/livepatch/lpa__klpd_target
	rec load2_wait klpctl wait --timeout 300
	snap load2

	# --- blocking task, then `systemctl reload` with a good file (lpstall allowed) -------
	bash -c 'echo $$ >/run/klpd-test-sleeper; exec sh -c "echo sleep >/proc/klpd_target_sleep"' &
	wait_for 30 grep -qx 1 /proc/klpd_target_sleep
	sed -i 's/^exclude = \["lpstall"\]/exclude = []/' /etc/klpd/klpd.toml
	rec reload_good systemctl reload klpd
	show reload_good
	wait_for 180 sh -c "klpctl blocking | grep -qw $(cat /run/klpd-test-sleeper)"
	echo $? >"$R/blocking_seen.rc"
	rec blocking klpctl blocking
	echo wake >/proc/klpd_target_sleep
	rec blocking_wait klpctl wait --timeout 300
	snap blocking_done

	# --- reload with a bad file: refused, old configuration kept --------------------------
	cp /etc/klpd/klpd.toml /run/klpd-good.toml
	printf '[policy]\nno_such_key = 1\n' >>/etc/klpd/klpd.toml
	pid=$(main_pid)
	rec reload_bad systemctl reload klpd
	rec reload_bad_status klpctl status
	echo "$pid $(main_pid)" >"$R/reload_bad_pids.txt"
	cp /run/klpd-good.toml /etc/klpd/klpd.toml
	rec reload_bad_journal journalctl -u klpd -b --no-pager -o cat --grep 'no_such_key'

	# --- the system bus, the shipped policy, polkitd --------------------------------------
	rec bob_status as bob klpctl status
	rec bob_busctl as bob busctl --system get-property io.github.Klpd1 /io/github/Klpd1 \
		io.github.Klpd1.Manager State
	rec bob_disable as bob klpctl disable lpb
	snap bob_disable
	rec alice_disable as alice klpctl disable lpb
	rec alice_wait klpctl wait --timeout 300
	snap alice_disable

	# --- structured journal entries --------------------------------------------------------
	rec journal_patch journalctl -u klpd -b --no-pager -o json PATCH=lpa

	# --- watchdog: SIGSTOP -> restarted after WatchdogSec; SIGKILL -> restarted, converges --
	snap before_watchdog
	pid=$(main_pid)
	kill -STOP "$pid"
	elapsed watchdog_restart wait_for 180 new_main_pid "$pid"
	snap watchdog_stopped
	rec watchdog_wait klpctl wait --timeout 300
	show watchdog
	pid=$(main_pid)
	kill -KILL "$pid"
	elapsed kill_restart wait_for 120 new_main_pid "$pid"
	rec kill_wait klpctl wait --timeout 300
	show kill
	snap after_kill

	# --- systemctl restart dbus -------------------------------------------------------------
	pid=$(main_pid)
	since=$(date '+%Y-%m-%d %H:%M:%S')
	rec dbus_restart systemctl restart dbus
	elapsed dbus_reachable wait_for 120 klpctl status
	rec dbus_status klpctl status
	echo "$pid $(main_pid)" >"$R/dbus_pids.txt"
	show dbus
	rec dbus_journal journalctl -u klpd --no-pager -o short-monotonic --since "$since"
	snap after_dbus
	metrics node2

	# --- stop keeps every patch; then reboot -------------------------------------------------
	rec stop systemctl stop klpd
	show stop
	snap stopped
	echo 2 >/var/lib/klpd-test/stage
	journalctl -b -o json --no-pager >"$R/journal1.json"
	systemctl reboot
}

stage2() {
	rec boot2_active systemctl is-active klpd
	rec boot2_wait klpctl wait --timeout 300
	snap boot2
	show boot2
	journalctl -b -o json --no-pager >"$R/journal2.json"
	# --- measurements: klpctl status (the packaged install) vs bare python3 vs busctl -----
	for i in 1 2 3; do # warm the page cache
		klpctl status >/dev/null
		busctl --system get-property io.github.Klpd1 /io/github/Klpd1 io.github.Klpd1.Manager State >/dev/null
	done
	elapsed time_klpctl sh -c 'for i in 1 2 3 4 5 6 7 8 9 10; do klpctl status >/dev/null; done'
	elapsed time_python sh -c 'for i in 1 2 3 4 5 6 7 8 9 10; do python3 -c pass; done'
	elapsed time_busctl sh -c 'for i in 1 2 3 4 5 6 7 8 9 10; do busctl --system get-property io.github.Klpd1 /io/github/Klpd1 io.github.Klpd1.Manager State >/dev/null; done'
	# --- idle: RSS and wake-ups (context switches) of klpd over 30 s ------------------------
	pid=$(main_pid)
	grep -E '^(VmRSS|voluntary_ctxt_switches|nonvoluntary_ctxt_switches)' "/proc/$pid/status" >"$R/idle_before.txt"
	sleep 30 # the idle window being measured, not a synchronisation
	grep -E '^(VmRSS|voluntary_ctxt_switches|nonvoluntary_ctxt_switches)' "/proc/$pid/status" >"$R/idle_after.txt"
	echo 3 >/var/lib/klpd-test/stage
	systemctl poweroff
}

stage3() {
	show disabled
	rec disabled_active systemctl is-active klpd
	snap disabled
	echo 4 >/var/lib/klpd-test/stage
	systemctl poweroff
}

case $stage in
1) stage1 ;;
2) stage2 ;;
3) stage3 ;;
*) systemctl poweroff ;;
esac
