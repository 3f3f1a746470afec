"""The orchestrator with module inspection and the boot-loop guard, on a fake kernel port and
module files the tests build (klpd_sim.kofile): refusals before loading, a replace patch
that got applied anyway, quarantine across (simulated) reboots."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fakekernel import FakeKernel
from klpd_sim.kofile import write_ko

from klpd.core.model import Catalog, KernelState, LivePatchState, Patch, PatchModule
from klpd.core.screen import Undeterminable
from klpd.core.status import Event, EventKind, ModuleStatus, PatchStatus
from klpd.kernel.klpinspect import DEFAULT_LAYOUT
from klpd.service.bootguard import BootGuard
from klpd.service.config import Config
from klpd.service.controls import Control
from klpd.service.inspection import ModuleInspector
from klpd.service.metrics import render_metrics
from klpd.service.orchestrator import Orchestrator

RELEASE = "6.1.0-test"
VERMAGIC = f"{RELEASE} SMP mod_unload"


def build(tmp_path: Path, name: str, objects: tuple[str, ...] = (), **sim: str) -> Patch:
    """Patch ``name``: a module file per object, its klp_patch as the ``klpd_sim_*`` keys say
    (``sim`` applies to the main module)."""
    mods = {}
    for obj in ("vmlinux", *objects):
        module = f"{name}__{obj}"
        path = tmp_path / "catalog" / f"{module}.ko"
        path.parent.mkdir(exist_ok=True)
        info = {"livepatch": "Y", "vermagic": VERMAGIC, **(sim if obj == "vmlinux" else {})}
        write_ko(path, info)
        mods[obj] = PatchModule(module, name, obj, str(path), vermagic=VERMAGIC, series=name)
    return Patch(name, mods, name, 1)


class World:
    def __init__(
        self, tmp_path: Path, *patches: Patch, boot: str = "boot-1", **sections: dict[str, Any]
    ) -> None:
        self.tmp_path = tmp_path
        self.kernel = FakeKernel(release=RELEASE)
        self.catalog = Catalog(patches={p.name: p for p in patches})
        self.events: list[Event] = []
        self.start(boot, **sections)

    def start(self, boot: str, **sections: dict[str, Any]) -> None:
        """klpd starting (again): in boot ``boot``, with the same state directory."""
        overrides: dict[str, dict[str, Any]] = {
            "kernel": {"release": RELEASE},
            "state": {"directory": str(self.tmp_path / "state")},
            "transition": {"poll_interval": 0.001},
            "retry": {"ebusy_backoff": 0.0, "ebusy_backoff_max": 0.0},
        }
        for name, keys in sections.items():
            overrides.setdefault(name, {}).update(keys)
        config = Config().with_overrides(overrides)
        policy = Undeterminable(config.inspect.undeterminable)
        self.bootguard = BootGuard(self.tmp_path / "state", boot, grace_period=60)
        self.orch = Orchestrator(
            config,
            port=self.kernel,
            scan=lambda _dirs, _prev: self.catalog,
            inspector=ModuleInspector(DEFAULT_LAYOUT, policy),
            bootguard=self.bootguard,
        )
        self.control = Control(self.orch)
        self.orch.reporter.subscribe(self.events.append)
        self.orch.rescan()

    def loads(self) -> list[str]:
        return [c[1] for c in self.kernel.calls if c[0] == "modprobe"]

    def failed_events(self) -> list[tuple[str, str, str]]:
        return [
            (e.patch, e.module, e.detail) for e in self.events if e.kind is EventKind.PATCH_FAILED
        ]

    def module(self, name: str) -> Any:
        snap = self.orch.reporter.snapshot()
        return next(m for p in snap.patches for m in p.modules if m.module == name)


async def test_refused_before_loading_with_reasons(tmp_path: Path) -> None:
    w = World(
        tmp_path,
        build(tmp_path, "lpa", ("ext4",)),
        build(tmp_path, "lprep", klpd_sim_replace="Y"),  # no klpd_replace modinfo
        build(tmp_path, "lpwrong", klpd_sim_object="ext4"),
        build(tmp_path, "lptwo", klpd_sim_object="vmlinux,ext4"),
        build(tmp_path, "lpdyn", klpd_sim_klp="dynamic"),
    )
    w.kernel.load_target("ext4")
    await w.orch.reconcile()
    assert w.loads() == ["lpa__vmlinux", "lpa__ext4"]
    snap = w.orch.reporter.snapshot()
    assert snap.state == "converged"
    errors = {p.name: p.modules[0].error for p in snap.patches if p.status is PatchStatus.REFUSED}
    assert errors == {
        "lprep": "refused: lprep__vmlinux: atomic-replace patch (its struct klp_patch sets "
        ".replace = true): loading it would replace every other livepatch on the system",
        "lpwrong": "refused: lpwrong__vmlinux: patches object 'ext4', but its name says 'vmlinux'",
        "lptwo": "refused: lptwo__vmlinux: patches 2 objects (vmlinux, ext4): a split livepatch "
        "module patches one",
        "lpdyn": "refused: lpdyn__vmlinux: cannot tell whether it is an atomic-replace patch: "
        "no static struct klp_patch: not a livepatch, or one whose klp_patch is built at run "
        "time (as klp-build's init code does), where replace is code, not data",
    }
    assert w.module("lprep__vmlinux").status is ModuleStatus.REFUSED
    metrics = render_metrics(snap)
    for patch in ("lprep", "lpwrong", "lptwo", "lpdyn"):
        assert (
            f'klpd_module_status{{patch="{patch}",module="{patch}__vmlinux",object="vmlinux",'
            'status="refused"} 1' in metrics
        )
    assert sorted(p for p, _m, _d in w.failed_events()) == ["lpdyn", "lprep", "lptwo", "lpwrong"]
    assert all(
        d.startswith(("inspection: ", "atomic-replace: ")) for _p, _m, d in w.failed_events()
    )


async def test_undeterminable_can_be_lowered_to_a_warning(tmp_path: Path) -> None:
    w = World(
        tmp_path,
        build(tmp_path, "lpdyn", klpd_sim_klp="dynamic"),
        inspect={"undeterminable": "warn"},
    )
    await w.orch.reconcile()
    assert w.loads() == ["lpdyn__vmlinux"]


async def test_a_fixed_file_lifts_its_refusal(tmp_path: Path) -> None:
    w = World(tmp_path, build(tmp_path, "lprep", klpd_sim_replace="Y"))
    await w.orch.reconcile()
    assert w.loads() == []
    w.catalog = Catalog(patches={"lprep": build(tmp_path, "lprep")})  # rebuilt --no-replace
    w.orch.rescan()
    await w.orch.reconcile()
    assert w.loads() == ["lprep__vmlinux"]


async def test_replace_klpd_loaded_itself_is_named_taken_away_and_wipe_restored(
    tmp_path: Path,
) -> None:
    """On 6.1 (no sysfs ``replace``), a replace patch whose file hid it (warn policy)."""
    w = World(
        tmp_path,
        build(tmp_path, "lpa"),
        build(tmp_path, "lpz", klpd_sim_klp="dynamic"),
        inspect={"undeterminable": "warn"},
    )
    w.kernel.replace_attr = False
    w.kernel.replace.add("lpz__vmlinux")
    await w.orch.reconcile()
    assert w.loads()[:2] == ["lpa__vmlinux", "lpz__vmlinux"]
    assert "replaced by an atomic-replace patch (lpz__vmlinux)" in w.orch.reporter.last_error
    assert w.orch.memory.refused["lpz"].startswith("livepatches lpa__vmlinux were replaced")
    # lpz disabled and removed, lpa loaded again
    assert w.kernel.applied() == {"lpa__vmlinux"}
    assert "lpz__vmlinux" not in w.kernel.livepatch_modules
    snap = w.orch.reporter.snapshot()
    assert snap.state == "converged"
    lpz = snap.patch("lpz")
    assert lpz is not None and lpz.status is PatchStatus.REFUSED


async def test_foreign_replace_patch_keeps_klpd_degraded_while_applied(tmp_path: Path) -> None:
    w = World(tmp_path, build(tmp_path, "lpa"))
    w.kernel.replace_attr = False
    await w.orch.reconcile()
    w.kernel.replace.add("other__vmlinux")
    await w.kernel.modprobe("other__vmlinux")  # another tool
    w.kernel.patches["other__vmlinux"].transition = 0
    w.orch.picture.requested.clear()
    await w.orch.reconcile()
    assert "(other__vmlinux)" in w.orch.reporter.last_error
    assert w.kernel.applied() == {"other__vmlinux", "lpa__vmlinux"}  # restored on top
    assert w.orch.reporter.snapshot().state == "degraded"
    assert "atomic-replace" in w.orch.memory.failures["other__vmlinux"]
    # it goes: klpd is converged again
    w.kernel.write_attr("other__vmlinux", "enabled", "0")
    w.kernel.patches["other__vmlinux"].transition = 1
    w.kernel.in_transition("other__vmlinux")
    await w.kernel.rmmod("other__vmlinux")
    w.orch.picture.requested.clear()
    await w.orch.reconcile()
    assert w.orch.reporter.snapshot().state == "converged"


async def test_crash_after_load_quarantines_in_the_next_boot(tmp_path: Path) -> None:
    w = World(tmp_path, build(tmp_path, "lpa", ("ext4",)), build(tmp_path, "lpb"))
    w.kernel.load_target("ext4")
    await w.orch.reconcile()
    assert w.bootguard.open_modules == ("lpa__vmlinux", "lpa__ext4", "lpb__vmlinux")
    # the machine goes down now: a new boot, an empty kernel, the same state directory
    w.kernel = FakeKernel(release=RELEASE)
    w.kernel.load_target("ext4")
    w.events.clear()
    w.start("boot-2")
    await w.orch.reconcile()
    assert w.loads() == ["lpa__vmlinux", "lpa__ext4"]  # the most recent load stays out
    assert w.module("lpb__vmlinux").status is ModuleStatus.QUARANTINED
    assert "went down after it was applied" in w.module("lpb__vmlinux").error
    assert w.orch.reporter.snapshot().state == "degraded"
    assert 'module="lpb__vmlinux",object="vmlinux",status="quarantined"} 1' in render_metrics(
        w.orch.reporter.snapshot()
    )
    assert [(p, m) for p, m, _d in w.failed_events()] == [("lpb", "lpb__vmlinux")]
    # it outlives a restart of klpd, until an operator enables the patch
    w.start("boot-2")
    await w.orch.reconcile()
    assert "lpb__vmlinux" not in w.kernel.applied()
    await w.control.enable_patch("lpb")
    w.orch.picture.requested.clear()
    await w.orch.reconcile()
    assert "lpb__vmlinux" in w.kernel.applied()
    assert w.orch.reporter.snapshot().state == "converged"
    assert BootGuard(tmp_path / "state", "boot-2").quarantined == {}


async def test_failed_load_is_no_crash(tmp_path: Path) -> None:
    w = World(tmp_path, build(tmp_path, "lpbad"))
    w.kernel.broken["lpbad__vmlinux"] = "modprobe: ERROR: could not insert: Invalid argument"
    await w.orch.reconcile()
    assert w.bootguard.open_modules == ()
    w.start("boot-2")
    assert w.bootguard.quarantined == {}


async def test_restart_in_the_same_boot_still_closes_the_records(tmp_path: Path) -> None:
    # klpd restarted (watchdog, SIGKILL) within the grace period: the new process closes the
    # records the old one left open, else the next clean reboot quarantines a good patch.
    grace = {"grace_period": 0.05}
    w = World(tmp_path, build(tmp_path, "lpa"), boot_guard=grace)
    await w.orch.reconcile()
    assert w.bootguard.open_modules == ("lpa__vmlinux",)
    w.start("boot-1", boot_guard=grace)
    assert w.bootguard.open_modules == ("lpa__vmlinux",)
    run = asyncio.create_task(w.orch.run())
    try:
        for _ in range(200):  # polled: the guard's own timer closes it after 0.05 s
            if not w.bootguard.open_modules:
                break
            await asyncio.sleep(0.01)
        assert not w.bootguard.open_modules  # (== () is an "impossible" check to mypy here)
    finally:
        w.orch.stop()
        await run
    w.start("boot-2")
    assert w.bootguard.quarantined == {}


class CountingInspector(ModuleInspector):
    """Says which modules' files the orchestrator asked about, in order."""

    __slots__ = ("looked",)

    def __init__(self) -> None:
        super().__init__(DEFAULT_LAYOUT, Undeterminable("refuse"))
        self.looked: list[str] = []

    def is_replace(self, pm: PatchModule) -> bool:
        self.looked.append(pm.module)
        return super().is_replace(pm)


def applied(*names: str) -> KernelState:
    return KernelState(RELEASE, livepatches={n: LivePatchState(n, True, False) for n in names})


def test_a_livepatch_file_is_looked_at_when_it_shows_up_not_after_every_action(
    tmp_path: Path,
) -> None:
    w = World(tmp_path, build(tmp_path, "lpa", ("ext4",)), build(tmp_path, "lprep"))
    counting = w.orch.screening.inspector = CountingInspector()
    managed = w.orch.catalog.by_module()
    # lprep's file, replaced on disk by an atomic-replace build after the scan
    write_ko(Path(managed["lprep__vmlinux"].path), {"livepatch": "Y", "klpd_sim_replace": "Y"})
    known = w.orch.screening.replace_known
    # another tool's replace patch, lpa's main, a foreign livepatch
    assert known(applied("lprep__vmlinux", "lpa__vmlinux", "other__x"), managed) == {
        "lprep__vmlinux"
    }
    assert sorted(counting.looked) == ["lpa__vmlinux", "lprep__vmlinux"]
    state = applied("lprep__vmlinux", "lpa__vmlinux", "lpa__ext4", "other__x")
    assert known(state, managed) == {"lprep__vmlinux"}
    assert counting.looked[2:] == ["lpa__ext4"]  # only the one that came
    assert known(applied("lpa__vmlinux", "lpa__ext4"), managed) == set()  # lprep went
    assert known(state, managed) == {"lprep__vmlinux"}  # and came back: looked at again
    assert counting.looked[3:] == ["lprep__vmlinux"]
    w.orch.rescan()  # a new catalog: files may have changed
    counting.looked.clear()
    assert known(state, managed) == {"lprep__vmlinux"}
    assert sorted(counting.looked) == ["lpa__ext4", "lpa__vmlinux", "lprep__vmlinux"]
