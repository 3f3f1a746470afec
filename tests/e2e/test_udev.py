"""pyudev on real netlink messages: libudev-format module uevents multicast on the udev
group (as udevd sends them), received by klpd's UdevSource on an asyncio loop."""

from __future__ import annotations

import asyncio
import select
from collections.abc import Callable

from klpd_sim.uevent import send_module_uevent

from klpd.kernel.udev import ModuleEvent, UdevSource

MARK = {"KLPD_TEST": "udev"}


async def _until(cond: Callable[[], object], timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def test_module_events_reach_the_loop() -> None:
    got: list[ModuleEvent] = []
    resyncs: list[str] = []
    src = UdevSource(got.append, resyncs.append)
    src.start(asyncio.get_running_loop())
    try:
        send_module_uevent("add", "klpd_udev_t1", 901, MARK)
        send_module_uevent("remove", "klpd_udev_t1", 902, MARK)
        send_module_uevent("bind", "klpd_udev_t1", 903, MARK)  # not ours: ignored
        await _until(lambda: [e for e in got if e.module == "klpd_udev_t1"][1:])
    finally:
        src.stop()
    mine = [e for e in got if e.module == "klpd_udev_t1"]
    assert mine == [
        ModuleEvent("add", "klpd_udev_t1", 901),
        ModuleEvent("remove", "klpd_udev_t1", 902),
    ]
    assert resyncs == []


async def test_overflow_asks_for_resync_and_the_socket_recovers() -> None:
    got: list[ModuleEvent] = []
    resyncs: list[str] = []
    src = UdevSource(got.append, resyncs.append, receive_buffer=4096)
    src.start(asyncio.get_running_loop())
    try:
        # The loop cannot read while we send: 1,000 events overflow a 4 KiB buffer.
        for i in range(1000):
            send_module_uevent("add", f"klpd_burst_{i}", 10_000 + i, MARK)
        await _until(lambda: resyncs)
        assert src.overflows >= 1
        assert "ENOBUFS" in resyncs[0]
        # drained and error cleared: not readable any more (no busy loop) ...
        await _until(lambda: not select.select([src.fileno()], [], [], 0)[0])
        # ... and still working
        send_module_uevent("add", "klpd_after_overflow", 20_000, MARK)
        await _until(lambda: any(e.module == "klpd_after_overflow" for e in got))
    finally:
        src.stop()
    assert len([e for e in got if e.module.startswith("klpd_burst_")]) < 1000
