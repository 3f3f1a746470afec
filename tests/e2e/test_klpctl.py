"""klpctl as a subprocess against the service on a private dbus-daemon."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from dbus_helpers import (
    AS_NOBODY,
    FakeController,
    run_env,
    sample_snapshot,
)
from hypothesis import given
from hypothesis import strategies as st
from klpd_harness import MakeKlpd, applied, loaded, wait_for
from klpd_sim.harness import SimKernel

from klpd.client import ctl, render
from klpd.core.model import OverallState
from klpd.core.status import BusyError, Event, EventKind
from klpd.dbus import names
from klpd.dbus.service import DbusService, start_dbus

KLPCTL = str(Path(sys.executable).parent / "klpctl")


async def klpctl(
    address: str, *args: str, as_nobody: bool = False
) -> subprocess.CompletedProcess[str]:
    argv = [*AS_NOBODY, KLPCTL, *args] if as_nobody else [KLPCTL, *args]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=run_env(address),
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    assert b"Traceback" not in err, err
    return subprocess.CompletedProcess(argv, proc.returncode, out.decode(), err.decode())


# --- exit codes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "code"),
    [
        (OverallState.CONVERGED, 0),
        (OverallState.CONVERGING, 1),
        (OverallState.DEGRADED, 2),
        (OverallState.FAILED, 3),
    ],
)
async def test_status_exit_code_is_the_state(
    served: tuple[FakeController, DbusService],
    dbus_address: str,
    state: OverallState,
    code: int,
) -> None:
    controller, _ = served
    controller.publish(sample_snapshot(state))
    done = await klpctl(dbus_address, "status")
    assert done.returncode == code, done.stderr
    assert done.stdout.startswith(f"klpd: {state.value.upper()}")
    done = await klpctl(dbus_address, "status", "--json")
    assert done.returncode == code
    assert json.loads(done.stdout) == json.loads(controller.snap.to_json())


async def test_daemon_not_running(dbus_address: str) -> None:
    done = await klpctl(dbus_address, "status")
    assert done.returncode == ctl.EXIT_NOT_RUNNING
    assert "klpd is not running" in done.stderr
    done = await klpctl("unix:path=/nonexistent/bus", "status")
    assert done.returncode == ctl.EXIT_NOT_RUNNING
    assert "not reachable" in done.stderr


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["status", "--bogus"],
        ["show"],
        ["enable", "a", "b"],
        ["wait", "--timeout", "soon"],
        ["wait", "--timeout", "-1"],
        ["--bus"],
    ],
)
async def test_usage_errors(
    served: tuple[FakeController, DbusService],
    dbus_address: str,
    argv: list[str],
) -> None:
    done = await klpctl(dbus_address, *argv)
    assert done.returncode == ctl.EXIT_USAGE, (done.stdout, done.stderr)


@pytest.mark.parametrize("verb", ["show", "enable", "disable"])
@pytest.mark.parametrize("patch", ["no such", "../x", "nope"])
async def test_invalid_or_unknown_patch(
    served: tuple[FakeController, DbusService],
    dbus_address: str,
    verb: str,
    patch: str,
) -> None:
    done = await klpctl(dbus_address, verb, patch)
    assert done.returncode == ctl.EXIT_USAGE, done.stderr
    assert patch in done.stderr


@pytest.mark.parametrize("argv", [["reload"], ["enable", "lpa"], ["disable", "lpa"]])
async def test_nobody_gets_permission_denied(
    served: tuple[FakeController, DbusService],
    dbus_address: str,
    argv: list[str],
) -> None:
    controller, _ = served
    done = await klpctl(dbus_address, *argv, as_nobody=True)
    assert done.returncode == ctl.EXIT_PERMISSION
    assert done.stderr.startswith("klpctl: permission denied:")
    assert "polkit" in done.stderr
    assert controller.calls == []
    # reads stay open to nobody
    assert (await klpctl(dbus_address, "status", as_nobody=True)).returncode == 1


async def test_state_changes_as_root(
    served: tuple[FakeController, DbusService],
    dbus_address: str,
) -> None:
    controller, _ = served
    for argv in (["reload"], ["enable", "lpa"], ["disable", "lpa"]):
        done = await klpctl(dbus_address, *argv)
        assert done.returncode == 0, done.stderr
    assert controller.calls == [("reload", ""), ("enable", "lpa"), ("disable", "lpa")]
    controller.fail_with = BusyError("a transition is running")
    done = await klpctl(dbus_address, "reload")
    assert done.returncode == ctl.EXIT_FAILED
    assert done.stderr == "klpctl: Busy: a transition is running\n"


# --- wait -------------------------------------------------------------------------------------


async def test_wait_times_out_with_1(
    served: tuple[FakeController, DbusService],
    dbus_address: str,
) -> None:
    done = await klpctl(dbus_address, "wait", "--timeout", "0")
    assert done.returncode == ctl.EXIT_CONVERGING
    assert "not converged" in done.stderr and "converging" in done.stderr


async def test_wait_returns_0_when_converged(
    served: tuple[FakeController, DbusService],
    dbus_address: str,
) -> None:
    controller, _ = served
    waiting = asyncio.ensure_future(klpctl(dbus_address, "wait", "--timeout=60"))
    await controller.waiting.wait()
    controller.converge()
    done = await waiting
    assert done.returncode == 0, done.stderr


# --- read verbs -------------------------------------------------------------------------------


async def test_status_screen_shows_everything(
    served: tuple[FakeController, DbusService],
    dbus_address: str,
) -> None:
    out = (await klpctl(dbus_address, "status")).stdout
    for needle in (
        "kernel: 6.1.0-test-amd64",
        "transition: lpb__vmlinux -> patched, for ",
        "patches: 1 applied, 1 partial",
        "STALLED",
        "4242 sleepy",
        "do_nanosleep",
        "last error: lpb__xfs: Device or resource busy",
        "lpa: applied",
        "CVE-2026-1234",
        "lpa__ext4",
        "(ext4 not loaded)",
        "lpb: partial",
        "pending:\n  load lpb__xfs (object-loaded)",
        "failed or refused:\n  lpb__xfs: modprobe: could not insert lpb__xfs",
    ):
        assert needle in out, needle


async def test_list_show_blocking(
    served: tuple[FakeController, DbusService],
    dbus_address: str,
) -> None:
    controller, _ = served
    done = await klpctl(dbus_address, "list")
    assert done.returncode == 0 and "lpb__xfs" in done.stdout
    listed = json.loads((await klpctl(dbus_address, "list", "--json")).stdout)
    assert listed["patches"] == json.loads(controller.snap.to_json())["patches"]

    done = await klpctl(dbus_address, "show", "lpa")
    assert "functions: cmdline_proc_show" in done.stdout
    assert "patched=yes" in done.stdout
    shown = json.loads((await klpctl(dbus_address, "--json", "show", "lpa")).stdout)
    assert shown == listed["patches"][0]

    done = await klpctl(dbus_address, "blocking")
    assert "4242 sleepy" in done.stdout and "do_nanosleep" in done.stdout
    blocking = json.loads((await klpctl(dbus_address, "blocking", "--json")).stdout)
    assert blocking == {
        "schema_version": 1,
        "blocking": [
            {
                "pid": 4242,
                "comm": "sleepy",
                "patch_state": 0,
                "stack": "[<0>] do_nanosleep+0x1/0x2",
            },
        ],
    }
    controller.blocking = ()
    controller.publish(controller.snap)  # klpd re-reads blocking tasks on a change
    done = await klpctl(dbus_address, "blocking")
    assert done.stdout == "no task blocks a transition\n"


async def test_bus_option_beats_environment(
    served: tuple[FakeController, DbusService],
    dbus_address: str,
) -> None:
    done = await klpctl("unix:path=/nonexistent/bus", "--bus", dbus_address, "status")
    assert done.returncode == 1, done.stderr


# --- monitor ----------------------------------------------------------------------------------


async def test_monitor_follows_signals(
    served: tuple[FakeController, DbusService],
    dbus_address: str,
) -> None:
    controller, _ = served
    proc = await asyncio.create_subprocess_exec(
        KLPCTL,
        "monitor",
        "--json",
        "--count",
        "3",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=run_env(dbus_address),
    )
    assert proc.stdout is not None and proc.stderr is not None
    ready = await asyncio.wait_for(proc.stderr.readline(), 30)  # subscribed: go
    assert b"following io.github.Klpd1" in ready
    controller.publish(controller.snap, Event(EventKind.PATCH_APPLIED, "lpa", "lpa__ext4"))
    controller.publish(
        controller.snap, Event(EventKind.TRANSITION_STALLED, "lpb", "lpb__vmlinux", "1 task")
    )
    controller.converge()
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    events = [json.loads(line) for line in out.decode().splitlines()]
    for e in events:
        del e["time"]
    assert events == [
        {"event": "PatchApplied", "patch": "lpa", "module": "lpa__ext4", "detail": ""},
        {
            "event": "TransitionStalled",
            "patch": "lpb",
            "module": "lpb__vmlinux",
            "detail": "1 task",
        },
        {
            "event": "PropertiesChanged",
            "State": "converged",
            "Transition": "",
            "TransitionTarget": "",
            "Stalled": False,
        },
    ]


async def test_monitor_sees_klpd_stop(dbus_address: str) -> None:
    service = await start_dbus(FakeController(), dbus_address)
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
    assert proc.stderr is not None
    await asyncio.wait_for(proc.stderr.readline(), 30)
    await service.close()
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert "KlpdStopped" in out.decode()


# --- the command line itself --------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["--json", "status"],
        ["status", "--json", "--bus", "unix:path=/x"],
        ["--bus=unix:path=/x,guid=1", "list"],
        ["--debug", "show", "lpa"],
        ["show", "lp-a", "--json"],
        ["blocking"],
        ["wait"],
        ["wait", "--timeout", "12.5"],
        ["wait", "--timeout=3"],
        ["reload"],
        ["enable", "lpa"],
        ["disable", "lpa", "--debug"],
        ["monitor"],
        ["monitor", "--count", "2", "--json"],
        ["plan"],
        ["plan", "--rescan", "--enable", "lpa", "--enable=lpb", "--disable", "lpc", "--json"],
    ],
)
def test_fast_parser_agrees_with_argparse(argv: list[str]) -> None:
    fast = ctl.parse_fast(argv)
    assert fast is not None
    slow = ctl.build_parser().parse_args(argv)
    assert fast == ctl.Args(**{k: v for k, v in vars(slow).items() if v is not None})


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["-h"],
        ["status", "--help"],
        ["nope"],
        ["show"],
        ["status", "x"],
        ["--bus"],
        ["wait", "--timeout", "x"],
        ["status", "--timeout", "3"],
        ["monitor", "--count"],
        ["plan", "--rescan=yes"],
        ["plan", "--enable"],
        ["status", "--rescan"],
    ],
)
def test_fast_parser_leaves_the_rest_to_argparse(argv: list[str]) -> None:
    assert ctl.parse_fast(argv) is None


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl.main(["--help"]) == 0
    assert "exit codes: 0 converged" in capsys.readouterr().out


def test_client_path_imports_nothing_heavy() -> None:
    # -S: without site (and this venv's editable-install finder, which imports re and enum
    # itself) what is loaded is what klpctl loads
    code = "import sys, klpd.client.ctl; print('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    loaded = set(done.stdout.split())
    assert "klpd.client.wire" in loaded
    heavy = {
        "dbus_fast",
        "asyncio",
        "pydantic",
        "klpd.service.config",
        "klpd.core.status",
        "argparse",
        "dataclasses",
        "typing",
        "json",
        "re",
        "enum",
        "socket",
        "select",
    }
    assert not heavy & loaded


def test_render_status_without_patches() -> None:
    snap = replace(sample_snapshot(OverallState.FAILED), patches=(), pending=(), last_error="")
    text = render.render_status(json.loads(snap.to_json()))
    assert text.startswith("klpd: FAILED") and "patches: none installed" in text


def test_names_module_is_the_contract() -> None:
    assert names.BUS_NAME == "io.github.Klpd1"
    assert names.OBJECT_PATH == "/io/github/Klpd1"
    assert names.INTERFACE == "io.github.Klpd1.Manager"
    assert names.POLKIT_ACTION == "io.github.klpd1.manage"
    assert names.ERROR_ACCESS_DENIED == "io.github.Klpd1.Error.AccessDenied"


# --- the stdlib-only wire client ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("signature", "values"),
    [
        ("sibd", ("é-x", -7, True, 2.5)),
        ("a{sv}", ({"a": ("s", "x"), "b": ("u", 3), "c": ("as", ["p", "q"])},)),
        ("a(yqxt)o", ([(1, 2, -3, 4), (255, 65535, -(2**63), 2**64 - 1)], "/a/b")),
        ("aay(g)", ([[1, 2], []], ("a{sv}",))),
    ],
)
def test_wire_round_trip(signature: str, values: tuple[object, ...]) -> None:
    from klpd.client.wire import _Reader, _Writer, split_signature

    w = _Writer()
    for sig, value in zip(split_signature(signature), values, strict=True):
        w.write(sig, value)
    r = _Reader(bytes(w.buf), little=True)
    got = [r.read(sig) for sig in split_signature(signature)]
    if signature == "a{sv}":  # variants come back as bare values
        assert got == [{"a": "x", "b": 3, "c": ["p", "q"]}]
    else:
        assert [_lists(g) for g in got] == [_lists(v) for v in values]
    assert r.pos == len(w.buf)


def _lists(value: object) -> object:
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    return value


async def test_wire_reads_what_dbus_fast_sends(
    served: tuple[FakeController, DbusService],
    dbus_address: str,
) -> None:
    from dbus_fast import Message
    from dbus_fast.aio import MessageBus

    from klpd.client.wire import Connection

    bus = await MessageBus(bus_address=dbus_address).connect()
    try:
        reply = await bus.call(
            Message(
                destination=names.BUS_NAME,
                path=names.OBJECT_PATH,
                interface=names.INTERFACE,
                member="ListPatches",
            )
        )
    finally:
        bus.disconnect()
    assert reply is not None

    def with_wire() -> list[object]:
        with Connection(dbus_address) as conn:
            return conn.call(names.BUS_NAME, names.OBJECT_PATH, names.INTERFACE, "ListPatches")

    assert _lists(await asyncio.to_thread(with_wire)) == _lists(reply.body)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(_JSON)
def test_loads_is_json_loads(value: object) -> None:
    text = json.dumps(value)
    assert render.loads(text) == json.loads(text)


@pytest.mark.parametrize("text", ["", "{", '{"a": 1} x', "[1,]", "nul"])
def test_loads_refuses_malformed(text: str) -> None:
    with pytest.raises(render.MalformedJSON):
        render.loads(text)


# --- the real klpd on the simulated kernel (fixtures sim and make_klpd: tests/conftest.py) ---


def run_klpctl(
    address: str, *args: str, as_nobody: bool = False
) -> subprocess.CompletedProcess[str]:
    argv = [*AS_NOBODY, KLPCTL, *args] if as_nobody else [KLPCTL, *args]
    done = subprocess.run(argv, capture_output=True, text=True, env=run_env(address), check=False)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_real_klpd_over_dbus(sim: SimKernel, make_klpd: MakeKlpd, dbus_address: str) -> None:
    sim.modprobe("ext4")
    k = make_klpd({"patches": {"desired": ["lpa"]}, "dbus": {"enabled": True, "bus": dbus_address}})
    k.start()
    assert run_klpctl(dbus_address, "wait", "--timeout", "60").returncode == 0

    done = run_klpctl(dbus_address, "status")
    assert done.returncode == 0, done.stderr
    assert "klpd: CONVERGED" in done.stdout and "lpa: applied" in done.stdout
    snap = json.loads(run_klpctl(dbus_address, "status", "--json").stdout)
    lpa = next(p for p in snap["patches"] if p["name"] == "lpa")
    assert {m["module"]: m["status"] for m in lpa["modules"]}["lpa__ext4"] == "applied"

    for argv in (["reload"], ["disable", "lpa"], ["enable", "lpa"]):
        refused = run_klpctl(dbus_address, *argv, as_nobody=True)
        assert refused.returncode == ctl.EXIT_PERMISSION, refused.stderr
    assert run_klpctl(dbus_address, "enable", "no_such_patch").returncode == ctl.EXIT_USAGE

    assert run_klpctl(dbus_address, "disable", "lpa").returncode == 0
    # Not yet `klpctl wait`: the orchestrator still reports "converged" for a moment after
    # DisablePatch returns (reported to the core); watch the kernel as test_daemon does.
    wait_for(lambda: not loaded(sim) & {"lpa__vmlinux", "lpa__ext4"}, 60, "lpa unloaded")
    assert run_klpctl(dbus_address, "wait", "--timeout", "60").returncode == 0
    shown = json.loads(run_klpctl(dbus_address, "show", "lpa", "--json").stdout)
    assert shown["status"] == "disabled"
    assert not any(m["loaded"] for m in shown["modules"])

    assert run_klpctl(dbus_address, "enable", "lpa").returncode == 0
    wait_for(lambda: {"lpa__vmlinux", "lpa__ext4"} <= applied(sim), 60, "lpa applied")
    assert run_klpctl(dbus_address, "wait", "--timeout", "60").returncode == 0
    shown = json.loads(run_klpctl(dbus_address, "show", "lpa", "--json").stdout)
    assert shown["status"] == "applied"

    k.stop()
    assert run_klpctl(dbus_address, "status").returncode == ctl.EXIT_NOT_RUNNING
