"""The orchestrator in-process, on a fake kernel port: no processes, no sysfs, no sleeps
standing in for synchronisation (a pass is awaited to its end; the fake kernel's
transitions end after a fixed number of polls)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from builders import patch
from fakekernel import FakeKernel

from klpd.core.model import Catalog, Patch, PatchModule
from klpd.core.planner import NotDesired, Unwanted
from klpd.core.status import ControlError, Event, EventKind, ModuleStatus, PatchStatus
from klpd.service.bookkeeper import LoadHook
from klpd.service.config import Config
from klpd.service.controls import Control
from klpd.service.metrics import render_metrics
from klpd.service.orchestrator import Orchestrator

RELEASE = "6.1.0-test"


def built(p: Patch) -> Patch:
    """``p`` with every module built for the fake kernel (vermagic)."""
    mods = {o: replace(m, vermagic=f"{RELEASE} SMP mod_unload") for o, m in p.modules.items()}
    return replace(p, modules=mods)


class World:
    """A fake kernel, an orchestrator over it, and everything it told its listeners."""

    def __init__(
        self,
        tmp_path: Path,
        *patches: Patch,
        hooks: Sequence[LoadHook] = (),
        **sections: dict[str, Any],
    ) -> None:
        self.kernel = FakeKernel(release=RELEASE)
        self.catalog = Catalog(patches={p.name: built(p) for p in patches})
        overrides: dict[str, dict[str, Any]] = {
            "kernel": {"release": RELEASE},
            "state": {"directory": str(tmp_path / "state")},
            "transition": {"poll_interval": 0.001, "stall_timeout": 60.0},
            "retry": {"ebusy_backoff": 0.0, "ebusy_backoff_max": 0.0},
        }
        for name, keys in sections.items():
            overrides.setdefault(name, {}).update(keys)
        config = Config().with_overrides(overrides)
        self.orch = Orchestrator(
            config, port=self.kernel, hooks=hooks, scan=lambda _dirs, _prev: self.catalog
        )
        self.control = Control(self.orch)
        self.events: list[Event] = []
        self.orch.reporter.subscribe(self.events.append)
        self.orch.rescan()

    def install(self, *patches: Patch) -> None:
        self.catalog = Catalog(patches={p.name: built(p) for p in patches})
        self.orch.rescan()

    async def converge(self) -> None:
        await self.orch.reconcile()

    def kinds(self, kind: EventKind) -> list[str]:
        return [e.module or e.patch for e in self.events if e.kind is kind]

    def loads(self) -> list[str]:
        return [c[1] for c in self.kernel.calls if c[0] == "modprobe"]

    def patch_status(self, name: str) -> PatchStatus:
        report = self.orch.reporter.snapshot().patch(name)
        assert report is not None, name
        return report.status

    def module_status(self, module: str) -> ModuleStatus:
        snap = self.orch.reporter.snapshot()
        return next(m.status for p in snap.patches for m in p.modules if m.module == module)


def applied(kernel: FakeKernel) -> set[str]:
    return kernel.applied()


async def test_startup_loads_main_first_then_each_live_object(tmp_path: Path) -> None:
    w = World(tmp_path, patch("lpa", ["ext4", "xfs"]))
    w.kernel.load_target("ext4")
    await w.converge()
    assert w.loads() == ["lpa__vmlinux", "lpa__ext4"]
    assert applied(w.kernel) == {"lpa__vmlinux", "lpa__ext4"}
    assert w.kinds(EventKind.PATCH_APPLIED) == ["lpa__vmlinux", "lpa__ext4"]
    started = w.kinds(EventKind.TRANSITION_STARTED)
    assert started == w.kinds(EventKind.TRANSITION_FINISHED) == ["lpa__vmlinux", "lpa__ext4"]
    snap = w.orch.reporter.snapshot()
    assert snap.state == "converged"
    assert w.patch_status("lpa") is PatchStatus.APPLIED
    assert w.orch.converged.is_set()


async def test_target_added_gets_its_module(tmp_path: Path) -> None:
    w = World(tmp_path, patch("lpa", ["ext4"]), patch("lpb", ["ext4"]))
    await w.converge()
    assert applied(w.kernel) == {"lpa__vmlinux", "lpb__vmlinux"}
    w.kernel.load_target("ext4")
    w.orch.module_added("ext4")
    assert not w.orch.converged.is_set()
    await w.converge()
    assert applied(w.kernel) == {"lpa__vmlinux", "lpb__vmlinux", "lpa__ext4", "lpb__ext4"}
    assert w.loads()[2:] == ["lpa__ext4", "lpb__ext4"]


def test_a_look_reads_what_udev_told_of_as_well(tmp_path: Path) -> None:
    """After an action the kernel view reads what it acted on and what can be moving; a
    module that came or went meanwhile, as udev told, is read too (kview.py: one that came
    while another went leaves the directory's link count as it was)."""
    w = World(tmp_path, patch("lpa", ["ext4"]))
    w.orch.look()
    w.kernel.load_target("ext4")
    w.orch.module_added("ext4")
    w.orch.module_removed("xfs")
    w.orch.look(["lpa__vmlinux"])
    w.orch.look([])
    assert w.kernel.told == [["ext4", "lpa__vmlinux", "xfs"], []]
    w.orch.module_added("ext4")
    w.orch.look()  # a full read: reads everything
    w.orch.look([])
    assert w.kernel.told[2:] == [[]]


async def test_target_removed_keep_leaves_the_module_armed(tmp_path: Path) -> None:
    w = World(tmp_path, patch("lpa", ["ext4"]))
    w.kernel.load_target("ext4")
    await w.converge()
    w.kernel.remove_target("ext4")
    w.orch.module_removed("ext4")
    calls = len(w.kernel.calls)
    await w.converge()
    assert w.kernel.calls[calls:] == []
    assert w.module_status("lpa__ext4") is ModuleStatus.ARMED


async def test_target_removed_remove_disables_and_unloads(tmp_path: Path) -> None:
    w = World(tmp_path, patch("lpa", ["ext4"]), policy={"on_object_removed": "remove"})
    w.kernel.load_target("ext4")
    await w.converge()
    w.kernel.remove_target("ext4")
    w.orch.module_removed("ext4")
    calls = len(w.kernel.calls)
    await w.converge()
    assert w.kernel.calls[calls:] == [
        ("write", "lpa__ext4", "enabled", "0"),
        ("rmmod", "lpa__ext4"),
    ]
    assert "lpa__ext4" not in w.kernel.livepatch_modules
    assert w.kinds(EventKind.PATCH_RETIRED) == ["lpa__ext4"]
    assert w.module_status("lpa__ext4") is ModuleStatus.NOT_NEEDED


async def test_upgrade_stacks_v2_before_retiring_v1(tmp_path: Path) -> None:
    v1 = patch("lpa", ["ext4"], series="lpa", version=1)
    v2 = patch("lpa_v2", ["ext4"], series="lpa", version=2)
    w = World(tmp_path, v1)
    w.kernel.load_target("ext4")
    await w.converge()
    w.install(v1, v2)
    calls = len(w.kernel.calls)
    await w.converge()
    assert w.kernel.calls[calls:] == [
        ("modprobe", "lpa_v2__vmlinux"),
        ("modprobe", "lpa_v2__ext4"),
        ("write", "lpa__ext4", "enabled", "0"),
        ("rmmod", "lpa__ext4"),
        ("write", "lpa__vmlinux", "enabled", "0"),
        ("rmmod", "lpa__vmlinux"),
    ]
    assert applied(w.kernel) == {"lpa_v2__vmlinux", "lpa_v2__ext4"}
    snap = w.orch.reporter.snapshot()
    assert [(p.name, p.status) for p in snap.patches] == [
        ("lpa", PatchStatus.RETIRED),
        ("lpa_v2", PatchStatus.APPLIED),
    ]


async def test_ebusy_is_retried_through_one_policy(tmp_path: Path) -> None:
    w = World(tmp_path, patch("lpa"), retry={"ebusy_attempts": 3})
    w.kernel.busy["lpa__vmlinux"] = 2
    await w.converge()
    assert w.loads() == ["lpa__vmlinux"] * 3
    assert applied(w.kernel) == {"lpa__vmlinux"}
    assert w.orch.memory.failures == {}


async def test_ebusy_exhausted_is_a_failure(tmp_path: Path) -> None:
    w = World(tmp_path, patch("lpa"), retry={"ebusy_attempts": 2})
    w.kernel.busy["lpa__vmlinux"] = 5
    await w.converge()
    assert w.loads() == ["lpa__vmlinux"] * 2
    assert "Device or resource busy" in w.orch.memory.failures["lpa__vmlinux"]
    assert w.orch.reporter.snapshot().state == "degraded"


async def test_failing_modprobe_is_recorded_and_not_retried_until_asked(tmp_path: Path) -> None:
    w = World(tmp_path, patch("lpa", ["ext4"]))
    w.kernel.load_target("ext4")
    w.kernel.broken["lpa__ext4"] = "modprobe: ERROR: could not insert 'lpa__ext4': Invalid argument"
    await w.converge()
    assert "Invalid argument" in w.orch.memory.failures["lpa__ext4"]
    assert w.kinds(EventKind.PATCH_FAILED) == ["lpa__ext4"]
    snap = w.orch.reporter.snapshot()
    assert snap.state == "degraded"
    assert "lpa__ext4" in snap.last_error
    assert w.patch_status("lpa") is PatchStatus.PARTIAL
    await w.converge()  # a pass for another reason does not try it again
    assert w.loads().count("lpa__ext4") == 1
    del w.kernel.broken["lpa__ext4"]
    w.orch.module_added("ext4")  # its object came again: another chance
    await w.converge()
    assert w.loads().count("lpa__ext4") == 2
    assert applied(w.kernel) == {"lpa__vmlinux", "lpa__ext4"}
    assert w.orch.memory.failures == {}


def stalling_world(tmp_path: Path, on_stall: str) -> World:
    w = World(
        tmp_path,
        patch("lpa", ["ext4"]),
        transition={"stall_timeout": 0.01, "on_stall": on_stall, "revert_timeout": 5.0},
    )
    w.kernel.load_target("ext4")
    w.kernel.stalled.add("lpa__ext4")
    return w


async def test_stall_revert(tmp_path: Path) -> None:
    w = stalling_world(tmp_path, "revert")
    await w.converge()
    assert ("write", "lpa__ext4", "enabled", "0") in w.kernel.calls
    assert w.kinds(EventKind.TRANSITION_STALLED) == ["lpa__ext4"]
    assert w.orch.memory.failures["lpa__ext4"].endswith("; reverted")
    assert "sleeper[4242]" in w.orch.memory.failures["lpa__ext4"]
    # reverted: its module is stale and goes; it is not loaded again
    assert w.kernel.calls[-1] == ("rmmod", "lpa__ext4")
    assert applied(w.kernel) == {"lpa__vmlinux"}
    assert w.orch.reporter.snapshot().state == "degraded"


async def test_stall_wait_reports_and_keeps_waiting(tmp_path: Path) -> None:
    w = stalling_world(tmp_path, "wait")

    def task_wakes_up(event: Event) -> None:
        if event.kind is EventKind.TRANSITION_STALLED:
            assert w.orch.reporter.blocking_tasks()[0].comm == "sleeper"
            w.kernel.stalled.discard("lpa__ext4")

    w.orch.reporter.subscribe(task_wakes_up)
    await w.converge()
    assert w.kinds(EventKind.TRANSITION_STALLED) == ["lpa__ext4"]
    assert not [c for c in w.kernel.calls if c[0] == "write"]
    assert applied(w.kernel) == {"lpa__vmlinux", "lpa__ext4"}
    assert w.orch.memory.failures == {}


async def test_blocking_tasks_of_a_transition_klpd_is_not_watching(tmp_path: Path) -> None:
    """On 6.12 under TCG a livepatch's modprobe returned seconds after its transition began:
    `klpctl blocking` asked in between must still see the task (klpd_failures, 2 Dec)."""
    w = stalling_world(tmp_path, "wait")
    w.kernel.stalled.discard("lpa__ext4")
    await w.converge()
    assert w.orch.reporter.transition is None
    w.kernel.patches["lpa__ext4"].transition = 10**6  # as if a modprobe had just started it
    w.kernel.stalled.add("lpa__ext4")
    assert [b.comm for b in w.orch.reporter.blocking_tasks()] == ["sleeper"]
    w.kernel.stalled.discard("lpa__ext4")
    w.kernel.patches["lpa__ext4"].transition = 0
    assert w.orch.reporter.blocking_tasks() == ()


async def test_stall_force(tmp_path: Path) -> None:
    w = stalling_world(tmp_path, "force")
    await w.converge()
    assert ("write", "lpa__ext4", "force", "1") in w.kernel.calls
    assert applied(w.kernel) == {"lpa__vmlinux", "lpa__ext4"}
    assert [e.detail for e in w.events if e.kind is EventKind.TRANSITION_FINISHED][-1] == "forced"


async def test_replace_wipe_is_noticed_refused_and_restored(tmp_path: Path) -> None:
    w = World(tmp_path, patch("lpa"), patch("lpb"), patch("lpvendor"))
    w.kernel.replace.add("lpvendor__vmlinux")
    w.orch.memory.record_failure("lpvendor__vmlinux", "kept out of the start-up")
    await w.converge()
    assert applied(w.kernel) == {"lpa__vmlinux", "lpb__vmlinux"}
    # behind klpd's back: an atomic-replace patch wipes both
    assert (await w.kernel.modprobe("lpvendor__vmlinux")).ok
    while w.kernel.in_transition("lpvendor__vmlinux"):
        pass
    assert applied(w.kernel) == {"lpvendor__vmlinux"}
    calls = len(w.kernel.calls)
    await w.converge()
    assert "lpvendor" in w.orch.memory.refused
    snap = w.orch.reporter.snapshot()
    assert "were replaced by an atomic-replace patch (lpvendor__vmlinux)" in snap.last_error
    assert w.patch_status("lpvendor") is PatchStatus.REFUSED
    done = w.kernel.calls[calls:]
    assert done[:2] == [
        ("write", "lpvendor__vmlinux", "enabled", "0"),
        ("rmmod", "lpvendor__vmlinux"),
    ]
    assert sorted(done[2:]) == sorted(
        [
            ("rmmod", "lpa__vmlinux"),
            ("modprobe", "lpa__vmlinux"),
            ("rmmod", "lpb__vmlinux"),
            ("modprobe", "lpb__vmlinux"),
        ]
    )
    assert applied(w.kernel) == {"lpa__vmlinux", "lpb__vmlinux"}


async def test_a_loaded_replace_module_is_refused(tmp_path: Path) -> None:
    w = World(tmp_path, patch("lpa"), patch("lpz"))
    w.kernel.replace.add("lpz__vmlinux")  # not declared in modinfo: sysfs says it
    await w.converge()
    assert "lpz" in w.orch.memory.refused
    assert "lpz__vmlinux" not in w.kernel.livepatch_modules
    assert applied(w.kernel) == {"lpa__vmlinux"}
    assert w.patch_status("lpz") is PatchStatus.REFUSED
    assert w.orch.picture.selection.notes["lpz"] == NotDesired(
        Unwanted.REFUSED, "lpz__vmlinux is an atomic-replace patch"
    )
    snap = w.control.snapshot()
    errors = [m.error for p in snap.patches if p.name == "lpz" for m in p.modules]
    assert errors == ["refused: lpz__vmlinux is an atomic-replace patch"]


class Veto:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def before_load(self, module: PatchModule) -> str | None:
        return "inspection says no" if module.patch == "lpb" else None

    def applied(self, module: PatchModule) -> None:
        self.seen.append(module.module)


async def test_load_hooks_refuse_before_load_and_hear_applied(tmp_path: Path) -> None:
    veto = Veto()
    w = World(tmp_path, patch("lpa"), patch("lpb"), hooks=[veto])
    await w.converge()
    assert w.loads() == ["lpa__vmlinux"]
    assert veto.seen == ["lpa__vmlinux"]
    assert w.orch.memory.refused == {"lpb": "inspection says no"}


async def test_counters_mean_what_they_say(tmp_path: Path) -> None:
    w = World(tmp_path, patch("lpa", ["ext4"]), policy={"on_object_removed": "remove"})
    w.kernel.load_target("ext4")
    w.kernel.busy["lpa__ext4"] = 1
    await w.converge()  # 2 loads, one EBUSY retry
    w.kernel.remove_target("ext4")
    w.orch.module_removed("ext4")
    await w.converge()  # 1 disable, 1 rmmod
    w.orch.resync("overflow")
    c = w.orch.counters
    assert (c.transitions, c.modprobe_calls, c.rmmod_calls) == (3, 3, 1)
    assert (c.reconciles, c.resyncs, c.failures) == (2, 1, 0)
    # exported as they are: in Describe() ...
    described = json.loads(w.control.snapshot().to_json())["counters"]
    assert described == {
        "transitions": 3,
        "failures": 0,
        "reconciles": 2,
        "modprobe_calls": 3,
        "rmmod_calls": 1,
        "resyncs": 1,
    }
    # ... and in the metrics
    text = render_metrics(w.control.snapshot())
    assert "klpd_transitions_total 3\n" in text and "klpd_resyncs_total 1\n" in text
    assert "klpd_modprobe_calls_total 3\n" in text and "klpd_rmmod_calls_total 1\n" in text


async def test_operator_disable_and_enable(tmp_path: Path) -> None:
    w = World(tmp_path, patch("lpa"))
    await w.converge()
    await w.control.disable_patch("lpa")
    await w.converge()
    assert applied(w.kernel) == set()
    assert w.patch_status("lpa") is PatchStatus.DISABLED
    assert (tmp_path / "state/overrides.json").read_text() == '{"disabled": ["lpa"]}\n'
    await w.control.enable_patch("lpa")
    await w.converge()
    assert applied(w.kernel) == {"lpa__vmlinux"}


async def test_unknown_patch_is_a_control_error(tmp_path: Path) -> None:
    w = World(tmp_path, patch("lpa"))
    with pytest.raises(ControlError):
        await w.control.disable_patch("nope")
