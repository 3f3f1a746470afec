"""The real klpd on the simulated kernel, serving a private dbus-daemon that lets every
method call through, for the abuse tests (tests/e2e/test_dbus_abuse.py, test_dbus_flood.py).

One klpd per test module (``served``, module-scoped; import it with ``root``)::

    from klpd_on_bus import Served, root, served  # noqa: F401  (fixtures)

The bus's policy lets every method call through (the shipped system bus policy would stop
some of the abuse at the bus): klpd itself must answer each call with a typed error, keep
its memory bounded, keep serving root, and still be the same connection afterwards (a
dropped connection takes klpd's name and every caller's pending call with it):
:func:`still_serves`.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_helpers import start_private_bus
from klpd_harness import KlpdProcess
from klpd_sim.harness import SimKernel

from klpd.dbus import names

PERMISSIVE_POLICY = """<busconfig>
  <policy user="root"><allow own="io.github.Klpd1"/></policy>
  <policy context="default"><allow send_type="method_call"/></policy>
</busconfig>
"""
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
