"""The real klpd daemon, on the simulated kernel, serving a real dbus-daemon (with the
shipped bus policy): klpctl, busctl and a caller running as another uid talk to it."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dbus_helpers import start_private_bus
from klpd_harness import KlpdProcess, MakeKlpd, applied, wait_for
from klpd_sim.bus import PrivateBus
from klpd_sim.harness import SimKernel

KLPCTL = str(Path(sys.executable).parent / "klpctl")
BUSCTL = shutil.which("busctl") or "/usr/bin/busctl"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
NAME, PATH, IFACE = "io.github.Klpd1", "/io/github/Klpd1", "io.github.Klpd1.Manager"


@pytest.fixture
def bus() -> Iterator[PrivateBus]:
    b = start_private_bus()
    try:
        yield b
    finally:
        b.stop()


def ctl(bus: PrivateBus, *args: str, nobody: bool = False) -> subprocess.CompletedProcess[str]:
    argv = [*(NOBODY if nobody else []), KLPCTL, "--bus", bus.address, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def busctl(bus: PrivateBus, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BUSCTL, f"--address={bus.address}", *args], capture_output=True, text=True, timeout=30
    )


@pytest.fixture
def served(sim: SimKernel, make_klpd: MakeKlpd, bus: PrivateBus) -> KlpdProcess:
    sim.modprobe("ext4")
    k = make_klpd({"patches": {"desired": ["lpa"]}, "dbus": {"enabled": True, "bus": bus.address}})
    k.start()
    assert ctl(bus, "wait", "--timeout", "60").returncode == 0
    return k


def test_describe_agrees_with_sysfs(sim: SimKernel, bus: PrivateBus, served: KlpdProcess) -> None:
    r = ctl(bus, "status", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["state"] == "converged" and d["schema_version"] == 1
    lpa = next(p for p in d["patches"] if p["name"] == "lpa")
    from_dbus = {m["module"] for m in lpa["modules"] if m["status"] == "applied"}
    assert from_dbus == applied(sim) == {"lpa__vmlinux", "lpa__ext4"}
    ext4 = next(m for m in lpa["modules"] if m["obj"] == "ext4")
    patched = (sim.livepatch_dir / "lpa__ext4/ext4/patched").read_text().strip() == "1"
    assert ext4["patched"] is patched is True


def test_busctl_introspects_and_reads_properties(bus: PrivateBus, served: KlpdProcess) -> None:
    r = busctl(bus, "introspect", NAME, PATH)
    assert r.returncode == 0, r.stderr
    for member in ("Describe", "Reload", "EnablePatch", "DisablePatch", "PatchApplied", "State"):
        assert member in r.stdout
    r = busctl(bus, "get-property", NAME, PATH, IFACE, "State")
    assert r.stdout.strip() == 's "converged"'
    r = busctl(bus, "call", NAME, PATH, IFACE, "Describe")
    assert r.returncode == 0 and r.stdout.startswith("s ")


def test_signals_follow_a_module_load(sim: SimKernel, bus: PrivateBus, served: KlpdProcess) -> None:
    import threading

    mon = subprocess.Popen(
        [KLPCTL, "--bus", bus.address, "monitor"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert mon.stdout is not None and mon.stderr is not None
        # "following …" is printed once its match rules are in place: subscribed.
        assert "following io.github.Klpd1" in mon.stderr.readline()
        out = mon.stdout
        reader = threading.Thread(target=lambda: lines.extend(iter(out.readline, "")))
        reader.start()
        sim.modprobe("klpd_target")
        wait_for(
            lambda: any("PatchApplied" in x and "lpa__klpd_target" in x for x in list(lines)),
            60,
            "PatchApplied signal",
        )
    finally:
        mon.terminate()
        mon.wait()
    text = "".join(lines)
    assert "TransitionStarted patch=lpa module=lpa__klpd_target" in text
    assert text.index("TransitionStarted") < text.index("PatchApplied")


def test_changes_need_root_or_polkit(sim: SimKernel, bus: PrivateBus, served: KlpdProcess) -> None:
    for verb in (["reload"], ["disable", "lpa"], ["enable", "lpa"]):
        r = ctl(bus, *verb, nobody=True)
        assert r.returncode == 5, (verb, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr
    assert ctl(bus, "status", nobody=True).returncode == 0  # reads are open
    assert applied(sim) == {"lpa__vmlinux", "lpa__ext4"}  # nothing changed


def test_root_disables_and_enables_a_patch(
    sim: SimKernel, bus: PrivateBus, served: KlpdProcess
) -> None:
    assert ctl(bus, "disable", "lpa").returncode == 0
    wait_for(lambda: not applied(sim), 60, "lpa retired")
    assert ctl(bus, "wait", "--timeout", "60").returncode == 0
    show = json.loads(ctl(bus, "show", "lpa", "--json").stdout)
    assert show["status"] == "disabled"
    assert ctl(bus, "enable", "lpa").returncode == 0
    assert ctl(bus, "wait", "--timeout", "60").returncode == 0
    assert applied(sim) == {"lpa__vmlinux", "lpa__ext4"}


def test_malformed_arguments_get_typed_errors(bus: PrivateBus, served: KlpdProcess) -> None:
    def send(arg: str) -> subprocess.CompletedProcess[str]:
        # dbus-send prints the error *name*: a client nobody here wrote sees the typed error
        return subprocess.run(
            [
                "dbus-send",
                f"--bus={bus.address}",
                "--print-reply",
                f"--dest={NAME}",
                PATH,
                f"{IFACE}.DisablePatch",
                f"string:{arg}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )

    r = send("x; reboot")
    assert r.returncode != 0 and "Error io.github.Klpd1.Error.InvalidArgument" in r.stderr
    r = send("no_such_patch")
    assert "Error io.github.Klpd1.Error.UnknownPatch" in r.stderr
    r = ctl(bus, "show", "-rf")
    assert r.returncode == 6 and "Traceback" not in r.stderr


def test_sigterm_on_the_bus_exits_0_and_keeps_the_patches(
    sim: SimKernel, served: KlpdProcess
) -> None:
    """The real-kernel 6.1 run: klpd on a bus exited 1 at SIGTERM — cancelling the task that
    watched for bus loss cancelled dbus-fast's shared disconnect future, and close() then
    raised CancelledError."""
    proc = served.proc
    assert proc is not None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, served.log()[-3000:]
    assert "CancelledError" not in served.log()
    assert applied(sim) == {"lpa__vmlinux", "lpa__ext4"}
