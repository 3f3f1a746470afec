"""Issue 10's malformed calls, against the real klpd on the simulated kernel
(tests/klpd_on_bus.py): oversized and invalid-UTF-8 strings, unknown members, interfaces
and paths, wrong signatures on every documented method. Each gets a typed error, and klpd
still serves afterwards on the same connection.
"""

from __future__ import annotations

import os
import socket
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, Variant
from dbus_fast.aio import MessageBus
from klpd_on_bus import (
    RSS_GROWTH_KIB,
    Served,
    call,
    error_name,
    root,
    rss_kib,
    served,
    still_serves,
)

from klpd.dbus import names

__all__ = ["root", "served"]  # fixtures

PROPERTIES = "org.freedesktop.DBus.Properties"
UNKNOWN_METHOD = "org.freedesktop.DBus.Error.UnknownMethod"
MIB = 1024 * 1024

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
