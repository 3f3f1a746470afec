"""Bus loss: dbus-daemon goes away under the real daemon. klpd keeps orchestrating from udev
events (a target loaded meanwhile gets its patch), unloads nothing, and is back on the bus
— its name owned, Describe answering — once a dbus-daemon listens at the address again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from dbus_helpers import FakeController, start_private_bus
from klpd_harness import MakeKlpd, applied, wait_for
from klpd_sim.harness import SimKernel

from klpd.dbus.service import start_dbus

BUSCTL = shutil.which("busctl") or "/usr/bin/busctl"


def describe(address: str) -> subprocess.CompletedProcess[str]:
    argv = [BUSCTL, f"--address={address}", "call", "io.github.Klpd1", "/io/github/Klpd1"]
    argv += ["io.github.Klpd1.Manager", "Describe"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_bus_restart_keeps_the_kernel_work_and_comes_back(
    sim: SimKernel, make_klpd: MakeKlpd
) -> None:
    bus = start_private_bus()
    try:
        socket = Path(bus.directory) / "bus"
        address = f"unix:path={socket}"  # no guid: the restarted daemon has a new one
        sim.modprobe("ext4")
        k = make_klpd({"patches": {"desired": ["lpa"]}, "dbus": {"enabled": True, "bus": address}})
        k.start()
        wait_for(lambda: applied(sim) == {"lpa__vmlinux", "lpa__ext4"}, 60, "lpa applied")
        assert describe(address).returncode == 0

        bus.crash()  # dbus-daemon gone
        sim.modprobe("klpd_target")  # the kernel work goes on from udev events
        wait_for(lambda: "lpa__klpd_target" in applied(sim), 60, "lpa__klpd_target applied")
        assert {"lpa__vmlinux", "lpa__ext4"} <= applied(sim)  # nothing unloaded
        k.check_alive()

        bus.relaunch()
        wait_for(lambda: describe(address).returncode == 0, 60, "klpd back on the bus")
        assert "lpa__klpd_target" in describe(address).stdout
        assert "lost the D-Bus connection" in k.log() and "back on the bus" in k.log()
        # events after the loss went to the service on the new bus only, never to the lost
        # one (its listener used to stay subscribed: a traceback per event, a leak per loss)
        sim.rmmod("klpd_target")
        wait_for(lambda: "armed" in describe(address).stdout, 60, "lpa__klpd_target armed")
        assert "event listener failed" not in k.log()
        k.check_alive()
    finally:
        bus.stop()


def test_started_while_the_bus_is_down_patches_and_joins_it_later(
    sim: SimKernel, make_klpd: MakeKlpd
) -> None:
    """Found by the daemon soak: klpd restarted while dbus-daemon was down exited 1, and
    nothing was patched until the bus came back (under systemd: until the restart limit)."""
    bus = start_private_bus()
    try:
        address = f"unix:path={bus.directory}/bus"
        bus.crash()
        sim.modprobe("ext4")
        k = make_klpd({"patches": {"desired": ["lpa"]}, "dbus": {"enabled": True, "bus": address}})
        k.start()  # READY=1 without the bus
        wait_for(lambda: applied(sim) == {"lpa__vmlinux", "lpa__ext4"}, 60, "lpa applied")
        assert "cannot connect to the" in k.log() and "orchestrating without it" in k.log()
        bus.relaunch()
        wait_for(lambda: describe(address).returncode == 0, 60, "klpd on the bus")
        assert "lpa__ext4" in describe(address).stdout
        k.check_alive()
    finally:
        bus.stop()


async def lose_the_bus() -> str:
    """A service over a FakeController; its dbus-daemon dies; events come at once and after
    the disconnect. What is left subscribed, and what the events raised."""
    bus = start_private_bus()
    try:
        controller = FakeController()
        service = await start_dbus(controller, bus.address)
        assert controller.listeners == [service.on_event]
        bus.crash()
        try:
            controller.converge()  # at once: this signal is the first to meet the dead socket
            with contextlib.suppress(Exception):  # how it ended does not matter
                await service.bus.wait_for_disconnect()  # type: ignore[no-untyped-call]  # dbus_fast: untyped
            controller.converge()
            await service.close()  # the daemon's stop after a loss: nothing left to undo
        except Exception as e:
            return f"raised {e!r}"
        return f"{len(controller.listeners)} listeners"
    finally:
        bus.stop()


def test_a_service_whose_bus_is_lost_stops_listening() -> None:
    """Found by the daemon soak: an event as dbus-daemon died raised EBADF out of dbus-fast
    into the reporter (a traceback in klpd's log), and every lost service stayed subscribed,
    one more after each bus restart. In a child interpreter: on CPython 3.11.7 the exception
    inside dbus-fast's compiled code leaves the next deep ast.parse() failing once
    ("AST constructor recursion depth mismatch"), which would hit pytest's own imports."""
    here = Path(__file__).resolve()
    env = {**os.environ, "PYTHONPATH": str(here.parent.parent)}
    r = subprocess.run(
        [sys.executable, str(here)], capture_output=True, text=True, timeout=60, env=env
    )
    assert r.stdout.strip() == "0 listeners", r.stdout + r.stderr


if __name__ == "__main__":
    print(asyncio.run(lose_the_bus()))
