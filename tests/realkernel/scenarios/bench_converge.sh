#!/bin/sh
# Scenario "bench_converge" (bench/boot_converge.py): 3 patch series (bench_x, bench_y,
# bench_z) x 4 objects (vmlinux, klpd_bench1..3, all loaded) = 12 split modules, applied
#   baseline  by a shell loop: modprobe each (P__vmlinux first), waiting for each transition
#   klpd      by klpd from its start (catalog /lib/modules/<ver>/bench)
# KLPD_BENCH_ITERATIONS rounds of each. Every round writes "klpd-bench MODE I" to the kernel
# log; the host reads the kernel's own timestamps (first "enabling patch" to last "patching
# complete") and klpd's start from the marker.
. "$KLPD_LIB"
. "$(dirname "$KLPD_LIB")/services.sh"
N=${KLPD_BENCH_ITERATIONS:-2}
SERIES="bench_x bench_y bench_z"
OBJECTS="vmlinux klpd_bench1 klpd_bench2 klpd_bench3"
ALL=""
for s in $SERIES; do for o in $OBJECTS; do ALL="$ALL ${s}__$o"; done; done

mark() { echo "klpd-bench $1 $2" >/dev/kmsg; }
targets() { modprobe klpd_bench1 && modprobe klpd_bench2 && modprobe klpd_bench3; }
shell_loop() {
	for s in $SERIES; do
		for o in $OBJECTS; do
			modprobe "${s}__$o" || return 1
			wait_transitions 60 || return 1
		done
	done
}

step reset reset_livepatches
must services.dbus start_dbus
must services.udevd start_udevd
must python.warm "$KLPD_REPO/.venv/bin/python" -c 'import klpd.service.daemon'
export KLPD_CATALOG="/lib/modules/$(uname -r)/bench"
must config write_klpd_config /run/klpd-bench.toml

i=1
while [ $i -le "$N" ]; do
	must "baseline.$i.targets" targets
	mark baseline $i
	must "baseline.$i.apply" shell_loop
	mark end $i
	must "baseline.$i.reset" reset_livepatches
	must "klpd.$i.targets" targets
	mark klpd $i
	start_klpd /run/klpd-bench.toml "$KLPD_OUT/klpd-$i.log"
	# shellcheck disable=SC2086
	must "klpd.$i.apply" wait_patches 300 $ALL
	mark end $i
	must "klpd.$i.stop" stop_klpd
	must "klpd.$i.reset" reset_livepatches
	i=$((i + 1))
done
finish
