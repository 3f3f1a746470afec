"""klpd as a Debian 13 host runs it: the .deb installed by apt, the shipped unit under a
real systemd (PID 1), the system bus with the shipped policy, real polkitd, journald,
node_exporter, and Debian's 6.12 kernel with livepatch modules built by trixie's gcc.

One fixture builds the package and the image and boots the guest (tests/system/guest.py);
each test asserts one scenario on what the guest recorded (tests/system/guest/scenario.sh).
The measurements are written to build/system/measurements.json.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

# The package build, the image and three boots under TCG: the first test pays for it all.
pytestmark = [pytest.mark.system, pytest.mark.timeout(3600)]


def _load_guest() -> ModuleType:
    if "klpd_system_guest" in sys.modules:  # loaded by tests/conftest.py (image_soon)
        return sys.modules["klpd_system_guest"]
    path = Path(__file__).resolve().parent / "guest.py"
    spec = importlib.util.spec_from_file_location("klpd_system_guest", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


g = _load_guest()
BUILD: Path = g.BUILD
REPO: Path = g.REPO
PROMTOOL = REPO / "build/tools/usr/bin/promtool"


@dataclass
class Results:
    dir: Path
    image: Any  # guest.Image
    seconds: dict[str, float]

    def out(self, name: str) -> str:
        return (self.dir / f"{name}.out").read_text()

    def rc(self, name: str) -> int:
        return int((self.dir / f"{name}.rc").read_text())

    def text(self, name: str) -> str:
        return (self.dir / name).read_text()

    def show(self, name: str) -> dict[str, str]:
        lines = (self.dir / f"{name}.show").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    def snap(self, name: str) -> dict[str, str]:
        out = {}
        for line in (self.dir / f"{name}.snap").read_text().splitlines():
            key, _, value = line.partition(" ")
            out[key] = value.strip()
        return out

    def journal(self, name: str) -> list[dict[str, str]]:
        return [json.loads(line) for line in self.text(name).splitlines() if line.startswith("{")]


def livepatch(snap: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in snap.items() if k.startswith("/sys/kernel/livepatch/")}


def enabled(snap: dict[str, str]) -> set[str]:
    return {k.split("/")[4] for k, v in snap.items() if k.endswith("/enabled") and v == "1"}


@pytest.fixture(scope="module")
def guest() -> Iterator[Results]:
    run = g.run_soon().result()  # most often made and booted while earlier tests ran
    results = g.read_results(run.image, BUILD / "out")
    yield Results(
        results, run.image, {"boots 1+2": run.first.seconds, "boot 3": run.second.seconds}
    )


# --- the package ----------------------------------------------------------------------


def test_package_holds_the_system_files_and_no_simulated_kernel(guest: Results) -> None:
    listing = subprocess.run(
        ["dpkg-deb", "-c", str(guest.image.deb)], capture_output=True, text=True, check=True
    ).stdout
    paths = {line.split()[-1].removeprefix(".") for line in listing.splitlines()}
    for path in (
        "/usr/bin/klpd",
        "/usr/bin/klpctl",
        "/usr/lib/systemd/system/klpd.service",
        "/usr/share/dbus-1/system.d/io.github.Klpd1.conf",
        "/usr/share/polkit-1/actions/io.github.klpd1.policy",
        "/etc/klpd/klpd.toml",
        "/usr/share/man/man8/klpd.8.gz",
        "/usr/share/man/man8/klpctl.8.gz",
        "/usr/share/man/man5/klpd.toml.5.gz",
        "/usr/share/bash-completion/completions/klpctl",
        "/usr/share/doc/klpd/README.md",
        "/usr/lib/python3/dist-packages/klpd/service/daemon.py",
    ):
        assert path in paths, path
    assert not [p for p in paths if "klpd_sim" in p or "/tests/" in p]
    conffiles = subprocess.run(
        ["dpkg-deb", "-I", str(guest.image.deb), "conffiles"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert conffiles == ["/etc/klpd/klpd.toml"]
    depends = subprocess.run(
        ["dpkg-deb", "-f", str(guest.image.deb), "Depends"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for dep in ("python3-dbus-fast", "python3-pydantic", "python3-pyudev", "python3-systemd"):
        assert dep in depends
    assert re.search(r"\bkmod\b", depends)


def test_lintian_is_clean(guest: Results) -> None:
    report = (guest.image.deb.parent / "lintian.txt").read_text()
    assert not [line for line in report.splitlines() if line[:2] in ("E:", "W:")], report


def test_apt_installs_it_from_debian_enabled_but_not_started(guest: Results) -> None:
    log = guest.image.apt_log
    assert "Setting up klpd" in log, log
    # every dependency is Debian's own: what the guest lacked came from Debian's archive
    fetched = [line for line in log.splitlines() if line.startswith("Get:")]
    assert fetched and all(
        f"/tmp/{guest.image.deb.name}" in line or "deb.debian.org/debian trixie" in line
        for line in fetched
    ), fetched
    assert "0 upgraded" in log and " 0 to remove" in log, log
    assert "Created symlink" in log and "klpd.service" in log, log


# --- boot ---------------------------------------------------------------------------------


def test_boot_converges_with_status_line(guest: Results) -> None:
    assert guest.out("boot_active").strip() == "active"
    assert guest.rc("boot_wait") == 0, guest.out("boot_wait")
    snap = guest.snap("boot")
    assert {"lpa__vmlinux", "lpb__vmlinux"} <= enabled(snap)
    assert snap["cmdline_proc_show"] in ("lpa-vmlinux", "lpb-vmlinux")
    assert guest.show("boot")["StatusText"].startswith("converged")
    assert re.search(r'Status: "converged', guest.out("boot_status")), guest.out("boot_status")


def _monotonic(entry: dict[str, str]) -> int:
    return int(entry.get("_SOURCE_MONOTONIC_TIMESTAMP") or entry["__MONOTONIC_TIMESTAMP"])


def test_patches_applied_before_network_pre(guest: Results) -> None:
    journal = guest.journal("journal1.json")
    patched = [
        _monotonic(e)
        for e in journal
        if re.search(r"livepatch: '(lpa|lpb)__vmlinux': patching complete", str(e.get("MESSAGE")))
    ]
    reached = [
        _monotonic(e)
        for e in journal
        if e.get("UNIT") == "network-pre.target" and e.get("JOB_RESULT") == "done"
    ]
    assert len(patched) == 2 and reached, (patched, reached)
    assert max(patched) < min(reached)


def test_ready_only_after_the_bus_name_is_owned(guest: Results) -> None:
    # klpd-probe.service is ordered After=klpd.service: it starts once klpd sent READY=1
    assert guest.rc("probe") == 0, guest.out("probe")
    assert re.search(r's ":1\.\d+"', guest.out("probe"))


# --- the unit ---------------------------------------------------------------------------


def test_shipped_unit_unchanged_and_only_the_documented_dropin(guest: Results) -> None:
    assert guest.text("unit.installed") == (REPO / "units/klpd.service").read_text()
    show = guest.show("unit")
    assert show["FragmentPath"] == "/usr/lib/systemd/system/klpd.service"
    assert show["DropInPaths"] == "/etc/systemd/system/klpd.service.d/metrics.conf"
    m = re.search(r"Overall exposure level for klpd.service: ([0-9.]+)", guest.out("security"))
    assert m, guest.out("security")
    assert float(m.group(1)) < 3.0


def test_whole_job_under_the_unit(guest: Results) -> None:
    assert guest.rc("load_modprobe") == 0 and guest.rc("load_wait") == 0
    load = guest.snap("load")
    assert {"lpa__klpd_target", "lpb__klpd_target"} <= enabled(load)
    assert load["klpd_target_value"] in ("lpa", "lpb")
    softdep = guest.out("softdep")
    assert re.search(r"softdep klpd_target pre: .*lpa__klpd_target", softdep), softdep
    assert guest.rc("unload_rmmod") == 0 and guest.rc("unload_wait") == 0
    assert "klpd_target" not in guest.snap("unload")["modules"].split()
    assert guest.rc("load2_wait") == 0
    assert guest.snap("load2")["klpd_target_value"] in ("lpa", "lpb")


def test_blocking_task_then_reload_with_a_good_file(guest: Results) -> None:
    assert guest.rc("reload_good") == 0
    assert guest.rc("blocking_seen") == 0, guest.out("blocking")
    assert guest.rc("blocking_wait") == 0, guest.out("blocking_wait")
    done = guest.snap("blocking_done")
    assert {"lpstall__vmlinux", "lpstall__klpd_target"} <= enabled(done)
    assert done["cmdline_proc_show"] == "lpstall-vmlinux"


def test_reload_with_a_bad_file_keeps_klpd_and_its_configuration(guest: Results) -> None:
    before, after = guest.text("reload_bad_pids.txt").split()
    assert before == after != "0"
    assert guest.rc("reload_bad_status") == 0, guest.out("reload_bad_status")
    assert "no_such_key" in guest.out("reload_bad_journal")


# --- the system bus and polkitd -----------------------------------------------------------


def test_unprivileged_user_reads_but_may_not_change(guest: Results) -> None:
    assert guest.rc("bob_status") == 0, guest.out("bob_status")
    assert guest.out("bob_busctl").strip() == 's "converged"'
    assert guest.rc("bob_disable") == 5, guest.out("bob_disable")
    assert "lpb__vmlinux" in enabled(guest.snap("bob_disable"))


def test_polkit_rule_lets_a_group_member_disable(guest: Results) -> None:
    assert guest.rc("alice_disable") == 0, guest.out("alice_disable")
    assert guest.rc("alice_wait") == 0
    snap = guest.snap("alice_disable")
    assert not [k for k in livepatch(snap) if "/lpb__" in k]
    assert snap["klpd_target_value"] == "lpa"
    assert "lpb__" not in snap["modules"]


def test_journal_has_structured_entries_per_patch(guest: Results) -> None:
    entries = [json.loads(line) for line in guest.out("journal_patch").splitlines()]
    assert entries and all(e["PATCH"] == "lpa" for e in entries)
    assert all(str(e.get("MODULE", "")).startswith("lpa__") for e in entries)


# --- watchdog, crash, bus restart, stop ---------------------------------------------------


def test_watchdog_restarts_a_hung_klpd_and_kill_restarts_it(guest: Results) -> None:
    before = livepatch(guest.snap("before_watchdog"))
    assert livepatch(guest.snap("watchdog_stopped")) == before
    seconds = float(guest.text("watchdog_restart.txt"))
    assert 25 <= seconds < 180, seconds  # WatchdogSec=30s
    assert int(guest.show("watchdog")["NRestarts"]) >= 1
    assert guest.rc("watchdog_wait") == 0
    assert int(guest.show("kill")["NRestarts"]) == int(guest.show("watchdog")["NRestarts"]) + 1
    assert guest.rc("kill_wait") == 0
    assert livepatch(guest.snap("after_kill")) == before


def test_dbus_restart_keeps_patches_and_klpd_is_reachable_again(guest: Results) -> None:
    assert guest.rc("dbus_restart") == 0
    assert guest.rc("dbus_status") == 0, guest.out("dbus_status")
    assert livepatch(guest.snap("after_dbus")) == livepatch(guest.snap("after_kill"))


def test_stop_keeps_every_patch(guest: Results) -> None:
    assert guest.rc("stop") == 0
    assert guest.show("stop")["ActiveState"] == "inactive"
    assert livepatch(guest.snap("stopped")) == livepatch(guest.snap("after_dbus"))


def test_next_boot_converges_again_with_the_operator_override(guest: Results) -> None:
    assert guest.out("boot2_active").strip() == "active"
    assert guest.rc("boot2_wait") == 0
    snap = guest.snap("boot2")
    assert {"lpa__vmlinux", "lpstall__vmlinux"} <= enabled(snap)
    assert "lpb__vmlinux" not in enabled(snap)  # disabled by alice, kept across the reboot


def test_kill_switch_on_the_kernel_command_line(guest: Results) -> None:
    show = guest.show("disabled")
    assert show["ActiveState"] == "inactive" and show["ConditionResult"] == "no"
    snap = guest.snap("disabled")
    assert not livepatch(snap)
    assert snap["modules"] == ""


# --- metrics ------------------------------------------------------------------------------


def test_node_exporter_serves_klpd_series_and_promtool_accepts_them(guest: Results) -> None:
    served = guest.text("node1.prom")
    ours = [line for line in served.splitlines() if "klpd_" in line]
    assert any(line.startswith("klpd_") for line in ours), served[-2000:]
    check = subprocess.run(
        [str(PROMTOOL), "check", "metrics"],
        input="\n".join(ours) + "\n",
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert any(line.startswith("klpd_") for line in guest.text("node2.prom").splitlines())


# --- measurements -------------------------------------------------------------------------


def _status_kv(text: str) -> dict[str, int]:
    return {
        k.rstrip(":"): int(v.split()[0]) for k, v in (ln.split(None, 1) for ln in text.splitlines())
    }


def test_measurements(guest: Results) -> None:
    journal = guest.journal("journal2.json")
    patched = [
        _monotonic(e)
        for e in journal
        if re.search(r"livepatch: '\w+': patching complete", str(e.get("MESSAGE")))
    ]
    assert patched
    before = _status_kv(guest.text("idle_before.txt"))
    after = _status_kv(guest.text("idle_after.txt"))
    wakeups = sum(after[k] - before[k] for k in after if k.endswith("ctxt_switches"))
    m = re.search(r"Overall exposure level for klpd.service: ([0-9.]+)", guest.out("security"))
    measured: dict[str, Any] = {
        "boot_to_converged_s": max(patched) / 1e6,
        "klpctl_status_ms": float(guest.text("time_klpctl.txt")) * 100,
        "python3_c_pass_ms": float(guest.text("time_python.txt")) * 100,
        "busctl_get_property_ms": float(guest.text("time_busctl.txt")) * 100,
        "idle_rss_kib": after["VmRSS"],
        "idle_wakeups_per_30s": wakeups,
        "watchdog_restart_s": float(guest.text("watchdog_restart.txt")),
        "kill_restart_s": float(guest.text("kill_restart.txt")),
        "dbus_restart_reachable_s": float(guest.text("dbus_reachable.txt")),
        "dbus_restart_klpd_pids": guest.text("dbus_pids.txt").split(),
        "exposure": float(m.group(1)) if m else None,
        "host_seconds": guest.seconds,
    }
    (BUILD / "measurements.json").write_text(json.dumps(measured, indent=2) + "\n")
    print(json.dumps(measured, indent=2))
    assert measured["idle_rss_kib"] > 0 and measured["klpctl_status_ms"] > 0
