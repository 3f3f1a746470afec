"""Benchmark: how long a catalog rescan full of hostile files holds klpd's event loop.

    python bench/scan_loop_block.py [--files 16] [--repeat 3]

A catalog of ``--files`` hostile ``*__*`` files (the slowest kind bench/hostile_modules.py
found: text-like filling in ``.ko.xz``, section headers just inside the 16 MiB cap) plus two
ordinary livepatches (inspected, as the daemon does). A probe task on the loop sleeps 5 ms
at a time and records the longest it was kept waiting beyond that: the loop's worst block,
which is what D-Bus callers, uevents and the watchdog pings wait.

- before: ``Orchestrator.rescan()`` called on the loop (what the daemon did until now);
- after: ``Orchestrator.rescan_off_loop()`` (scan and inspection in a worker thread);
- baseline: the same probe on an idle loop, in the same run.

Each rescan starts with fresh caches (every file new). Prints the worst block of each and
the whole rescan time.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import lzma
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from hostile_modules import LP, hostile_image
from klpd_sim.kofile import write_ko

from klpd.core.screen import Undeterminable
from klpd.kernel.klpinspect import DEFAULT_LAYOUT
from klpd.service.config import Config
from klpd.service.inspection import ModuleInspector
from klpd.service.orchestrator import Orchestrator

RELEASE = "6.1.0-13-amd64"
TICK = 0.005


def build_catalog(root: Path, files: int) -> None:
    root.mkdir()
    hostile = root / "lphostile0__vmlinux.ko.xz"
    hostile.write_bytes(lzma.compress(hostile_image("text"), preset=1))
    for i in range(1, files):
        shutil.copyfile(hostile, root / f"lphostile{i}__vmlinux.ko.xz")
    for obj in ("vmlinux", "ext4"):
        write_ko(root / f"lpgood__{obj}.ko.xz", {**LP, "name": f"lpgood__{obj}"}, "xz")


def orchestrator(root: Path, state: Path) -> Orchestrator:
    config = Config().with_overrides(
        {
            "kernel": {"release": RELEASE},
            "state": {"directory": str(state)},
            "catalog": {"directories": [str(root)]},
        }
    )
    inspector = ModuleInspector(DEFAULT_LAYOUT, Undeterminable("refuse"))
    return Orchestrator(config, inspector=inspector)


async def worst_block(work: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """(the loop's longest wait beyond a 5 ms tick while ``work`` ran, ``work``'s seconds)."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    worst = 0.0

    async def probe() -> None:
        nonlocal worst
        last = loop.time()
        while not done.is_set():
            await asyncio.sleep(TICK)
            now = loop.time()
            worst = max(worst, now - last - TICK)
            last = now

    task = asyncio.create_task(probe())
    await asyncio.sleep(TICK * 4)  # the probe is ticking
    start = time.perf_counter()
    await work()
    took = time.perf_counter() - start
    done.set()
    await task
    return worst, took


async def measure(root: Path, tmp: Path, repeat: int) -> None:
    results: dict[str, list[tuple[float, float]]] = {"baseline": [], "before": [], "after": []}
    for i in range(repeat):
        before = orchestrator(root, tmp / f"s{i}b")

        async def on_loop(o: Orchestrator = before) -> None:
            o.rescan()

        results["before"].append(await worst_block(on_loop))
        after = orchestrator(root, tmp / f"s{i}a")
        results["after"].append(await worst_block(after.rescan_off_loop))
        took = results["after"][-1][1]

        async def idle(t: float = took) -> None:
            await asyncio.sleep(t)

        results["baseline"].append(await worst_block(idle))
        assert len(before.catalog.problems) == len(after.catalog.problems)
    base = min(w for w, _ in results["baseline"])
    print(f"{'':<10} {'worst loop block':>17} {'x idle':>8} {'rescan':>8}")
    for name, rows in results.items():
        worst = min(w for w, _ in rows)  # best of the repeats: the least noisy
        took = min(t for _, t in rows)
        print(f"{name:<10} {worst * 1e3:>14.1f} ms {worst / base:>8.1f} {took:>7.2f}s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # each hostile file is a logged catalog problem
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "catalog"
        build_catalog(root, args.files)
        print(f"catalog: {args.files} hostile text.xz files + 2 ordinary livepatch modules")
        asyncio.run(measure(root, Path(tmp), args.repeat))


if __name__ == "__main__":
    main()
