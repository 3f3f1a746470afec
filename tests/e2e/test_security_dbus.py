"""Issue 11's D-Bus attacks, each replayed by uid 65534 against the real service.

The attacker is a separate process run with setpriv as ``nobody``, speaking dbus-fast. The
bus is a private dbus-daemon whose policy lets *every* method call through (also calls
without an interface, which the system bus policy happens to reject): klpd itself must hold.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_helpers import AS_NOBODY, FakeController, start_private_bus

from klpd.core.model import BlockingTask
from klpd.core.preview import PlanPreview
from klpd.dbus import limits, names
from klpd.dbus.service import DbusService, start_dbus

PERMISSIVE_POLICY = """<busconfig>
  <policy user="root"><allow own="io.github.Klpd1"/></policy>
  <policy context="default"><allow send_type="method_call"/></policy>
</busconfig>
"""

# The attacker: connects ``CONNECTIONS`` times, sends ``CALLS`` messages per connection,
# prints one line per reply ("ok <body>" or "error <name> <text>"), then waits for EOF.
ATTACKER = """
import asyncio, sys
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
address, connections, calls, member, signature, arg, interface = sys.argv[1:8]
async def one(bus):
    from dbus_fast import Variant
    if signature == "a{sv}":
        body = [{arg: Variant("b", True)}]
    else:
        body = [float(arg) if signature == "d" else arg] if signature else []
    reply = await bus.call(Message(destination="io.github.Klpd1", path="/io/github/Klpd1",
        interface=interface or None, member=member, signature=signature, body=body))
    if reply.message_type is MessageType.ERROR:
        print("error", reply.error_name, reply.body[0] if reply.body else "", flush=True)
    else:
        print("ok", repr(reply.body), flush=True)
async def main():
    buses = [await MessageBus(bus_address=address).connect() for _ in range(int(connections))]
    tasks = [asyncio.ensure_future(one(b)) for b in buses for _ in range(int(calls))]
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for t in tasks:
        t.cancel()
asyncio.run(main())
"""


@pytest.fixture(scope="module")
def permissive_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    policy = tmp_path_factory.mktemp("policy") / "permissive.conf"
    policy.write_text(PERMISSIVE_POLICY)
    bus = start_private_bus(policy)
    try:
        yield bus.address
    finally:
        bus.stop()


@pytest.fixture
async def open_bus(
    permissive_address: str,
) -> AsyncIterator[tuple[FakeController, DbusService, MessageBus]]:
    controller = FakeController()
    svc = await start_dbus(controller, permissive_address)
    root = await MessageBus(bus_address=permissive_address).connect()
    try:
        yield controller, svc, root
    finally:
        root.disconnect()
        await svc.close()


class Attacker:
    """The attacking process (uid 65534); :meth:`lines` reads its replies."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def line(self, timeout: float = 30.0) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        assert raw, "the attacker exited"
        return raw.decode().rstrip("\n")

    async def lines(self, n: int) -> list[str]:
        return [await self.line() for _ in range(n)]

    async def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await self.proc.wait()


async def attack(
    address: str,
    member: str,
    signature: str = "",
    arg: str = "",
    *,
    connections: int = 1,
    calls: int = 1,
    interface: str = names.INTERFACE,
) -> Attacker:
    argv = [sys.executable, "-c", ATTACKER, address, str(connections), str(calls), member]
    proc = await asyncio.create_subprocess_exec(
        *AS_NOBODY,
        *argv,
        signature,
        arg,
        interface,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    return Attacker(proc)


async def call(bus: MessageBus, member: str, signature: str = "", *args: Any) -> Message:
    reply = await bus.call(
        Message(
            destination=names.BUS_NAME,
            path=names.OBJECT_PATH,
            interface=names.INTERFACE,
            member=member,
            signature=signature,
            body=list(args),
        )
    )
    assert reply is not None
    return reply


# --- point 1: authorisation bound to the message being served ---------------------------------


async def test_call_without_interface_is_authorised_as_its_own_sender(
    open_bus: tuple[FakeController, DbusService, MessageBus],
    permissive_address: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    controller, _, root = open_bus
    caplog.set_level(logging.INFO, logger="klpd")
    controller.waiting.clear()
    pending = asyncio.ensure_future(call(root, "WaitConverged", "d", 60.0))  # root's call
    await controller.waiting.wait()
    nobody = await attack(permissive_address, "DisablePatch", "s", "lpa", interface="")
    try:
        reply = await nobody.line()
    finally:
        await nobody.stop()
    assert reply.startswith(f"error {names.ERROR_ACCESS_DENIED}"), reply
    assert controller.calls == []
    assert "requested by uid 0" not in caplog.text
    controller.converge()
    assert (await pending).body == [True]


async def test_call_without_interface_from_root_still_works(
    open_bus: tuple[FakeController, DbusService, MessageBus],
) -> None:
    controller, _, root = open_bus
    reply = await root.call(
        Message(
            destination=names.BUS_NAME,
            path=names.OBJECT_PATH,
            member="EnablePatch",
            signature="s",
            body=["lpa"],
        )
    )
    assert reply is not None and reply.message_type is MessageType.METHOD_RETURN, reply.body
    assert controller.calls == [("enable", "lpa")]


# --- point 5: WaitConverged slots per uid, with a reserve for root -------------------------


async def test_nobody_cannot_take_every_wait_slot(
    open_bus: tuple[FakeController, DbusService, MessageBus],
    permissive_address: str,
) -> None:
    _, svc, root = open_bus
    bounds = svc.interface.waiters.bounds
    # As measured: 256 WaitConverged calls of uid 65534 (64 connections x 4).
    nobody = await attack(permissive_address, "WaitConverged", "d", "3000", connections=64, calls=4)
    try:
        refused = await nobody.lines(256 - bounds.per_uid)
        assert all(r.startswith(f"error {names.ERROR_BUSY}") for r in refused), refused[:3]
        assert svc.interface.waiters.held == bounds.per_uid
        # root's `klpctl wait` is served
        assert (await call(root, "WaitConverged", "d", 0.0)).body == [False]
    finally:
        await nobody.stop()


# --- points 4 and 9: ListBlockingTasks is walked once per transition; stacks for root --------


class CountingController(FakeController):
    walks = 0

    def blocking_tasks(self) -> tuple[BlockingTask, ...]:
        self.walks += 1
        return super().blocking_tasks()


async def test_blocking_tasks_walked_once_and_stacks_only_for_root(
    permissive_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "BLOCKING_REFRESH_SECONDS", 3600.0)
    controller = CountingController()
    svc = await start_dbus(controller, permissive_address)
    root = await MessageBus(bus_address=permissive_address).connect()
    try:
        nobody = await attack(permissive_address, "ListBlockingTasks", connections=4, calls=100)
        try:
            replies = await nobody.lines(400)
        finally:
            await nobody.stop()
        # dbus-fast 2.44 (the minimum) unmarshals a struct as a list, newer ones as a tuple
        structs = {r.replace("(", "[").replace(")", "]") for r in replies}
        assert structs == {"ok [[[4242, 'sleepy', 0, '']]]"}  # no kernel stack
        assert controller.walks == 1
        (tasks,) = (await call(root, "ListBlockingTasks")).body
        assert tasks[0][3] == "[<0>] do_nanosleep+0x1/0x2"  # root sees the stack

        nobody = await attack(permissive_address, "Describe")
        try:
            (described,) = await nobody.lines(1)
        finally:
            await nobody.stop()
        assert "sleepy" in described and "do_nanosleep" not in described
        (text,) = (await call(root, "Describe")).body
        assert "do_nanosleep" in text
    finally:
        root.disconnect()
        await svc.close()


# --- Plan(rescan) is an expensive read: throttled for unprivileged callers ------------------


class CountingPlans(FakeController):
    rescans = 0

    async def plan_preview(
        self, *, rescan: bool = False, enable: Sequence[str] = (), disable: Sequence[str] = ()
    ) -> PlanPreview:
        self.rescans += rescan
        return await super().plan_preview(rescan=rescan, enable=enable, disable=disable)


async def test_plan_rescans_are_throttled_for_nobody(
    permissive_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "PLAN_RESCAN_SECONDS", 3600.0)
    controller = CountingPlans()
    svc = await start_dbus(controller, permissive_address)
    svc.interface.rescans.interval = 3600.0
    try:
        nobody = await attack(permissive_address, "Plan", "a{sv}", "rescan", calls=50)
        try:
            replies = await nobody.lines(50)
        finally:
            await nobody.stop()
        assert sum(r.startswith("ok") for r in replies) == 1, replies[:3]
        assert all(r.startswith(f"error {names.ERROR_BUSY}") for r in replies if r[:2] != "ok")
        assert controller.rescans == 1
    finally:
        await svc.close()
