"""Issue 11, points 6 and 7: klpctl believes only klpd, and shows nothing raw.

The attacker is uid 65534 on the private bus (system-bus-like policy: anyone may send a
signal, also straight to another connection, which no match rule filters).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from dbus_helpers import AS_NOBODY, FakeController, run_env

from klpd.client import wire
from klpd.core.model import BlockingTask
from klpd.core.status import Event, EventKind
from klpd.dbus.service import DbusService

KLPCTL = str(Path(sys.executable).parent / "klpctl")
ESC = "\x1b]0;owned\x07\x1b[2J"

# Sends forged signals to every connection on the bus (and broadcast), then makes a round
# trip to the bus so that all of them were routed before it prints "sent".
FORGER = """
import asyncio, sys
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
address, count = sys.argv[1], int(sys.argv[2])
KLPD, PATH, IFACE = "io.github.Klpd1", "/io/github/Klpd1", "io.github.Klpd1.Manager"
def forged(dest):
    sig = MessageType.SIGNAL
    yield Message(message_type=sig, destination=dest, path=PATH, interface=IFACE,
        member="PatchApplied", signature="sss", body=["\\x1b]0;owned\\x07lpa", "lpa__x", ""])
    yield Message(message_type=sig, destination=dest, path=PATH, interface=IFACE,
        member="PatchFailed")  # empty body: crashed klpctl with IndexError
    yield Message(message_type=sig, destination=dest, path=PATH,
        interface="org.freedesktop.DBus.Properties", member="PropertiesChanged",
        signature="sa{sv}as", body=[IFACE, {"State": Variant("s", "converged")}, []])
    yield Message(message_type=sig, destination=dest, path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus", member="NameOwnerChanged", signature="sss",
        body=[KLPD, ":1.1", ""])
async def main():
    bus = await MessageBus(bus_address=address).connect()
    reply = await bus.call(Message(destination="org.freedesktop.DBus",
        path="/org/freedesktop/DBus", interface="org.freedesktop.DBus", member="ListNames"))
    targets = [n for n in reply.body[0] if n.startswith(":")] + [None]
    for _ in range(count):
        for dest in targets:
            for msg in forged(dest):
                bus.send(msg)
        await flushed(bus)  # dbus-fast's writer gives up when far ahead of the socket
    print("sent", flush=True)
async def flushed(bus):
    await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus", member="GetId"))
asyncio.run(main())
"""


async def forge(address: str, count: int = 1) -> None:
    proc = await asyncio.create_subprocess_exec(
        *AS_NOBODY,
        sys.executable,
        "-c",
        FORGER,
        address,
        str(count),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert out == b"sent\n", err.decode()


async def test_monitor_believes_only_klpd(
    served: tuple[FakeController, DbusService], dbus_address: str
) -> None:
    controller, _ = served
    proc = await asyncio.create_subprocess_exec(
        KLPCTL,
        "monitor",
        "--json",
        "--count",
        "1",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=run_env(dbus_address),
    )
    assert proc.stdout is not None and proc.stderr is not None
    await asyncio.wait_for(proc.stderr.readline(), 30)  # subscribed
    await forge(dbus_address)
    controller.publish(controller.snap, Event(EventKind.PATCH_RETIRED, "lpb", "lpb__xfs"))
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert b"Traceback" not in err, err.decode()
    assert proc.returncode == 0, err.decode()
    (event,) = [json.loads(line) for line in out.decode().splitlines()]
    del event["time"]
    assert event == {"event": "PatchRetired", "patch": "lpb", "module": "lpb__xfs", "detail": ""}


async def test_monitor_text_is_escaped(
    served: tuple[FakeController, DbusService], dbus_address: str
) -> None:
    controller, _ = served
    proc = await asyncio.create_subprocess_exec(
        KLPCTL,
        "monitor",
        "--count",
        "1",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=run_env(dbus_address),
    )
    assert proc.stdout is not None and proc.stderr is not None
    await asyncio.wait_for(proc.stderr.readline(), 30)
    controller.publish(
        controller.snap, Event(EventKind.PATCH_FAILED, "lpb", "lpb__xfs", f"comm {ESC}\nforged")
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode()
    assert "\x1b" not in text and "\x07" not in text
    assert text.count("\n") == 1 and "\\nforged" in text, text


def test_a_waiting_client_keeps_no_signals(dbus_address: str) -> None:
    with wire.Connection(dbus_address) as conn:
        asyncio.run(forge(dbus_address, count=500))  # 2,000 unicast signals to conn
        conn.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "GetId")
        assert conn._signals == []


def test_a_monitor_keeps_a_bounded_queue(dbus_address: str) -> None:
    with wire.Connection(dbus_address) as conn:
        conn.add_match("type='signal',sender='io.github.Klpd1'")
        asyncio.run(forge(dbus_address, count=400))  # 1,600 unicast signals to conn
        conn.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "GetId")
        assert len(conn._signals) == wire.MAX_QUEUED_SIGNALS
        assert conn.dropped_signals >= 1600 - wire.MAX_QUEUED_SIGNALS  # (+ NameAcquired)


@pytest.mark.parametrize("verb", ["status", "blocking", "list", "show", "plan"])
async def test_terminal_output_is_escaped(
    served: tuple[FakeController, DbusService], dbus_address: str, verb: str
) -> None:
    controller, _ = served
    hostile = f"a\nklpd: CONVERGED{ESC}"
    task = BlockingTask(4242, hostile, 0, f"[<0>] x+0x1/0x2\n{ESC}")
    snap = controller.snap
    t = snap.transition
    assert t is not None
    lpa = replace(snap.patches[0], description=hostile, cves=(hostile,))
    controller.blocking = (task,)
    controller.preview = replace(controller.preview, transition=hostile)
    controller.snap = replace(
        snap, patches=(lpa, *snap.patches[1:]), transition=replace(t, blocking=(task,))
    )
    args = [verb, "lpa"] if verb == "show" else [verb]
    proc = await asyncio.create_subprocess_exec(
        KLPCTL, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=run_env(dbus_address)
    )
    out, err = await proc.communicate()
    text = out.decode() + err.decode()
    assert "\x1b" not in text and "\x07" not in text, text
    assert "a\\nklpd: CONVERGED\\x1b" in text, text
    assert not any(line.startswith("klpd: CONVERGED") for line in text.splitlines())
