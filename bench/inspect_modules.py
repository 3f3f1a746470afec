#!/usr/bin/env python3
"""What reading a module's struct klp_patch costs, against reading its modinfo.

For N fake livepatch modules (klpd_sim.kofile, a klp_patch with one object and one function,
plus 200 KB of filler code as a real module has) and, when built, the real test modules of
build/realkernel/modules/*/: the median time of klpd.kernel.klpinspect.inspect_module (layout
from the built-in offsets and the module's symbols) and of klpd.kernel.modinfo.read_modinfo
on the same files, and their ratio. Inspection runs once per file version (the daemon caches
it), so this is a per-file cost of a catalog scan, not of every reconcile.

    .venv/bin/python bench/inspect_modules.py [N]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from klpd_sim.kofile import write_ko

from klpd.kernel.klpinspect import inspect_module
from klpd.kernel.modinfo import read_modinfo

REPO = Path(__file__).resolve().parent.parent


def median_ms(fn: Callable[[Path], object], files: list[Path], rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        for f in files:
            t = time.perf_counter()
            fn(f)
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def report(what: str, files: list[Path]) -> None:
    inspect = median_ms(inspect_module, files)
    modinfo = median_ms(read_modinfo, files)
    print(
        f"{what}: {len(files)} files: inspect {inspect:.3f} ms, modinfo {modinfo:.3f} ms "
        f"per file; inspect/modinfo {inspect / modinfo:.0f}x"
    )


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i in range(n):
            path = Path(tmp) / f"lp{i}__vmlinux.ko"
            write_ko(path, {"livepatch": "Y", "vermagic": "6.1.0 SMP "}, text_size=200_000)
            files.append(path)
        report("fake modules", files)
    for ko_dir in sorted((REPO / "build/realkernel/modules").glob("*")):
        real = sorted(ko_dir.glob("*__*.ko"))
        if real:
            report(f"real modules {ko_dir.name}", real)


if __name__ == "__main__":
    main()
