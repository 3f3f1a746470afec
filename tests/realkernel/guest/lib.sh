# Sourced by guest scenario scripts (POSIX sh). Records each step N into
# $KLPD_OUT/steps/NNN.*: name, cmd, rc, stdout, stderr, time ("t0 t1" from
# /proc/uptime), and after the step a snapshot: livepatch (the sysfs tree:
# "d PATH", "f PATH VALUE", "w PATH" for unreadable attributes), modules (the
# test modules' lines of /proc/modules), values (/proc/klpd_target,
# /proc/cmdline). A "klpd-step N NAME" line written to /dev/kmsg before each
# step lets vm.py cut the final dmesg into the kernel messages of each step.
# vm.py turns all of it into the JSON trace.
#
# Snapshots use shell builtins only: every fork+exec costs ~0.1-0.3 s under
# TCG with the root on 9p.

klpd_step_no=0
mkdir -p "$KLPD_OUT/steps"

klpd_entry() { # PATH: one line of the livepatch snapshot
	if [ -d "$1" ]; then
		echo "d $1"
	elif { read -r klpd_v <"$1"; } 2>/dev/null; then
		echo "f $1 $klpd_v"
	else
		echo "w $1"
	fi
}

klpd_snapshot() { # PREFIX
	for a in /sys/kernel/livepatch/*; do
		[ -e "$a" ] || continue
		klpd_entry "$a"
		for b in "$a"/*; do
			[ -e "$b" ] || continue
			klpd_entry "$b"
			[ -d "$b" ] || continue
			for c in "$b"/*; do
				[ -e "$c" ] || continue
				klpd_entry "$c"
				[ -d "$c" ] || continue
				for e in "$c"/*; do
					[ -e "$e" ] && klpd_entry "$e"
				done
			done
		done
	done >"$1.livepatch"
	while read -r m_name m_size m_refcnt m_users m_state m_addr m_taints; do
		case $m_name in
		klpd_target | *__*) echo "$m_name $m_size $m_refcnt $m_users $m_state $m_addr $m_taints" ;;
		esac
	done </proc/modules >"$1.modules"
	{
		if { read -r klpd_v </proc/klpd_target; } 2>/dev/null; then
			echo "klpd_target $klpd_v"
		fi
		read -r klpd_v </proc/cmdline
		echo "cmdline $klpd_v"
	} >"$1.values"
}

# step NAME CMD [ARG...]: run CMD, record it and the state after it.
# Returns CMD's exit status.
step() {
	klpd_name=$1
	shift
	klpd_step_no=$((klpd_step_no + 1))
	d=$KLPD_OUT/steps/$(printf %03d "$klpd_step_no")
	echo "$klpd_name" >"$d.name"
	echo "$*" >"$d.cmd"
	echo "klpd-step ${KLPD_OUT##*/} $klpd_step_no $klpd_name" >/dev/kmsg
	read -r t0 _ </proc/uptime
	"$@" >"$d.stdout" 2>"$d.stderr"
	rc=$?
	read -r t1 _ </proc/uptime
	echo "$rc" >"$d.rc"
	echo "$t0 $t1" >"$d.time"
	klpd_snapshot "$d"
	echo "KLPD-STEP $klpd_step_no $klpd_name rc=$rc $t0..$t1" >/dev/console
	return $rc
}

# must NAME CMD [ARG...]: a step that has to succeed. A failure is recorded like any step
# and makes the scenario's exit status (finish) non-zero; the scenario goes on, so the
# steps after it are still recorded.
klpd_failed=""
must() {
	step "$@" || klpd_failed="$klpd_failed $1"
}

# finish: the scenario's last line. Exits 1, naming them, if any `must` step failed.
finish() {
	if [ -n "$klpd_failed" ]; then
		echo "failed steps:$klpd_failed"
		exit 1
	fi
	exit 0
}

# sysfs_write VALUE PATH: echo VALUE > PATH, as a command step can run.
# coreutils echo, not the shell's: dash reports every failed write as
# "I/O error", /bin/echo prints strerror(errno).
sysfs_write() {
	/bin/echo "$1" >"$2"
}

# modprobe_at_once A B: modprobe A, then B at once (no snapshot between), as a
# naive loader would; prints A's transition state just before B.
modprobe_at_once() {
	modprobe "$1" || return
	{ read -r klpd_v </sys/kernel/livepatch/$1/transition; } 2>/dev/null
	echo "$1 transition before modprobe $2: ${klpd_v:-gone}"
	modprobe "$2"
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
	klpd_wait_sleepers_i=0
	while [ "$(cat /proc/klpd_target_sleep 2>/dev/null)" != "$1" ]; do
		klpd_wait_sleepers_i=$((klpd_wait_sleepers_i + 1))
		[ $klpd_wait_sleepers_i -gt 500 ] && return 1
		sleep 0.01
	done
}

# wait_stack PID FUNCTION: wait until FUNCTION is on PID's kernel stack.
wait_stack() {
	klpd_wait_stack_i=0
	until grep -q "$2" "/proc/$1/stack" 2>/dev/null; do
		klpd_wait_stack_i=$((klpd_wait_stack_i + 1))
		[ $klpd_wait_stack_i -gt 100 ] && return 1
		sleep 0.05
	done
	cat "/proc/$1/stack"
}

# reset_livepatches: disable every livepatch, wait, remove the test modules; what cannot
# be removed (a module whose unpatching was forced) stays and is printed.
reset_livepatches() {
	for f in /sys/kernel/livepatch/*/enabled; do
		[ -e "$f" ] && /bin/echo 0 >"$f" 2>/dev/null
		wait_transitions 60 >/dev/null
	done
	# The list first: reading /proc/modules while rmmod changes it skips entries.
	for m in $(grep -o '^[a-z0-9_]*__[a-z0-9_]*' /proc/modules); do
		# transition 0 comes before the patch's module reference is dropped (async
		# free): retry briefly.
		for _ in 1 2 3 4 5 6 7 8 9 10; do
			rmmod "$m" 2>/dev/null && break
			sleep 0.2
		done
		grep -q "^$m " /proc/modules && echo "stays: $m"
	done
	rmmod klpd_target 2>/dev/null
	return 0
}

# wait_stall_seen TIMEOUT_S: until lpstall__klpd_target is in transition.
wait_stall_seen() {
	klpd_wait_stall_seen_i=0
	until [ "$(cat /sys/kernel/livepatch/lpstall__klpd_target/transition 2>/dev/null)" = 1 ]; do
		klpd_wait_stall_seen_i=$((klpd_wait_stall_seen_i + 1))
		[ $((klpd_wait_stall_seen_i / 10)) -gt "$1" ] && return 1
		sleep 0.1
	done
}

# wait_reverted TIMEOUT_S: until lpstall__klpd_target has left sysfs (reverted + freed).
wait_reverted() {
	klpd_wait_reverted_i=0
	while [ -e /sys/kernel/livepatch/lpstall__klpd_target ]; do
		klpd_wait_reverted_i=$((klpd_wait_reverted_i + 1))
		[ $((klpd_wait_reverted_i / 10)) -gt "$1" ] && return 1
		sleep 0.1
	done
}

# uevents_during CMD...: the kernel uevents (all subsystems) seen while CMD runs and for
# one second after it.
uevents_during() {
	udevadm monitor --kernel >/run/uevents.log 2>&1 &
	klpd_ud_pid=$!
	sleep 1
	"$@"
	klpd_ud_rc=$?
	sleep 1
	kill "$klpd_ud_pid"
	wait "$klpd_ud_pid" 2>/dev/null
	grep '^KERNEL\[' /run/uevents.log | sed 's/^KERNEL\[[0-9.]*\] *//'
	return $klpd_ud_rc
}

# initstate_at_add MODULE [PARAM=VALUE...]: modprobe MODULE and read
# /sys/module/MODULE/initstate when its add uevent arrives.
initstate_at_add() {
	klpd_ia_m=$1
	shift
	rm -f /run/ia.fifo
	mkfifo /run/ia.fifo
	udevadm monitor --kernel --subsystem-match=module >/run/ia.fifo &
	klpd_ia_mon=$!
	(
		while read -r _ action devpath _; do
			if [ "$action $devpath" = "add /module/$klpd_ia_m" ]; then
				read -r st <"/sys/module/$klpd_ia_m/initstate"
				echo "initstate at add uevent: $st"
				break
			fi
		done <>/run/ia.fifo
	) &
	klpd_ia_reader=$!
	sleep 1
	modprobe "$klpd_ia_m" "$@"
	wait "$klpd_ia_reader"
	kill "$klpd_ia_mon"
	wait "$klpd_ia_mon" 2>/dev/null
}
