"""A catalog scan never holds the event loop: D-Bus is answered while hostile files are read.

Issue 11 bounded what one hostile ``*__*`` file costs (~0.5 s, docs/security.md); the scan
now runs in a worker thread, so that cost no longer lands on the loop (bench:
bench/scan_loop_block.py measures the loop's worst stall before/after). The proof here
needs no clock: every modinfo read of the scan waits, *inside the worker*, until the test
has been answered a real ``Describe`` over a real dbus-daemon. Were the scan on the loop,
the first read would wait for an answer the blocked loop can never give (the handshake
would time out). Each answer thus comes while the scan is in the middle of a file.
"""

from __future__ import annotations

import asyncio
import json
import lzma
import queue
import struct
import threading
import time
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_helpers import start_private_bus
from fakekernel import FakeKernel
from klpd_harness import KlpdProcess
from klpd_sim.harness import SimKernel
from klpd_sim.kofile import elf_relocatable, modinfo_bytes

from klpd.core.model import Catalog
from klpd.dbus import names
from klpd.dbus.service import start_dbus
from klpd.kernel.catalog import Modinfo, ModinfoCache, scan_catalog
from klpd.kernel.modinfo import MAX_IMAGE_BYTES, read_modinfo
from klpd.service.config import Config
from klpd.service.controls import Control
from klpd.service.orchestrator import Orchestrator

RELEASE = "6.1.0-test"
HOSTILE = 12  # each a 1 GiB .ko.xz bomb, read up to the 16 MiB cap (~0.3 s each)
HANDSHAKE = 120.0  # seconds: only a wedged loop or worker ever waits this long


@cache
def zeros() -> bytes:
    return lzma.compress(b"\0" * MAX_IMAGE_BYTES, preset=0)


def bomb(path: Path) -> None:
    """A module header whose section headers sit just inside klpd's 16 MiB cap, then zeros
    (xz streams, read on across): klpd decompresses all of it, then refuses the file —
    the slowest a file gets (bench/hostile_modules.py; tests/unit/test_hostile_modules.py
    has the whole family)."""
    head = bytearray(elf_relocatable(modinfo_bytes("lp__vmlinux", {"livepatch": "Y"})))
    struct.pack_into("<Q", head, 0x28, MAX_IMAGE_BYTES - 64 * 8)  # e_shoff
    with open(path, "wb") as f:
        f.write(lzma.compress(bytes(head), preset=0))
        f.write(zeros())


class GatedReader:
    """``read_modinfo`` that first says which file it is about to read and waits for the
    test's go-ahead (in the scan's thread)."""

    def __init__(self) -> None:
        self.asked: queue.Queue[str] = queue.Queue()
        self.go = threading.Semaphore(0)
        self.threads: set[str] = set()

    def __call__(self, path: str) -> Modinfo:
        self.threads.add(threading.current_thread().name)
        self.asked.put(path)
        if not self.go.acquire(timeout=HANDSHAKE):
            raise AssertionError(f"no go-ahead for {path}: the loop never answered Describe")
        return read_modinfo(path)


async def describe(bus: MessageBus) -> dict[str, object]:
    reply = await bus.call(
        Message(
            destination=names.BUS_NAME,
            path=names.OBJECT_PATH,
            interface=names.INTERFACE,
            member="Describe",
        )
    )
    assert reply is not None and reply.message_type is MessageType.METHOD_RETURN, reply
    described: dict[str, object] = json.loads(reply.body[0])
    return described


async def test_describe_is_answered_during_a_scan_of_hostile_files(tmp_path: Path) -> None:
    catalog_dir = tmp_path / "catalog"
    catalog_dir.mkdir()
    for i in range(HOSTILE):
        bomb(catalog_dir / f"lphostile{i}__vmlinux.ko.xz")
    reader = GatedReader()
    cache = ModinfoCache(reader)
    config = Config().with_overrides(
        {
            "kernel": {"release": RELEASE},
            "state": {"directory": str(tmp_path / "state")},
            "catalog": {"directories": [str(catalog_dir)]},
        }
    )

    def scan(dirs: Sequence[Path], previous: Catalog) -> Catalog:
        return scan_catalog(dirs, previous, cache)

    orch = Orchestrator(config, port=FakeKernel(release=RELEASE), scan=scan)
    control = Control(orch)
    bus = start_private_bus()
    try:
        svc = await start_dbus(control, bus.address)
        client = await MessageBus(bus_address=bus.address).connect()
        try:
            reload = asyncio.create_task(control.reload())
            seen: list[str] = []
            latencies: list[float] = []
            for _ in range(HOSTILE):
                # the worker has announced a file and now waits for us, mid-scan
                path = await asyncio.to_thread(reader.asked.get, True, HANDSHAKE)
                seen.append(Path(path).name)
                t0 = time.monotonic()
                assert (await describe(client))["state"] == "converging"
                latencies.append(time.monotonic() - t0)
                assert not reload.done()
                reader.go.release()
            await asyncio.wait_for(reload, HANDSHAKE)
        finally:
            client.disconnect()
            await svc.close()
    finally:
        bus.stop()

    assert sorted(seen) == sorted(p.name for p in catalog_dir.iterdir())
    assert threading.main_thread().name not in reader.threads  # read off the loop's thread
    problems = {Path(p.path).name for p in orch.catalog.problems}
    assert problems == set(seen)  # each bomb is one catalog problem, as before
    print(f"Describe during the scan: {len(latencies)} calls, worst {max(latencies):.3f} s")


def test_watchdog_pings_while_the_first_scan_reads_hostile_files(
    sim: SimKernel, tmp_path: Path
) -> None:
    """The real daemon on the simulated kernel, under a watchdog (WATCHDOG_USEC as systemd
    sets it), with hostile files in its catalog: it pings from the loop while its first
    scan reads them, before READY=1 (until now the pinging began only after the scan; ~60
    such files would have outlasted WatchdogSec=30s, and the restart would scan them again)."""
    extra = sim.module_dir / "extra"
    extra.mkdir(parents=True, exist_ok=True)
    for i in range(HOSTILE):
        bomb(extra / f"lphostile{i}__vmlinux.ko.xz")
    k = KlpdProcess(
        sim, tmp_path, {"patches": {"desired": ["lpa"]}}, env={"WATCHDOG_USEC": "200000"}
    )
    try:
        k.start()
        messages = k.drain()
        ready = next(i for i, m in enumerate(messages) if "READY=1" in m.splitlines())
        pings = sum("WATCHDOG=1" in m.splitlines() for m in messages[:ready])
        assert pings >= 1, messages[: ready + 1]
        assert k.log().count("cannot read modinfo") == HOSTILE
        k.wait_state("converged", 60)
        print(f"watchdog pings before READY=1 (first scan, {HOSTILE} hostile files): {pings}")
    finally:
        k.close()
