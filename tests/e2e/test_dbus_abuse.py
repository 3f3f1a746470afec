"""Issue 10's abuse of the D-Bus API, against the real klpd on the simulated kernel.

One klpd serves the whole module, on a private dbus-daemon whose policy lets every method
call through (the shipped system bus policy would stop some of these at the bus): klpd
itself must answer each with a typed error, keep its memory bounded, keep serving root,
and still be the same connection afterwards (a dropped connection would take its name
and every caller's pending call with it). Latencies are not asserted here:
``bench/dbus_load.py`` measures them.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_flood import flood_argv
from dbus_helpers import AS_NOBODY, FakeController, start_private_bus
from fake_polkit import start_fake_polkit
from klpd_harness import KlpdProcess
from klpd_sim.harness import SimKernel

from klpd.dbus import names
from klpd.dbus.limits import AUTH_BOUNDS
from klpd.dbus.service import start_dbus

PERMISSIVE_POLICY = """<busconfig>
  <policy user="root"><allow own="io.github.Klpd1"/></policy>
  <policy context="default"><allow send_type="method_call"/></policy>
</busconfig>
"""
PROPERTIES = "org.freedesktop.DBus.Properties"
UNKNOWN_METHOD = "org.freedesktop.DBus.Error.UnknownMethod"
MIB = 1024 * 1024
# klpd's memory may grow this much over a flood (Python's allocator keeps what it took).
RSS_GROWTH_KIB = 20 * 1024


@dataclass
class Served:
    address: str
    klpd: KlpdProcess
    owner: str  # klpd's unique name: a dropped and re-made connection gets another


def name_owner(address: str) -> str:
    argv = ["busctl", f"--address={address}", "call", "org.freedesktop.DBus"]
    argv += ["/org/freedesktop/DBus", "org.freedesktop.DBus", "GetNameOwner", "s"]
    out = subprocess.run([*argv, names.BUS_NAME], capture_output=True, text=True, check=True)
    return out.stdout.split('"')[1]  # s ":1.3"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("abuse")
    policy = workdir / "permissive.conf"
    policy.write_text(PERMISSIVE_POLICY)
    bus = start_private_bus(policy)
    try:
        with SimKernel(transition_ms=100) as sim:
            sim.modprobe("ext4")
            dbus = {"enabled": True, "bus": bus.address}
            k = KlpdProcess(sim, workdir, {"patches": {"desired": ["lpa"]}, "dbus": dbus})
            try:
                k.start()
                k.wait_state("converged", 60)
                yield Served(bus.address, k, name_owner(bus.address))
            finally:
                k.close()
    finally:
        bus.stop()


@pytest.fixture
async def root(served: Served) -> AsyncIterator[MessageBus]:
    bus = await MessageBus(bus_address=served.address).connect()
    try:
        yield bus
    finally:
        bus.disconnect()


async def call(
    bus: MessageBus,
    member: str,
    signature: str = "",
    body: list[Any] | None = None,
    *,
    interface: str | None = names.INTERFACE,
    path: str = names.OBJECT_PATH,
) -> Message:
    msg = Message(
        destination=names.BUS_NAME,
        path=path,
        interface=interface,
        member=member,
        signature=signature,
        body=body or [],
    )
    reply = await asyncio.wait_for(bus.call(msg), 60)
    assert reply is not None
    return reply


def error_name(reply: Message) -> str:
    assert reply.message_type is MessageType.ERROR, reply.body
    assert reply.error_name is not None
    return reply.error_name


async def still_serves(served: Served, root: MessageBus) -> None:
    """klpd runs, still on the same connection, and answers root."""
    served.klpd.check_alive()
    assert name_owner(served.address) == served.owner, "klpd lost its bus connection"
    reply = await call(root, "Describe")
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    assert '"state": "converged"' in reply.body[0]


def rss_kib(served: Served) -> int:
    return served.klpd.memory_kib()["VmRSS"]


# --- oversized arguments ---------------------------------------------------------------------

OVERSIZED: dict[str, tuple[str | None, str, str, list[Any]]] = {
    "EnablePatch 1 MiB": (names.INTERFACE, "EnablePatch", "s", ["x" * MIB]),
    "DisablePatch 1 MiB": (names.INTERFACE, "DisablePatch", "s", ["lp" * (MIB // 2)]),
    "DescribePatch 1 MiB": (names.INTERFACE, "DescribePatch", "s", ["é" * MIB]),
    # quoted back repr()'d, 4 bytes a character: 36 MB, over the bus's 32 MiB limit
    "DescribePatch 9 MB of control characters": (
        names.INTERFACE,
        "DescribePatch",
        "s",
        ["\x01" * 9_000_000],
    ),
    "DescribePatch without interface": (None, "DescribePatch", "s", ["x" * MIB]),
    "Plan 100,000 names": (
        names.INTERFACE,
        "Plan",
        "a{sv}",
        [{"enable": Variant("as", ["lpa"] * 100_000)}],
    ),
    "Plan 1 MiB option name": (names.INTERFACE, "Plan", "a{sv}", [{"o" * MIB: Variant("b", True)}]),
    "Get 1 MiB property name": (PROPERTIES, "Get", "ss", [names.INTERFACE, "P" * MIB]),
    "Get 1 MiB interface name": (PROPERTIES, "Get", "ss", ["i" * MIB, "State"]),
}


@pytest.mark.parametrize("case", OVERSIZED)
async def test_oversized_arguments_refused_typed(
    served: Served, root: MessageBus, case: str
) -> None:
    interface, member, signature, body = OVERSIZED[case]
    reply = await call(root, member, signature, body, interface=interface)
    assert error_name(reply) == names.ERROR_INVALID_ARGUMENT, reply.body
    assert len(reply.body[0]) < 200, "the error quotes the argument back"
    await still_serves(served, root)


async def test_oversized_calls_keep_memory_bounded(served: Served, root: MessageBus) -> None:
    big = ["\x01" * (8 * MIB)]
    assert error_name(await call(root, "DescribePatch", "s", big)) == names.ERROR_INVALID_ARGUMENT
    before = rss_kib(served)
    for _ in range(20):  # 160 MiB in all
        reply = await call(root, "DescribePatch", "s", big)
        assert error_name(reply) == names.ERROR_INVALID_ARGUMENT
    assert rss_kib(served) - before < RSS_GROWTH_KIB
    await still_serves(served, root)


# --- invalid UTF-8: the bus daemon validates every message ---------------------------------


class RawConnection:
    """A bus connection over a plain socket, to send bytes no D-Bus library would."""

    def __init__(self, address: str) -> None:
        path = address.split("unix:path=", 1)[1].split(",", 1)[0]
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)  # a deadline for a failing test, not a synchronisation
        self.sock.connect(path)
        uid = str(os.getuid()).encode().hex().encode()
        self.sock.sendall(b"\0AUTH EXTERNAL " + uid + b"\r\n")
        assert self.sock.recv(4096).startswith(b"OK "), "EXTERNAL authentication failed"
        self.sock.sendall(b"BEGIN\r\n")
        self.send(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="Hello",
                serial=1,
            )
        )

    def send(self, msg: Message, replace: tuple[bytes, bytes] = (b"", b"")) -> None:
        data = bytes(msg._marshall(False))
        old, new = replace
        if old:
            assert data.count(old) == 1
            data = data.replace(old, new)
        self.sock.sendall(data)

    def read_until(self, wanted: bytes) -> bytes:
        """What comes until ``wanted`` was in it, or the bus closed the connection."""
        got = b""
        while wanted not in got and (chunk := self.sock.recv(65536)):
            got += chunk
        return got

    def close(self) -> None:
        self.sock.close()


def describe_patch(name: str) -> Message:
    return Message(
        destination=names.BUS_NAME,
        path=names.OBJECT_PATH,
        interface=names.INTERFACE,
        member="DescribePatch",
        signature="s",
        body=[name],
        serial=2,
    )


@pytest.mark.parametrize(
    "bad",
    [b"\xff\xfe", b"lp\xc0\x80a", b"\xed\xa0\x80", b"lp\x00a", b"\xf4\x90\x80\x80"],
    ids=["not-utf8", "overlong-nul", "surrogate", "embedded-nul", "above-u10ffff"],
)
async def test_invalid_utf8_is_dropped_by_the_bus(
    served: Served, root: MessageBus, bad: bytes
) -> None:
    raw = RawConnection(served.address)
    try:
        placeholder = "Q" * len(bad)
        raw.send(describe_patch(placeholder), (placeholder.encode(), bad))
        got = raw.read_until(b"never sent")
    finally:
        raw.close()
    assert b"io.github.Klpd1.Error" not in got  # klpd never saw it: the bus hung up on us
    await still_serves(served, root)


async def test_raw_connection_gets_klpds_answer(served: Served) -> None:
    """The same bytes with a valid name reach klpd (the test above can fail)."""
    raw = RawConnection(served.address)
    try:
        raw.send(describe_patch("QQ"), (b"QQ", b"lq"))
        assert names.ERROR_UNKNOWN_PATCH.encode() in raw.read_until(b"UnknownPatch")
    finally:
        raw.close()


# --- unknown members, interfaces, paths; wrong signatures ------------------------------------

UNKNOWN: dict[str, tuple[str, str | None, str, str, list[Any], str]] = {
    "unknown member": (names.OBJECT_PATH, names.INTERFACE, "Frobnicate", "", [], UNKNOWN_METHOD),
    "unknown member, no interface": (names.OBJECT_PATH, None, "Frobnicate", "", [], UNKNOWN_METHOD),
    "unknown interface": (
        names.OBJECT_PATH,
        "io.github.Klpd1.Nope",
        "Describe",
        "",
        [],
        UNKNOWN_METHOD,
    ),
    "wrong path": (
        "/io/github/Klpd1/x",
        names.INTERFACE,
        "EnablePatch",
        "s",
        ["lpa"],
        UNKNOWN_METHOD,
    ),
    "root path": ("/", names.INTERFACE, "Describe", "", [], UNKNOWN_METHOD),
    "unknown property": (
        names.OBJECT_PATH,
        PROPERTIES,
        "Get",
        "ss",
        [names.INTERFACE, "Nope"],
        "org.freedesktop.DBus.Error.UnknownProperty",
    ),
    "property of an unknown interface": (
        names.OBJECT_PATH,
        PROPERTIES,
        "Get",
        "ss",
        ["io.github.Klpd1.Nope", "State"],
        "org.freedesktop.DBus.Error.UnknownInterface",
    ),
    "set a read-only property": (
        names.OBJECT_PATH,
        PROPERTIES,
        "Set",
        "ssv",
        [names.INTERFACE, "State", Variant("s", "converged")],
        "org.freedesktop.DBus.Error.PropertyReadOnly",
    ),
    "property on a wrong path": (
        "/nope",
        PROPERTIES,
        "Get",
        "ss",
        [names.INTERFACE, "State"],
        "org.freedesktop.DBus.Error.UnknownObject",
    ),
    "Get with a wrong signature": (
        names.OBJECT_PATH,
        PROPERTIES,
        "Get",
        "s",
        [names.INTERFACE],
        UNKNOWN_METHOD,
    ),
}


@pytest.mark.parametrize("case", UNKNOWN)
async def test_unknown_targets_refused_typed(served: Served, root: MessageBus, case: str) -> None:
    path, interface, member, signature, body, expected = UNKNOWN[case]
    reply = await call(root, member, signature, body, interface=interface, path=path)
    assert error_name(reply) == expected, reply.body
    await still_serves(served, root)


def documented_methods() -> dict[str, str]:
    """Each method of docs/io.github.Klpd1.xml (the introspection data, checked against the
    live service by test_dbus.py) with its in-signature."""
    doc = ET.parse(Path(__file__).parents[2] / "docs/io.github.Klpd1.xml")
    return {
        m.attrib["name"]: "".join(
            a.attrib["type"] for a in m.iter("arg") if a.attrib.get("direction") == "in"
        )
        for m in doc.iter("method")
    }


METHODS = documented_methods()
WRONG_BODIES: dict[str, list[Any]] = {
    "": [],
    "u": [7],
    "ss": ["lpa", "lpa"],
    "d": [0.0],
    "s": ["lpa"],
    "a{ss}": [{"rescan": "yes"}],
}


@pytest.mark.parametrize("member", METHODS)
async def test_wrong_signatures_refused_typed(
    served: Served, root: MessageBus, member: str
) -> None:
    assert len(METHODS) == 10  # the documented interface was read
    for signature, body in WRONG_BODIES.items():
        if signature == METHODS[member]:
            continue
        for interface in (names.INTERFACE, None):
            reply = await call(root, member, signature, body, interface=interface)
            assert error_name(reply) == UNKNOWN_METHOD, (signature, interface, reply.body)
    await still_serves(served, root)


# --- an unprivileged flood of state changes ---------------------------------------------------


class Flood:
    """``tests/dbus_flood.py`` as ``nobody``, one line per reply."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, address: str, connections: int, calls: int) -> Flood:
        argv = flood_argv(address, "EnablePatch", "s", "lpa", connections=connections, calls=calls)
        proc = await asyncio.create_subprocess_exec(
            *AS_NOBODY, *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        return cls(proc)

    async def lines(self, n: int) -> list[str]:
        assert self.proc.stdout is not None
        out: list[str] = []
        for _ in range(n):
            raw = await asyncio.wait_for(self.proc.stdout.readline(), 120)
            assert raw, f"the flood exited after {len(out)} replies"
            out.append(raw.decode().rstrip("\n"))
        return out

    async def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await self.proc.wait()


async def root_is_served(root: MessageBus) -> None:
    """root's state change (lpa is desired already: a reconcile with nothing to do) and its
    wait for that reconcile are answered."""
    reply = await call(root, "EnablePatch", "s", ["lpa"])
    assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    assert (await call(root, "WaitConverged", "d", [60.0])).body == [True]


async def until(condition: Any, what: str, timeout: float = 60.0) -> None:
    """Poll ``condition()`` (something in this very process) until it is true."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)
    assert condition(), what


async def test_flood_while_polkit_hangs_is_bounded_per_uid(
    served: Served, root: MessageBus
) -> None:
    polkit_bus, authority = await start_fake_polkit(served.address, allow=False)
    authority.answering.clear()  # polkit takes as long as the test wants
    connections, calls = 8, 250
    before = rss_kib(served)
    flood = await Flood.start(served.address, connections, calls)
    try:
        held = AUTH_BOUNDS.per_uid
        # the first `held` calls wait for polkit and hold their connections; the rest is refused
        refused = await flood.lines((connections - held) * calls)
        assert set(refused) == {f"error {names.ERROR_BUSY}"}
        await until(lambda: authority.pending == held, "the held checks reach polkit")
        assert len(authority.checks) == held
        await root_is_served(root)
        assert rss_kib(served) - before < RSS_GROWTH_KIB
        authority.answering.set()
        answered = await flood.lines(held)
        assert set(answered) == {f"error {names.ERROR_ACCESS_DENIED}"}
    finally:
        authority.answering.set()
        await flood.stop()
        polkit_bus.disconnect()
    await still_serves(served, root)


async def test_flood_without_polkit_is_refused_and_bounded(
    served: Served, root: MessageBus
) -> None:
    connections, calls = 8, 250
    before = rss_kib(served)
    flood = await Flood.start(served.address, connections, calls)
    try:
        first = await flood.lines(connections)
        await root_is_served(root)  # in the middle of the flood
        rest = await flood.lines(connections * calls - connections)
    finally:
        await flood.stop()
    # refused by klpd (polkit unreachable), or at the bound on checks in flight per uid
    refusals = {f"error {names.ERROR_ACCESS_DENIED}", f"error {names.ERROR_BUSY}"}
    assert set(first + rest) <= refusals
    assert f"error {names.ERROR_ACCESS_DENIED}" in first + rest
    assert rss_kib(served) - before < RSS_GROWTH_KIB
    await still_serves(served, root)


# --- many callers at once ---------------------------------------------------------------------


async def test_concurrent_describes_all_answered(served: Served, root: MessageBus) -> None:
    clients = [await MessageBus(bus_address=served.address).connect() for _ in range(100)]
    try:
        replies = await asyncio.gather(
            *(call(c, "Describe") for c in clients for _ in range(10)),
        )
    finally:
        for c in clients:
            c.disconnect()
    assert {r.message_type for r in replies} == {MessageType.METHOD_RETURN}
    await still_serves(served, root)


async def test_a_full_socket_does_not_drop_the_bus(dbus_address: str) -> None:
    """Replies faster than dbus-daemon reads them fill klpd's socket: dbus-fast took the
    EAGAIN for a dead bus (klpd.dbus.transport). A tiny send buffer makes it certain."""
    svc = await start_dbus(FakeController(), dbus_address)
    # 50 calls each: dbus-daemon lets a connection wait for 128 replies at most
    clients = [await MessageBus(bus_address=dbus_address).connect() for _ in range(4)]
    try:
        sock = svc.bus._sock
        assert sock is not None
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        replies = await asyncio.gather(*(call(c, "Describe") for c in clients for _ in range(50)))
        assert {r.message_type for r in replies} == {MessageType.METHOD_RETURN}, replies[-1].body
        assert svc.bus.connected
    finally:
        for c in clients:
            c.disconnect()
        await svc.close()
