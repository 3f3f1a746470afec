"""A private ``dbus-daemon`` for tests, a FakeController and a fake polkit authority.

Reuse from any test module (there is no conftest here to do it for you)::

    from dbus_helpers import dbus_address  # noqa: F401  (the session fixture)

``dbus_address`` is a session-scoped fixture: one ``dbus-daemon --nofork`` per test
session with the private-bus configuration of :mod:`klpd_sim.bus` (deny by default, like
/usr/share/dbus-1/system.conf, plus the shipped ``etc/dbus-1/system.d/io.github.Klpd1.conf``;
the demo and the benchmarks use the same); the tests themselves run as root and so may
own ``io.github.Klpd1``. Its socket is reachable by every uid, so a
caller can be run as ``nobody`` (:data:`AS_NOBODY`). The daemon is killed at the end.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import klpd_sim.bus
import pytest
from klpd_sim.bus import PrivateBus

from klpd.core.model import (
    Action,
    ActionKind,
    BlockingTask,
    Catalog,
    OverallState,
    Patch,
    PatchModule,
    Reason,
)
from klpd.core.preview import PlanPreview
from klpd.core.status import (
    Event,
    EventKind,
    Listener,
    ModuleReport,
    ModuleStatus,
    PatchReport,
    PatchStatus,
    Snapshot,
    TransitionReport,
    UnknownPatchError,
)
from klpd.dbus.service import DbusService

REPO = Path(__file__).resolve().parent.parent
SHIPPED_BUS_POLICY = REPO / "etc/dbus-1/system.d/io.github.Klpd1.conf"
NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def start_private_bus(shipped_policy: Path = SHIPPED_BUS_POLICY) -> PrivateBus:
    """The one private bus configuration (:mod:`klpd_sim.bus`), with the shipped policy."""
    return klpd_sim.bus.start_private_bus(shipped_policy)


@pytest.fixture(scope="session")
def dbus_address() -> Iterator[str]:
    bus = start_private_bus()
    try:
        yield bus.address
    finally:
        bus.stop()


# --- a controller over Snapshot data ------------------------------------------------------


def sample_snapshot(state: OverallState = OverallState.CONVERGING) -> Snapshot:
    """Two patches: one applied, one half-way (a module in transition, one failed)."""
    lpa = PatchReport(
        name="lpa",
        status=PatchStatus.APPLIED,
        desired=True,
        series="lpa",
        version=1,
        description="fix the frobnicator",
        cves=("CVE-2026-1234",),
        modules=(
            ModuleReport(
                "lpa__vmlinux",
                "vmlinux",
                ModuleStatus.APPLIED,
                True,
                True,
                True,
                False,
                True,
                ("cmdline_proc_show",),
            ),
            ModuleReport("lpa__ext4", "ext4", ModuleStatus.ARMED, False, True, True, False),
        ),
    )
    lpb = PatchReport(
        name="lpb",
        status=PatchStatus.PARTIAL,
        desired=True,
        series="lpb",
        version=2,
        modules=(
            ModuleReport("lpb__vmlinux", "vmlinux", ModuleStatus.APPLYING, True, True, True, True),
            ModuleReport(
                "lpb__xfs",
                "xfs",
                ModuleStatus.FAILED,
                True,
                False,
                error="modprobe: could not insert lpb__xfs: Device or resource busy",
            ),
        ),
    )
    transition = TransitionReport(
        "lpb__vmlinux", "patched", 1_700_000_000.0, stalled=True, blocking=BLOCKING
    )
    return Snapshot(
        state=state,
        kernel_release="6.1.0-test-amd64",
        patches=(lpa, lpb),
        pending=("load lpb__xfs (object-loaded)",),
        transition=transition if state is OverallState.CONVERGING else None,
        last_error="lpb__xfs: Device or resource busy",
        last_reconcile=1_700_000_001.5,
    )


def sample_preview() -> PlanPreview:
    """A dry run that loads lpc after a rescan."""
    main = PatchModule("lpc__vmlinux", "lpc", "vmlinux", "/lib/modules/x/lpc__vmlinux.ko")
    catalog = Catalog({"lpc": Patch("lpc", {"vmlinux": main}, "lpc", 1)})
    load = Action(ActionKind.LOAD, "lpc__vmlinux", "lpc", "vmlinux", Reason.MAIN_FIRST)
    return PlanPreview(True, (load,), frozenset({"lpc"}), {}, catalog, "")


BLOCKING = (BlockingTask(4242, "sleepy", 0, "[<0>] do_nanosleep+0x1/0x2"),)


@dataclass
class FakeController:
    """The :class:`klpd.core.status.Controller` protocol over a Snapshot the test sets."""

    snap: Snapshot = field(default_factory=sample_snapshot)
    blocking: tuple[BlockingTask, ...] = BLOCKING
    listeners: list[Listener] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)
    fail_with: Exception | None = None  # what every state-changing call raises
    _converged: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: asyncio.Event = field(default_factory=asyncio.Event)  # a WaitConverged is in
    preview: PlanPreview = field(default_factory=lambda: sample_preview())

    def snapshot(self) -> Snapshot:
        return self.snap

    def blocking_tasks(self) -> tuple[BlockingTask, ...]:
        return self.blocking

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)

    def publish(self, snap: Snapshot, *events: Event) -> None:
        """Change the state, then tell the listeners (as the orchestrator does)."""
        self.snap = snap
        if snap.state is OverallState.CONVERGED:
            self._converged.set()
        else:
            self._converged.clear()
        for event in events or (Event(EventKind.STATE_CHANGED),):
            for listener in self.listeners:
                listener(event)

    def converge(self) -> None:
        self.publish(replace(self.snap, state=OverallState.CONVERGED, transition=None))

    async def _record(self, what: str, arg: str = "") -> None:
        self.calls.append((what, arg))
        if self.fail_with is not None:
            raise self.fail_with
        if arg and self.snap.patch(arg) is None:
            raise UnknownPatchError(f"no patch named {arg!r}")

    async def reload(self) -> None:
        await self._record("reload")

    async def enable_patch(self, name: str) -> None:
        await self._record("enable", name)

    async def disable_patch(self, name: str) -> None:
        await self._record("disable", name)

    def settled(self) -> OverallState | None:
        return None if self.snap.state is OverallState.CONVERGING else self.snap.state

    async def wait_settled(self, timeout: float) -> OverallState:
        if await self.wait_converged(timeout) or self.snap.state is not OverallState.CONVERGING:
            return self.snap.state
        return OverallState.CONVERGING

    async def plan_preview(
        self, *, rescan: bool = False, enable: Sequence[str] = (), disable: Sequence[str] = ()
    ) -> PlanPreview:
        self.calls.append(("plan", f"rescan={rescan} enable={enable} disable={disable}"))
        unknown = [n for n in (*enable, *disable) if self.snap.patch(n) is None]
        if unknown:
            raise UnknownPatchError(f"no installed patch named {unknown[0]!r}")
        return self.preview

    async def wait_converged(self, timeout: float) -> bool:
        self.waiting.set()
        if self.snap.state is OverallState.CONVERGED:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._converged.wait()
        except TimeoutError:
            return False
        return True


def run_env(address: str) -> dict[str, Any]:
    """Environment for a klpctl subprocess pointed at ``address``."""
    env = dict(os.environ)
    env["KLPD_BUS_ADDRESS"] = address
    env["LANG"] = "C.UTF-8"
    return env


# --- a FakeController service in its own process (benchmarks, manual poking) ---------------


async def _serve_forever(address: str) -> None:
    from klpd.dbus.service import start_dbus

    service = await start_dbus(FakeController(), address)
    print("ready", flush=True)
    try:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    finally:
        await service.close()


def spawn_fake_service(address: str) -> subprocess.Popen[bytes]:
    """A FakeController service on ``address`` in a child; returns once it owns the name.

    Close its stdin (or kill it) to stop it.
    """
    proc = subprocess.Popen(
        [sys.executable, __file__, "serve", address],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        proc.kill()
        raise RuntimeError(f"fake klpd service did not start (exit {proc.wait()})")
    return proc


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    asyncio.run(_serve_forever(sys.argv[2]))


@pytest.fixture
async def served(dbus_address: str) -> AsyncIterator[tuple[FakeController, DbusService]]:
    """klpd's D-Bus service over a FakeController, on the session's private bus."""
    from klpd.dbus.service import start_dbus

    controller = FakeController()
    service = await start_dbus(controller, dbus_address)
    try:
        yield controller, service
    finally:
        await service.close()
