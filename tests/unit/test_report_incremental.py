"""The snapshot built again after a change (klpd.core.report.SnapshotBuilder) equals one
built from scratch, whatever changed in between.

The reporter publishes before every action and when a transition starts and ends; the
builder redoes only the reports whose inputs changed. The steps below change one input at a
time the way the orchestrator does — a kernel state where what was not read again is the
same object as before, the memory's failures and refusals changed in place — and compare
every build with a fresh :func:`build_snapshot`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from builders import catalog, patch
from hypothesis import given, settings
from hypothesis import strategies as st

from klpd.core.model import (
    Action,
    ActionKind,
    KernelState,
    LivePatchState,
    LoadedModule,
    ObjectState,
    OverallState,
    Reason,
)
from klpd.core.planner import NotDesired, Unwanted
from klpd.core.report import SnapshotBuilder, SnapshotInputs, build_snapshot

CATALOGS = [
    catalog(
        patch("lpa", ["ext4", "xfs"], series="lpa", version=1),
        patch("lpa_v2", ["ext4", "xfs"], series="lpa", version=2),
        patch("lpb", ["ext4"]),
        patch("lprep", [], replace=True),
    ),
    catalog(patch("lpa", ["ext4", "xfs"]), patch("lpc", ["xfs"])),
]
OBJECTS = ["ext4", "xfs"]
MODULES = sorted({m for c in CATALOGS for m in c.by_module()} | {"foreign__vmlinux"})
FUNCS = ("f_one,1", "f_two,1")


@dataclass
class World:
    """The inputs of one build; ``failures`` and ``refusals`` change in place, as the
    memory's do."""

    cat: int = 0
    modules: dict[str, LoadedModule] = field(default_factory=dict)
    livepatches: dict[str, LivePatchState] = field(default_factory=dict)
    desired: frozenset[str] = frozenset({"lpa_v2", "lpb"})
    notes: dict[str, NotDesired] = field(default_factory=dict)
    refused: frozenset[str] = frozenset()
    refusals: dict[str, str] = field(default_factory=dict)
    pending: list[Action] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    quarantined: set[str] = field(default_factory=set)
    stacked: bool = False  # 6.13+: livepatches show stack_order
    last: KernelState = field(default_factory=lambda: KernelState("6.1.0-test"))

    def inputs(self, stamp: bool = False) -> SnapshotInputs:
        """``stamp``: the state says what changed since the last one, as a kernel view's do
        (the builder then compares nothing else)."""
        state = KernelState("6.1.0-test", dict(self.modules), dict(self.livepatches))
        number, last = self.last.generation + 1, self.last
        if stamp:
            moved = {
                n for n in MODULES + OBJECTS if state.modules.get(n) is not last.modules.get(n)
            }
            moved |= {n for n in MODULES if state.livepatches.get(n) is not last.livepatches.get(n)}
            self.last = state.stamped(number, last.generation, frozenset(moved))
        else:
            self.last = state.stamped(number, 0, None)
        return SnapshotInputs(
            catalog=CATALOGS[self.cat],
            state=state,
            desired=self.desired,
            notes=self.notes,
            refused=self.refused,
            refusals=self.refusals,
            pending=list(self.pending),
            failures=self.failures,
            quarantined=self.quarantined,
            transition=None,
            overall=OverallState.CONVERGING,
            last_error="",
            last_reconcile=0.0,
        )


def livepatch(name: str, kind: str, order: int | None, patched: bool | None) -> LivePatchState:
    obj = name.split("__", 1)[1]
    objects = {obj: ObjectState(obj, patched, FUNCS)}
    enabled, transition = {"applied": (1, 0), "patching": (1, 1), "unpatching": (0, 1)}.get(
        kind, (0, 0)
    )
    return LivePatchState(name, bool(enabled), bool(transition), None, order, objects)


def _object(world: World, data: st.DataObject) -> None:
    obj = data.draw(st.sampled_from(OBJECTS))
    kind = data.draw(st.sampled_from(["absent", "live", "coming", "going"]))
    world.modules.pop(obj, None)
    if kind != "absent":
        world.modules[obj] = LoadedModule(obj, kind, data.draw(st.integers(0, 2)))


def _module(world: World, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(MODULES))
    kinds = ["absent", "stale", "loading", "applied", "patching", "unpatching", "freeing"]
    kind = data.draw(st.sampled_from(kinds))
    world.modules.pop(name, None)
    world.livepatches.pop(name, None)
    if kind == "absent":
        return
    world.modules[name] = LoadedModule(name, "coming" if kind == "loading" else "live", 1)
    if kind not in ("stale", "loading"):
        order = data.draw(st.integers(1, 9)) if world.stacked else None
        patched = data.draw(st.sampled_from([True, False, None]))
        world.livepatches[name] = livepatch(name, kind, order, patched)


def _stacking(world: World, data: st.DataObject) -> None:
    """The kernel shows stack_order (6.13+) or not: every livepatch changes at once."""
    world.stacked = not world.stacked
    for i, (name, lp) in enumerate(sorted(world.livepatches.items())):
        world.livepatches[name] = replace(lp, stack_order=i + 1 if world.stacked else None)


def _pending(world: World, data: st.DataObject) -> None:
    kinds = st.sampled_from(list(ActionKind))
    picks = data.draw(st.lists(st.tuples(kinds, st.sampled_from(MODULES)), max_size=4))
    world.pending = [
        Action(k, m, m.split("__")[0], m.split("__")[1], Reason.RETIRED) for k, m in picks
    ]


def _failure(world: World, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(MODULES))
    if name in world.failures and data.draw(st.booleans()):
        del world.failures[name]
    else:
        world.failures[name] = data.draw(st.sampled_from(["EBUSY", "exec format error"]))


def _quarantine(world: World, data: st.DataObject) -> None:
    world.quarantined ^= {data.draw(st.sampled_from(MODULES))}


def _selection(world: World, data: st.DataObject) -> None:
    patches = sorted(CATALOGS[world.cat].patches)
    world.desired = frozenset(data.draw(st.sets(st.sampled_from(patches))))
    off = data.draw(st.sets(st.sampled_from(patches), max_size=1))
    world.notes = {p: NotDesired(Unwanted.DISABLED) for p in off}


def _refusal(world: World, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(CATALOGS[world.cat].patches)))
    world.refused |= {name}
    world.refusals[name] = data.draw(st.sampled_from(["sysfs shows replace=1", "a hook said no"]))


def _catalog(world: World, data: st.DataObject) -> None:
    world.cat = 1 - world.cat


STEPS = [_object, _module, _module, _module, _stacking, _pending, _failure, _quarantine]
STEPS += [_selection, _refusal, _catalog]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_every_build_equals_a_fresh_one(data: st.DataObject) -> None:
    world, builder = World(), SnapshotBuilder()
    for _ in range(data.draw(st.integers(1, 25))):
        data.draw(st.sampled_from(STEPS))(world, data)
        inputs = world.inputs(stamp=data.draw(st.booleans()))
        assert builder.build(inputs) == build_snapshot(inputs)


def applied_world(objects: Mapping[str, str]) -> World:
    """Every module of catalog 0 applied, its objects loaded."""
    world = World()
    for obj in objects:
        world.modules[obj] = LoadedModule(obj, "live", 0)
    for name in CATALOGS[0].by_module():
        world.modules[name] = LoadedModule(name, "live", 1)
        world.livepatches[name] = livepatch(name, "applied", None, True)
    return world


def test_what_did_not_change_is_not_made_again() -> None:
    world, builder = applied_world({"ext4": "", "xfs": ""}), SnapshotBuilder()
    before = builder.build(world.inputs())
    world.livepatches["lpb__ext4"] = livepatch("lpb__ext4", "patching", None, True)
    after = builder.build(world.inputs())
    assert after.patch("lpb") != before.patch("lpb")
    for name in ("lpa", "lpa_v2", "lprep"):
        assert after.patch(name) is before.patch(name)
    lpb_before, lpb_after = before.patch("lpb"), after.patch("lpb")
    assert lpb_before is not None and lpb_after is not None
    assert lpb_after.modules[0] is lpb_before.modules[0]  # lpb__vmlinux: untouched
    assert after == build_snapshot(world.inputs())


def test_a_failure_recorded_in_place_is_seen() -> None:
    world, builder = applied_world({"ext4": ""}), SnapshotBuilder()
    builder.build(world.inputs())
    world.failures["lpa__xfs"] = "EBUSY"  # the memory's dict, changed in place
    report = builder.build(world.inputs()).patch("lpa")
    assert report is not None
    assert [m.error for m in report.modules if m.module == "lpa__xfs"] == ["EBUSY"]
