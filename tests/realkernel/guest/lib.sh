# Sourced by guest scenario scripts (POSIX sh). Records each step into
# $KLPD_OUT/steps/NNN/: name, cmd, rc, stdout, stderr, time ("t0 t1" from
# /proc/uptime), and after the step a snapshot: livepatch (the sysfs tree:
# "d PATH", "f PATH VALUE", "w PATH" for unreadable attributes), modules (the
# test modules' lines of /proc/modules), values (/proc/klpd_target,
# /proc/cmdline), dmesg (kernel log lines since the previous step).
# vm.py turns this into the JSON trace.

klpd_step_no=0
klpd_dmesg_lines=$(dmesg | wc -l)
mkdir -p "$KLPD_OUT/steps"

klpd_snapshot() { # DIR
	find /sys/kernel/livepatch -mindepth 1 2>/dev/null | sort | while read -r p; do
		if [ -d "$p" ]; then
			echo "d $p"
		elif v=$(cat "$p" 2>/dev/null); then
			echo "f $p $v"
		else
			echo "w $p"
		fi
	done >"$1/livepatch"
	grep -E '^(klpd_target|[a-z0-9_]+__[a-z0-9_]+) ' /proc/modules >"$1/modules"
	{
		if v=$(cat /proc/klpd_target 2>/dev/null); then
			echo "klpd_target $v"
		fi
		echo "cmdline $(cat /proc/cmdline)"
	} >"$1/values"
	dmesg >"$1/dmesg.all"
	n=$(wc -l <"$1/dmesg.all")
	tail -n "+$((klpd_dmesg_lines + 1))" "$1/dmesg.all" >"$1/dmesg"
	rm -f "$1/dmesg.all"
	klpd_dmesg_lines=$n
}

# step NAME CMD [ARG...]: run CMD, record it and the state after it.
# Returns CMD's exit status.
step() {
	klpd_name=$1
	shift
	klpd_step_no=$((klpd_step_no + 1))
	d=$KLPD_OUT/steps/$(printf %03d "$klpd_step_no")
	mkdir -p "$d"
	echo "$klpd_name" >"$d/name"
	echo "$*" >"$d/cmd"
	read -r t0 _ </proc/uptime
	"$@" >"$d/stdout" 2>"$d/stderr"
	rc=$?
	read -r t1 _ </proc/uptime
	echo "$rc" >"$d/rc"
	echo "$t0 $t1" >"$d/time"
	klpd_snapshot "$d"
	echo "KLPD-STEP $klpd_step_no $klpd_name rc=$rc $t0..$t1" >/dev/console
	return $rc
}

# sysfs_write VALUE PATH: echo VALUE > PATH, as a command step can run.
sysfs_write() {
	echo "$1" >"$2"
}

# wait_transitions [TIMEOUT_S]: poll every 10 ms until no livepatch is in
# transition; exit 1 on timeout. Prints the patches that were in transition.
wait_transitions() {
	read -r start _ </proc/uptime
	limit_cs=$((${1:-30} * 100))
	start_cs=${start%.*}${start#*.}
	while :; do
		busy=""
		for f in /sys/kernel/livepatch/*/transition; do
			{ read -r v <"$f"; } 2>/dev/null || continue
			[ "$v" = 1 ] && busy="$busy ${f%/transition}"
		done
		[ -z "$busy" ] && return 0
		read -r now _ </proc/uptime
		if [ $((${now%.*}${now#*.} - start_cs)) -gt "$limit_cs" ]; then
			echo "still in transition:$busy"
			return 1
		fi
		sleep 0.01
	done
}

# expect_transition_stays [SECONDS]: exit 0 if some patch is still in
# transition after SECONDS (default 3).
expect_transition_stays() {
	sleep "${1:-3}"
	grep -l 1 /sys/kernel/livepatch/*/transition
}

# task_state PID: the task's livepatch state and kernel stack.
task_state() {
	echo "patch_state $(cat "/proc/$1/patch_state")"
	echo "wchan $(cat "/proc/$1/wchan")"
	echo "stat $(cut -d' ' -f3 "/proc/$1/stat")"
	cat "/proc/$1/stack"
}

# sleepers: how many tasks sleep in klpd_target_sleep().
sleepers() {
	cat /proc/klpd_target_sleep
}

# wait_sleepers N: wait until N tasks sleep in klpd_target_sleep().
wait_sleepers() {
	i=0
	while [ "$(cat /proc/klpd_target_sleep 2>/dev/null)" != "$1" ]; do
		i=$((i + 1))
		[ $i -gt 500 ] && return 1
		sleep 0.01
	done
}
