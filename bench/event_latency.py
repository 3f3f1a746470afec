"""The unpatched window klpd adds: module ``add`` uevent -> ``P__<m>`` applied.

The real klpd daemon (``patches.desired=["lpa"]``, ``policy.on_object_removed="remove"``)
runs against a simulated kernel whose own uevents are off, so the bench sends each event
itself and knows when it was sent. klpd's ``kernel.modprobe`` is a ``/bin/sh`` wrapper that
logs ``date +%s%N`` before and after the sim's modprobe.

Per iteration: ``sim.modprobe("ext4")`` (no event), t0, ``add ext4`` uevent, poll (0.5 ms)
until ``lpa__ext4`` is enabled, out of transition and ``ext4/patched`` is 1; then
``rmmod ext4`` + ``remove`` uevent, and wait until klpd has taken ``lpa__ext4`` away.

Baseline, interleaved with klpd's iterations, with klpd SIGSTOPped so it cannot interfere:
the very command klpd runs (``klpd-sim modprobe -- lpa__ext4``) spawned by the bench, timed
spawn -> exit and spawn -> applied (the load itself plus the sim's transition; the sim
applies the patch before its CLI process has finished exiting, so both are watched), then undone
(``enabled`` = 0, wait for the sysfs dir to vanish, rmmod). Also the bare spawn cost (modprobe
of the already-loaded ``lpa__vmlinux``: kmod returns at once) and the wrapper's own cost
(``sh`` + 2 ``date``), which klpd's numbers include and the baseline does not.

    python bench/event_latency.py [--iterations 50] [--transition-ms 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import _common as c
from klpd_harness import KlpdProcess, loaded
from klpd_sim.harness import SimKernel
from klpd_sim.uevent import send_module_uevent

PATCH = "lpa__ext4"


def run_quiet(argv: list[str]) -> int:
    return subprocess.run(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    ).returncode


class Bench:
    def __init__(self, sim: SimKernel, k: KlpdProcess, log: Path) -> None:
        self.sim = sim
        self.k = k
        self.log = log
        self.seq = 7_000_000 + (os.getpid() % 1000) * 1000
        self.extra = {"KLPD_SIM_ROOT": str(sim.root)}
        self.r: dict[str, list[float]] = {}

    def add(self, key: str, ns: float) -> None:
        self.r.setdefault(key, []).append(ns)

    def event(self, action: str, module: str) -> None:
        self.seq += 1
        send_module_uevent(action, module, self.seq, self.extra)

    def applied(self) -> bool:
        return c.patch_applied(self.sim.livepatch_dir, PATCH)

    def klpd_iteration(self, record: bool) -> None:
        sim = self.sim
        sim.modprobe("ext4")  # uevents off: klpd does not know yet
        n_before = len(c.read_calls(self.log))
        t0 = time.time_ns()
        self.event("add", "ext4")
        c.poll(self.applied, 30, f"{PATCH} applied")
        t_applied = time.time_ns()
        c.poll(lambda: len(c.read_calls(self.log)) > n_before, 30, "the wrapper's log line")
        call = next(x for x in c.read_calls(self.log)[n_before:] if x.module == PATCH)
        if record:
            self.add("klpd: event -> modprobe start", call.start_ns - t0)
            self.add("klpd: modprobe duration (wrapper)", call.duration_ns)
            self.add("klpd: modprobe start -> applied", t_applied - call.start_ns)
            self.add("klpd: event -> applied (window)", t_applied - t0)
        # undo: ext4 goes, klpd (policy remove) disables and unloads lpa__ext4
        sim.rmmod("ext4")
        self.event("remove", "ext4")
        c.poll(lambda: PATCH not in loaded(sim), 30, f"klpd to remove {PATCH}", 0.005)
        self.k.wait_state("converged", 30)

    def baseline_iteration(self, record: bool) -> None:
        sim = self.sim
        assert self.k.proc is not None
        self.k.proc.send_signal(signal.SIGSTOP)
        try:
            sim.modprobe("ext4")
            argv = [*sim.cli, "modprobe", "--", PATCH]
            # the sim applies the patch before its CLI process has exited: watch both
            t0 = time.time_ns()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            t_exit = t_applied = 0

            def done() -> bool:
                nonlocal t_exit, t_applied
                if not t_applied and self.applied():
                    t_applied = time.time_ns()
                if not t_exit and proc.poll() is not None:
                    t_exit = time.time_ns()
                return bool(t_exit and t_applied)

            c.poll(done, 30, f"{PATCH} applied (baseline)")
            assert proc.returncode == 0, proc.returncode
            # bare spawn: the same tool on an already-loaded module returns at once
            t1 = time.time_ns()
            run_quiet([*sim.cli, "modprobe", "--", "lpa__vmlinux"])
            t_bare = time.time_ns() - t1
            # the wrapper's own cost: sh + 2 date
            t2 = time.time_ns()
            run_quiet(["/bin/sh", "-c", "s=$(date +%s%N); e=$(date +%s%N)"])
            t_wrap = time.time_ns() - t2
            if record:
                self.add("base: modprobe spawn -> exit", t_exit - t0)
                self.add("base: modprobe spawn -> applied", t_applied - t0)
                self.add("base: bare spawn (already loaded)", t_bare)
                self.add("base: wrapper overhead (sh+2 date)", t_wrap)
            sim.write_attr(PATCH, "enabled", "0")
            c.poll(lambda: not (sim.livepatch_dir / PATCH).exists(), 30, "disable", 0.002)
            sim.rmmod(PATCH)
            sim.rmmod("ext4")
        finally:
            self.k.proc.send_signal(signal.SIGCONT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", "-n", type=int, default=50)
    ap.add_argument("--transition-ms", type=float, default=10.0)
    args = ap.parse_args()
    c.bench_env()
    work = Path(tempfile.mkdtemp(prefix="klpd-bench-latency-"))
    started = time.monotonic()
    try:
        with SimKernel(transition_ms=args.transition_ms, uevents=False) as sim:
            log = work / "modprobe.log"
            wrapper = c.write_modprobe_wrapper(work / "modprobe-timed", sim.cli, log)
            k = KlpdProcess(
                sim,
                work,
                {
                    "patches": {"desired": ["lpa"]},
                    "policy": {"on_object_removed": "remove"},
                    "kernel": {"modprobe": [str(wrapper)]},
                    "logging": {"level": "info"},
                },
            )
            try:
                k.start()
                k.wait_state("converged", 60)
                assert c.patch_applied(sim.livepatch_dir, "lpa__vmlinux")
                b = Bench(sim, k, log)
                b.klpd_iteration(record=False)  # warm-up: page cache, pycache
                b.baseline_iteration(record=False)
                for _ in range(args.iterations):
                    b.klpd_iteration(record=True)
                    b.baseline_iteration(record=True)
            finally:
                k.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(b.r, args, time.monotonic() - started)


def report(r: dict[str, list[float]], args: argparse.Namespace, elapsed: float) -> None:
    n = len(r["klpd: event -> applied (window)"])
    print(
        f"event_latency: add uevent -> lpa__ext4 applied; sim transition_ms={args.transition_ms:g},"
        f" n={n} interleaved klpd/baseline iterations, {elapsed:.0f} s"
    )
    print(c.NOISE_NOTE.format(os.cpu_count()))
    print(f"{'':38} {'p50 ms':>9} {'p99 ms':>9}")
    for key, vals in r.items():
        print(f"{key:38} {c.ms(c.pct(vals, 50)):9.1f} {c.ms(c.pct(vals, 99)):9.1f}")
    med = {key: c.median(v) for key, v in r.items()}
    window = med["klpd: event -> applied (window)"]
    base = med["base: modprobe spawn -> applied"]
    react = med["klpd: event -> modprobe start"]
    print("ratios and differences of medians:")
    print(
        f"  window / baseline (spawn->applied)      {window / base:6.2f}x"
        f"   klpd adds {c.ms(window - base):+.1f} ms"
    )
    print(
        f"  klpd modprobe / baseline spawn->exit    "
        f"{med['klpd: modprobe duration (wrapper)'] / med['base: modprobe spawn -> exit']:6.2f}x"
    )
    print(
        f"  reaction (event->modprobe start)        {c.ms(react):6.1f} ms"
        f" = {react / window:.0%} of the window"
        f" (incl. sh+date {c.ms(med['base: wrapper overhead (sh+2 date)']):.1f} ms)"
    )


if __name__ == "__main__":
    main()
