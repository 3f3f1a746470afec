"""Convergence after a uevent burst that overflows klpd's socket, against the modprobe work
it had to do.

The real klpd (``patches.desired=["lpa", "lpb"]``, ``events.receive_buffer=4096``) runs
converged on a simulated kernel with its uevents on. Per round: SIGSTOP klpd; send 1,000
module uevents for modules that do not exist (noise), and load ext4, xfs and klpd_target in
the sim (their real ``add`` events, and their dependencies', are in the burst); SIGCONT;
measure until klpd's metrics say ``converged`` (after a reconcile that finished after
SIGCONT) and the sim shows every expected ``P__<obj>`` applied.

Baseline: the sum of the durations of the modprobe calls klpd made in that round (logged by
a ``/bin/sh`` wrapper with ``date +%s%N``), i.e. the work klpd could not avoid; also that
plus one sim transition per load (klpd serialises them), the serial lower bound. Resyncs are
the daemon-log lines that mention "resync". Rounds are undone (the targets removed; klpd runs
with ``policy.on_object_removed="remove"`` so it unloads their ``P__<obj>``) between rounds.

    python bench/burst_converge.py [--rounds 5] [--noise 1000] [--transition-ms 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import _common as c
from klpd_harness import KlpdProcess, applied, loaded
from klpd_sim.harness import SimKernel
from klpd_sim.uevent import send_module_uevent

PATCHES = ["lpa", "lpb"]
TARGETS = ["ext4", "xfs", "klpd_target"]
# what modprobe of the targets pulls in; removed too so every round starts alike
DEPS = ["mbcache", "jbd2", "crc16", "libcrc32c"]


def shipped(sim: SimKernel, name: str) -> bool:
    return any(sim.module_dir.rglob(f"{name}.ko*"))


def last_reconcile(k: KlpdProcess) -> float:
    try:
        text = k.metrics.read_text()
    except FileNotFoundError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("klpd_last_reconcile_timestamp_seconds"):
            return float(line.split()[-1])
    return 0.0


def resync_lines(k: KlpdProcess, skip: int) -> int:
    return sum("resync" in line for line in k.log()[skip:].splitlines())


def one_round(
    sim: SimKernel,
    k: KlpdProcess,
    log: Path,
    expected: set[str],
    args: argparse.Namespace,
    seq: int,
) -> dict[str, float]:
    assert k.proc is not None
    log_at = len(k.log())
    n_calls = len(c.read_calls(log))
    k.proc.send_signal(signal.SIGSTOP)
    try:
        t_burst = time.time_ns()
        for i in range(args.noise):
            action = "add" if i % 2 else "remove"
            send_module_uevent(action, f"klpd_noise_{i % 7}", seq + i)
        for t in TARGETS:
            sim.modprobe(t)
        t_burst = time.time_ns() - t_burst
    finally:
        t0 = time.time_ns()
        k.proc.send_signal(signal.SIGCONT)

    def done() -> bool:
        return (
            expected <= applied(sim)
            and k.metric_state() == "converged"
            and last_reconcile(k) * 1e9 >= t0
        )

    c.poll(done, 120, "convergence after the burst", 0.001)
    t_conv = time.time_ns() - t0
    calls = [x for x in c.read_calls(log)[n_calls:] if x.start_ns >= t0]
    work = sum(x.duration_ns for x in calls)
    row = {
        "converge": t_conv,
        "modprobe_sum": work,
        "serial_bound": work + len(calls) * args.transition_ms * 1e6,
        "calls": len(calls),
        "resyncs": resync_lines(k, log_at),
        "burst": t_burst,
        "failed": sum(x.rc != 0 for x in calls),
    }
    row["ratio"] = row["converge"] / row["modprobe_sum"]
    row["own"] = row["converge"] - row["serial_bound"]
    # undo: the targets go; klpd (policy remove) unloads their P__<obj>
    for t in [*TARGETS, *DEPS]:
        sim.rmmod(t, check=False)
    base = {f"{p}__vmlinux" for p in PATCHES}
    c.poll(
        lambda: applied(sim) == base and not (expected - base) & loaded(sim),
        60,
        "klpd to unload the round's modules",
        0.01,
    )
    k.wait_state("converged", 60)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", "-n", type=int, default=5)
    ap.add_argument("--noise", type=int, default=1000)
    ap.add_argument("--transition-ms", type=float, default=10.0)
    args = ap.parse_args()
    c.bench_env()
    work = Path(tempfile.mkdtemp(prefix="klpd-bench-burst-"))
    started = time.monotonic()
    rows = []
    try:
        with SimKernel(transition_ms=args.transition_ms, uevents=True) as sim:
            expected = {
                f"{p}__{o}"
                for p in PATCHES
                for o in ["vmlinux", *TARGETS]
                if shipped(sim, f"{p}__{o}")
            }
            log = work / "modprobe.log"
            wrapper = c.write_modprobe_wrapper(work / "modprobe-timed", sim.cli, log)
            k = KlpdProcess(
                sim,
                work,
                {
                    "patches": {"desired": PATCHES},
                    "events": {"receive_buffer": 4096},
                    "policy": {"on_object_removed": "remove"},
                    "kernel": {"modprobe": [str(wrapper)]},
                    "logging": {"level": "info"},
                },
            )
            try:
                k.start()
                k.wait_state("converged", 60)
                seq = 8_000_000 + (os.getpid() % 1000) * 10_000
                for r in range(args.rounds):
                    rows.append(one_round(sim, k, log, expected, args, seq + r * 2000))
            finally:
                k.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(rows, expected, args, time.monotonic() - started)


def report(
    rows: list[dict[str, float]], expected: set[str], args: argparse.Namespace, elapsed: float
) -> None:
    print(
        f"burst_converge: {args.noise} noise uevents + load {', '.join(TARGETS)} while klpd is"
        f" SIGSTOPped (receive_buffer=4096), SIGCONT -> converged;"
        f" sim transition_ms={args.transition_ms:g}, {len(rows)} rounds, {elapsed:.0f} s"
    )
    print(f"expected applied: {', '.join(sorted(expected))}")
    print(c.NOISE_NOTE.format(os.cpu_count()))
    print(
        f"{'round':>5} {'converge ms':>12} {'Σ modprobe ms':>14} {'+transitions':>13}"
        f" {'ratio':>6} {'klpd own':>9} {'calls':>6} {'resyncs':>8} {'burst send ms':>14}"
    )

    def line(label: str, r: dict[str, float]) -> None:
        print(
            f"{label:>5} {c.ms(r['converge']):12.0f} {c.ms(r['modprobe_sum']):14.0f}"
            f" {c.ms(r['serial_bound']):13.0f} {r['ratio']:6.2f} {c.ms(r['own']):9.0f}"
            f" {r['calls']:6g} {r['resyncs']:8g} {c.ms(r['burst']):14.0f}"
        )

    for i, r in enumerate(rows, 1):
        line(str(i), r)
    med = {key: c.median([r[key] for r in rows]) for key in rows[0]}
    line("med", med)
    print(
        "(med row: each column's median; ratio = converge / Σ modprobe;"
        " klpd own = converge - (Σ modprobe + transitions))"
    )
    print(
        f"ratio of medians: converge / Σ modprobe = {med['converge'] / med['modprobe_sum']:.2f}x,"
        f" converge / (Σ modprobe + transitions) = {med['converge'] / med['serial_bound']:.2f}x;"
        f" failed modprobe calls: {sum(r['failed'] for r in rows)}"
    )


if __name__ == "__main__":
    main()
