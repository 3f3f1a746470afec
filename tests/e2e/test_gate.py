"""What a fleet gate relies on, with the real klpd on the simulated kernel over a private bus:
``klpctl wait`` exits with the settled state, a rollback clears "degraded", ``wait`` waits
for klpd to appear, and ``klpctl plan`` is a dry run that predicts and changes nothing."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from dbus_helpers import run_env
from klpd_harness import MakeKlpd, applied, loaded
from klpd_sim.harness import SimKernel
from test_klpctl import KLPCTL, run_klpctl

from klpd.client import ctl

LPC = {"livepatch": "Y", "klpd_series": "lpc", "klpd_version": "1"}


def _bus(address: str, **patches: Any) -> dict[str, Any]:
    return {"patches": patches, "dbus": {"enabled": True, "bus": address}}


def test_wait_exits_degraded_and_a_rollback_clears_it(
    sim: SimKernel, make_klpd: MakeKlpd, dbus_address: str
) -> None:
    sim.modprobe("ext4")
    make_klpd(_bus(dbus_address, desired=["lpa", "lpbad"])).start()
    done = run_klpctl(dbus_address, "wait", "--timeout", "60")
    assert done.returncode == ctl.EXIT_DEGRADED, done.stderr
    assert "settled degraded" in done.stderr
    assert run_klpctl(dbus_address, "status").returncode == ctl.EXIT_DEGRADED

    # the rollback: lpbad is no longer desired, so its failure is history, not health
    assert run_klpctl(dbus_address, "disable", "lpbad").returncode == 0
    done = run_klpctl(dbus_address, "wait", "--timeout", "60")
    assert done.returncode == ctl.EXIT_CONVERGED, done.stderr
    assert not {"lpbad__vmlinux", "lpbad__ext4"} & loaded(sim)
    shown = json.loads(run_klpctl(dbus_address, "show", "lpbad", "--json").stdout)
    assert shown["status"] == "disabled"
    errors = {m["module"]: m["error"] for m in shown["modules"]}
    assert "Invalid argument" in errors["lpbad__ext4"]


def test_wait_waits_for_klpd_to_appear(
    sim: SimKernel, make_klpd: MakeKlpd, dbus_address: str
) -> None:
    done = run_klpctl(dbus_address, "wait", "--timeout", "0.5")
    assert done.returncode == ctl.EXIT_NOT_RUNNING
    assert "did not appear" in done.stderr
    waiter = subprocess.Popen(
        [KLPCTL, "wait", "--timeout", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=run_env(dbus_address),
    )
    try:
        make_klpd(_bus(dbus_address, desired=["lpa"])).start()
        _, err = waiter.communicate(timeout=150)
    finally:
        waiter.kill()
    assert waiter.returncode == ctl.EXIT_CONVERGED, err
    assert {"lpa__vmlinux"} <= applied(sim)


def test_plan_predicts_and_changes_nothing(
    sim: SimKernel, make_klpd: MakeKlpd, dbus_address: str
) -> None:
    sim.modprobe("ext4")
    make_klpd(_bus(dbus_address, exclude=["lpb", "lpbad"])).start()
    assert run_klpctl(dbus_address, "wait", "--timeout", "60").returncode == 0
    before = loaded(sim)
    plan = json.loads(run_klpctl(dbus_address, "plan", "--json").stdout)
    assert plan["actions"] == [] and plan["schema_version"] == 1

    sim.install("lpc__vmlinux", {**LPC, "klpd_sim_funcs": "cmdline_proc_show"})
    sim.install("lpc__ext4", {**LPC, "klpd_sim_funcs": "ext4_llseek"})
    plan = json.loads(run_klpctl(dbus_address, "plan", "--json").stdout)
    assert plan["actions"] == [], "not rescanned: klpd does not know lpc yet"
    plan = json.loads(run_klpctl(dbus_address, "plan", "--rescan", "--json").stdout)
    assert [a["text"] for a in plan["actions"]] == [
        "load lpc__vmlinux (main-first)",
        "load lpc__ext4 (object-loaded)",
    ]
    assert {p["name"]: p["desired"] for p in plan["patches"]}["lpc"] is True
    text = run_klpctl(dbus_address, "plan", "--rescan")
    assert text.returncode == 0 and "load lpc__vmlinux (main-first)" in text.stdout

    # disabling lpa_v2 brings its predecessor back first, then retires it
    plan = json.loads(run_klpctl(dbus_address, "plan", "--disable", "lpa_v2", "--json").stdout)
    texts = [a["text"] for a in plan["actions"]]
    assert texts[:2] == ["load lpa__vmlinux (main-first)", "load lpa__ext4 (object-loaded)"]
    assert "disable lpa_v2__ext4 (retired)" in texts and "unload lpa_v2__vmlinux (retired)" in texts
    assert run_klpctl(dbus_address, "plan", "--enable", "nope").returncode == ctl.EXIT_USAGE
    assert loaded(sim) == before  # a dry run
    assert json.loads(run_klpctl(dbus_address, "status", "--json").stdout)["state"] == "converged"
