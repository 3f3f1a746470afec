"""Shared helpers for the benchmarks that run the real klpd against the simulated kernel.

Not a test helper: benchmarks print numbers next to a baseline measured in the same run.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

NOISE_NOTE = (
    "note: noisy machine ({} cores, other engineers run tests at the same time, and their "
    "sims' uevents reach this klpd too); medians/percentiles only, compare the ratios"
)


def bench_env() -> None:
    """As installed: bytecode cached (under a temp prefix, not in the tree). With
    PYTHONDONTWRITEBYTECODE every ``klpd-sim modprobe`` would compile its imports. Set in
    os.environ so the sim, klpd, klpd's modprobe children and the baseline all share it."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "klpd-bench-pycache")


def write_modprobe_wrapper(path: Path, cli: Sequence[str], log: Path) -> Path:
    """A ``/bin/sh`` modprobe that runs the sim's modprobe and appends
    ``start_ns end_ns rc args...`` to ``log`` (``date +%s%N``: CLOCK_REALTIME, the same
    clock as ``time.time_ns()``)."""
    path.write_text(
        "#!/bin/sh\n"
        "s=$(date +%s%N)\n"
        f'{" ".join(cli)} modprobe "$@"; rc=$?\n'
        "e=$(date +%s%N)\n"
        f'echo "$s $e $rc $*" >> {log}\n'
        "exit $rc\n"
    )
    path.chmod(0o755)
    return path


@dataclass(frozen=True)
class Call:
    start_ns: int
    end_ns: int
    rc: int
    module: str

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


def read_calls(log: Path) -> list[Call]:
    try:
        text = log.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue  # a line being written
        out.append(Call(int(parts[0]), int(parts[1]), int(parts[2]), parts[-1]))
    return out


def poll(cond: Callable[[], object], timeout: float, what: str, interval: float = 0.0005) -> None:
    """:func:`klpd_sim.harness.wait_for`, polling tightly (0.5 ms) — a busy loop would steal
    a core from klpd on 2 cores."""
    from klpd_sim.harness import wait_for

    wait_for(cond, timeout, what, interval=interval)


def patch_applied(livepatch_dir: Path, name: str) -> bool:
    """``name`` enabled, not in transition, and (if shown) its object patched."""
    d = livepatch_dir / name
    try:
        if (d / "enabled").read_text().strip() != "1":
            return False
        if (d / "transition").read_text().strip() != "0":
            return False
    except FileNotFoundError:
        return False
    obj = name.rsplit("__", 1)[-1]
    try:
        return (d / obj / "patched").read_text().strip() == "1"
    except FileNotFoundError:
        return True


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))
    return s[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ms(ns: float) -> float:
    return ns / 1e6
