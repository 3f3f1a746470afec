"""The D-Bus service against a real dbus-daemon, with a FakeController behind it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.introspection import Node
from dbus_helpers import (
    AS_NOBODY,
    FakeController,
)
from fake_polkit import start_fake_polkit

from klpd.core.model import OverallState
from klpd.core.status import (
    BusyError,
    ControlError,
    ControlFailed,
    Event,
    EventKind,
    InvalidArgumentError,
    Snapshot,
    UnknownPatchError,
)
from klpd.dbus import names
from klpd.dbus.limits import Bounds
from klpd.dbus.service import DbusService, DbusStartError, start_dbus

STATE_CHANGING: list[tuple[str, str, list[Any]]] = [
    ("Reload", "", []),
    ("EnablePatch", "s", ["lpa"]),
    ("DisablePatch", "s", ["lpa"]),
]


@pytest.fixture
async def client(dbus_address: str) -> AsyncIterator[MessageBus]:
    bus = await MessageBus(bus_address=dbus_address).connect()
    try:
        yield bus
    finally:
        bus.disconnect()


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


async def get_property(bus: MessageBus, name: str) -> Any:
    reply = await bus.call(
        Message(
            destination=names.BUS_NAME,
            path=names.OBJECT_PATH,
            interface="org.freedesktop.DBus.Properties",
            member="Get",
            signature="ss",
            body=[names.INTERFACE, name],
        )
    )
    assert reply is not None and reply.message_type is MessageType.METHOD_RETURN, reply
    variant: Variant = reply.body[0]
    return variant.value


def ok(reply: Message) -> list[Any]:
    assert reply.message_type is MessageType.METHOD_RETURN, (reply.error_name, reply.body)
    body: list[Any] = reply.body
    return body


def error(reply: Message) -> tuple[str, str]:
    assert reply.message_type is MessageType.ERROR, reply.body
    assert reply.error_name is not None
    return reply.error_name, reply.body[0]


# --- reads --------------------------------------------------------------------------------


async def test_properties(served: tuple[FakeController, DbusService], client: MessageBus) -> None:
    assert await get_property(client, "State") == "converging"
    assert await get_property(client, "KernelRelease") == "6.1.0-test-amd64"
    assert await get_property(client, "Transition") == "lpb__vmlinux"
    assert await get_property(client, "TransitionTarget") == "patched"
    assert await get_property(client, "Stalled") is True
    assert await get_property(client, "LastError") == "lpb__xfs: Device or resource busy"
    assert await get_property(client, "LastReconcile") == 1_700_000_001.5
    assert await get_property(client, "SchemaVersion") == 1
    assert await get_property(client, "Version") == "0.1.0"


async def test_describe_is_the_snapshot_json(
    served: tuple[FakeController, DbusService], client: MessageBus
) -> None:
    controller, _ = served
    (text,) = ok(await call(client, "Describe"))
    assert json.loads(text) == json.loads(controller.snap.to_json())
    assert json.loads(text)["schema_version"] == 1


async def test_list_patches(served: tuple[FakeController, DbusService], client: MessageBus) -> None:
    (patches,) = ok(await call(client, "ListPatches"))
    assert [p[0] for p in patches] == ["lpa", "lpb"]
    name, status, desired, series, version, description, modules = patches[1]
    assert (name, status, desired, series, version, description) == (
        "lpb",
        "partial",
        True,
        "lpb",
        2,
        "",
    )
    assert list(modules[1][:5]) == ["lpb__xfs", "xfs", "failed", True, False]
    assert "Device or resource busy" in modules[1][5]


async def test_describe_patch(
    served: tuple[FakeController, DbusService], client: MessageBus
) -> None:
    (text,) = ok(await call(client, "DescribePatch", "s", "lpa"))
    patch = json.loads(text)
    assert patch["cves"] == ["CVE-2026-1234"]
    assert patch["modules"][0]["functions"] == ["cmdline_proc_show"]
    assert patch["modules"][0]["patched"] is True
    # '-' is the same as '_' to the kernel: normalised before the lookup
    assert error(await call(client, "DescribePatch", "s", "nope"))[0] == names.ERROR_UNKNOWN_PATCH


async def test_blocking_tasks(
    served: tuple[FakeController, DbusService], client: MessageBus
) -> None:
    (tasks,) = ok(await call(client, "ListBlockingTasks"))
    assert [list(t) for t in tasks] == [[4242, "sleepy", 0, "[<0>] do_nanosleep+0x1/0x2"]]


async def test_wait_converged(
    served: tuple[FakeController, DbusService], client: MessageBus
) -> None:
    controller, _ = served
    assert ok(await call(client, "WaitConverged", "d", 0.0)) == [False]
    controller.waiting.clear()
    waiting = asyncio.ensure_future(call(client, "WaitConverged", "d", 30.0))
    await controller.waiting.wait()
    controller.converge()
    assert ok(await waiting) == [True]


# --- malformed arguments --------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    ["", "../../etc/passwd", "a b", "lp;rm -rf", "x" * 60, "_lead", "trail_", "lp\n", "é"],
)
async def test_bad_patch_names_refused_typed(
    served: tuple[FakeController, DbusService], client: MessageBus, bad: str
) -> None:
    controller, _ = served
    for member in ("EnablePatch", "DisablePatch", "DescribePatch"):
        name, text = error(await call(client, member, "s", bad))
        assert name == names.ERROR_INVALID_ARGUMENT, (member, text)
        assert "Traceback" not in text
    assert controller.calls == []


@pytest.mark.parametrize("timeout", [-1.0, float("nan"), float("inf"), 1e9])
async def test_bad_timeout_refused(
    served: tuple[FakeController, DbusService], client: MessageBus, timeout: float
) -> None:
    assert error(await call(client, "WaitConverged", "d", timeout))[0] == (
        names.ERROR_INVALID_ARGUMENT
    )


async def test_wrong_signature_refused(
    served: tuple[FakeController, DbusService], client: MessageBus
) -> None:
    name, _ = error(await call(client, "EnablePatch", "u", 7))
    assert name == "org.freedesktop.DBus.Error.UnknownMethod"


# --- state changes as root ------------------------------------------------------------------


async def test_state_changes_as_root(
    served: tuple[FakeController, DbusService], client: MessageBus
) -> None:
    controller, _ = served
    for member, sig, args in STATE_CHANGING:
        ok(await call(client, member, sig, *args))
    assert controller.calls == [("reload", ""), ("enable", "lpa"), ("disable", "lpa")]
    # normalised: '-' becomes '_'
    assert error(await call(client, "EnablePatch", "s", "lp-x"))[0] == names.ERROR_UNKNOWN_PATCH
    assert controller.calls[-1] == ("enable", "lp_x")


class SomethingNew(BusyError):
    """A refusal added later, not in the table: its nearest known class decides."""


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (UnknownPatchError, names.ERROR_UNKNOWN_PATCH),
        (InvalidArgumentError, names.ERROR_INVALID_ARGUMENT),
        (BusyError, names.ERROR_BUSY),
        (ControlFailed, names.ERROR_FAILED),
        (ControlError, names.ERROR_FAILED),
        (SomethingNew, names.ERROR_BUSY),
    ],
)
async def test_control_errors_are_typed(
    served: tuple[FakeController, DbusService],
    client: MessageBus,
    kind: type[ControlError],
    expected: str,
) -> None:
    controller, _ = served
    controller.fail_with = kind("the reason")
    for member, sig, args in STATE_CHANGING:
        assert error(await call(client, member, sig, *args)) == (expected, "the reason")


async def test_unexpected_exception_is_internal_without_traceback(
    served: tuple[FakeController, DbusService], client: MessageBus
) -> None:
    controller, _ = served
    controller.fail_with = ZeroDivisionError("secret /path/detail")
    name, text = error(await call(client, "Reload"))
    assert name == names.ERROR_INTERNAL
    assert "secret" not in text and "Traceback" not in text


# --- signals and PropertiesChanged ------------------------------------------------------------


async def test_signals_and_properties_changed(
    served: tuple[FakeController, DbusService], client: MessageBus
) -> None:
    controller, _ = served
    got: asyncio.Queue[Message] = asyncio.Queue()

    def on_message(msg: Message) -> bool:
        if msg.message_type is MessageType.SIGNAL and msg.path == names.OBJECT_PATH:
            got.put_nowait(msg)
        return False

    client.add_message_handler(on_message)
    match = f"type='signal',sender='{names.BUS_NAME}',path='{names.OBJECT_PATH}'"
    reply = await client.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="AddMatch",
            signature="s",
            body=[match],
        )
    )
    assert reply is not None
    ok(reply)

    events = [
        (EventKind.PATCH_APPLIED, names.SIGNAL_PATCH_APPLIED),
        (EventKind.PATCH_RETIRED, names.SIGNAL_PATCH_RETIRED),
        (EventKind.PATCH_FAILED, names.SIGNAL_PATCH_FAILED),
        (EventKind.TRANSITION_STARTED, names.SIGNAL_TRANSITION_STARTED),
        (EventKind.TRANSITION_FINISHED, names.SIGNAL_TRANSITION_FINISHED),
        (EventKind.TRANSITION_STALLED, names.SIGNAL_TRANSITION_STALLED),
    ]
    for kind, member in events:
        controller.publish(controller.snap, Event(kind, "lpb", "lpb__xfs", f"d-{member}"))
        msg = await asyncio.wait_for(got.get(), 10)
        assert (msg.interface, msg.member, msg.signature) == (names.INTERFACE, member, "sss")
        assert msg.body == ["lpb", "lpb__xfs", f"d-{member}"]
    assert got.empty()  # no PropertiesChanged: nothing changed

    converged: Snapshot = replace(controller.snap, state=OverallState.CONVERGED, transition=None)
    controller.publish(converged, Event(EventKind.STATE_CHANGED))
    msg = await asyncio.wait_for(got.get(), 10)
    assert msg.member == "PropertiesChanged"
    iface, changed, invalidated = msg.body
    assert iface == names.INTERFACE
    assert {k: v.value for k, v in changed.items()} == {
        "State": "converged",
        "Transition": "",
        "TransitionTarget": "",
        "Stalled": False,
    }
    assert invalidated == []


# --- lifecycle ------------------------------------------------------------------------------


async def test_second_instance_fails_clearly(
    served: tuple[FakeController, DbusService],
    dbus_address: str,
) -> None:
    with pytest.raises(DbusStartError, match="already owned"):
        await start_dbus(FakeController(), dbus_address)


async def test_unreachable_bus_fails_clearly() -> None:
    with pytest.raises(DbusStartError, match="cannot connect"):
        await start_dbus(FakeController(), "unix:path=/nonexistent/klpd-bus")


async def test_close_releases_the_name(dbus_address: str) -> None:
    service = await start_dbus(FakeController(), dbus_address)
    await service.close()
    service = await start_dbus(FakeController(), dbus_address)
    await service.close()


# --- authorisation: non-root callers ---------------------------------------------------------


def busctl_as_nobody(address: str, *args: str) -> list[str]:
    return [*AS_NOBODY, "busctl", f"--address={address}", *args]


async def run(
    argv: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command without blocking the loop that serves the bus."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return subprocess.CompletedProcess(argv, proc.returncode, out.decode(), err.decode())


def manager_call(address: str, member: str, sig: str, args: list[Any]) -> list[str]:
    argv = ["call", names.BUS_NAME, names.OBJECT_PATH, names.INTERFACE, member]
    if sig:
        argv += [sig, *map(str, args)]
    return busctl_as_nobody(address, *argv)


@pytest.mark.parametrize(("member", "sig", "args"), STATE_CHANGING)
async def test_nobody_refused_without_polkit(
    served: tuple[FakeController, DbusService],
    dbus_address: str,
    member: str,
    sig: str,
    args: list[Any],
) -> None:
    controller, _ = served
    done = await run(manager_call(dbus_address, member, sig, args))
    assert done.returncode != 0
    assert "polkit" in done.stderr and "unreachable" in done.stderr, done.stderr
    assert controller.calls == []


@pytest.mark.parametrize(("member", "sig", "args"), STATE_CHANGING)
async def test_nobody_refused_by_polkit(
    served: tuple[FakeController, DbusService],
    dbus_address: str,
    member: str,
    sig: str,
    args: list[Any],
) -> None:
    controller, _ = served
    polkit_bus, authority = await start_fake_polkit(dbus_address, allow=False)
    try:
        done = await run(manager_call(dbus_address, member, sig, args))
    finally:
        polkit_bus.disconnect()
    assert done.returncode != 0
    assert "uid 65534 has neither" in done.stderr, done.stderr
    assert controller.calls == []
    ((subject, action, _flags),) = authority.checks
    assert subject.startswith("system-bus-name::") and action == names.POLKIT_ACTION


async def test_nobody_allowed_by_polkit(
    served: tuple[FakeController, DbusService],
    dbus_address: str,
) -> None:
    controller, _ = served
    polkit_bus, authority = await start_fake_polkit(dbus_address, allow=True)
    try:
        done = await run(manager_call(dbus_address, "EnablePatch", "s", ["lpa"]))
    finally:
        polkit_bus.disconnect()
    assert done.returncode == 0, done.stderr
    assert controller.calls == [("enable", "lpa")]
    assert len(authority.checks) == 1


async def test_nobody_may_read(
    served: tuple[FakeController, DbusService],
    dbus_address: str,
) -> None:
    done = await run(manager_call(dbus_address, "Describe", "", []))
    assert done.returncode == 0, done.stderr
    done = await run(
        busctl_as_nobody(
            dbus_address,
            "get-property",
            names.BUS_NAME,
            names.OBJECT_PATH,
            names.INTERFACE,
            "State",
        )
    )
    assert done.stdout.strip() == 's "converging"'


async def test_nobody_cannot_own_the_name(dbus_address: str) -> None:
    script = (
        "import asyncio\n"
        "from klpd.dbus.service import start_dbus, DbusStartError\n"
        "from dbus_helpers import FakeController\n"
        "async def main():\n"
        "    try:\n"
        f"        await start_dbus(FakeController(), {dbus_address!r})\n"
        "    except DbusStartError as e:\n"
        "        print(e)\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = await run([*AS_NOBODY, sys.executable, "-c", script], env)
    assert "refused the name" in done.stdout, (done.stdout, done.stderr)


# --- a client nobody here wrote ---------------------------------------------------------------


async def test_busctl_introspects_and_reads(
    served: tuple[FakeController, DbusService],
    dbus_address: str,
) -> None:
    done = await run(
        ["busctl", f"--address={dbus_address}", "introspect", names.BUS_NAME, names.OBJECT_PATH]
    )
    assert done.returncode == 0, done.stderr
    for member in ("Describe", "ListPatches", "EnablePatch", "PatchApplied", "State"):
        assert member in done.stdout
    done = await run(
        [
            "busctl",
            f"--address={dbus_address}",
            "get-property",
            names.BUS_NAME,
            names.OBJECT_PATH,
            names.INTERFACE,
            "KernelRelease",
            "Stalled",
        ]
    )
    assert done.stdout.split("\n")[:2] == ['s "6.1.0-test-amd64"', "b true"]


async def test_introspection_matches_docs(
    served: tuple[FakeController, DbusService],
    dbus_address: str,
) -> None:

    done = await run(
        [
            "gdbus",
            "introspect",
            "--address",
            dbus_address,
            "--dest",
            names.BUS_NAME,
            "--object-path",
            names.OBJECT_PATH,
            "--xml",
        ]
    )
    assert done.returncode == 0, done.stderr
    live = Node.parse(done.stdout)
    doc = Node.parse((Path(__file__).parents[2] / "docs/io.github.Klpd1.xml").read_text())
    (live_iface,) = [i for i in live.interfaces if i.name == names.INTERFACE]
    (doc_iface,) = doc.interfaces
    assert ET.tostring(live_iface.to_xml()) == ET.tostring(doc_iface.to_xml())


async def test_waiters_are_bounded(
    served: tuple[FakeController, DbusService], client: MessageBus
) -> None:
    controller, service = served
    service.interface.waiters.bounds = Bounds(total=1, reserve=0, per_uid=1, per_connection=1)
    controller.waiting.clear()
    first = asyncio.ensure_future(call(client, "WaitConverged", "d", 30.0))
    await controller.waiting.wait()
    assert error(await call(client, "WaitConverged", "d", 30.0))[0] == names.ERROR_BUSY
    controller.converge()
    assert ok(await first) == [True]
    assert ok(await call(client, "WaitConverged", "d", 1.0)) == [True]


def test_polkit_policy_declares_the_action() -> None:
    root = ET.parse(Path(__file__).parents[2] / "etc/polkit-1/actions/io.github.klpd1.policy")
    (action,) = root.getroot().findall("action")
    assert action.get("id") == names.POLKIT_ACTION
    defaults = action.find("defaults")
    assert defaults is not None
    assert {d.tag: d.text for d in defaults} == dict.fromkeys(
        ("allow_any", "allow_inactive", "allow_active"), "auth_admin"
    )


def test_bus_policy_only_root_owns_the_name() -> None:
    root = ET.parse(Path(__file__).parents[2] / "etc/dbus-1/system.d/io.github.Klpd1.conf")
    owners = [
        (policy.attrib, allow.get("own"))
        for policy in root.getroot().findall("policy")
        for allow in policy.findall("allow")
        if allow.get("own")
    ]
    assert owners == [({"user": "root"}, names.BUS_NAME)]
