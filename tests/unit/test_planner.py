"""The planner is a pure function: tested case by case and, with hypothesis, by simulating
the orchestrator (apply the first action, plan again) over arbitrary states."""

from __future__ import annotations

from dataclasses import replace

from builders import catalog, patch, state
from hypothesis import given, settings
from hypothesis import strategies as st

from klpd.core.model import (
    Action,
    ActionKind,
    KernelState,
    LivePatchState,
    LoadedModule,
    ObjectState,
    Reason,
    RemovalPolicy,
)
from klpd.core.planner import NotDesired, Unwanted, plan, select_desired

L, D, U = ActionKind.LOAD, ActionKind.DISABLE, ActionKind.UNLOAD


def steps(actions: list[Action]) -> list[tuple[ActionKind, str]]:
    return [(a.kind, a.module) for a in actions]


CAT = catalog(patch("lpa", ["ext4", "xfs"]), patch("lpb", ["ext4"]))
BOTH = frozenset({"lpa", "lpb"})


def test_start_with_targets_loaded_main_first_then_objects() -> None:
    actions = plan(CAT, state(["ext4"]), frozenset({"lpa"}))
    assert steps(actions) == [(L, "lpa__vmlinux"), (L, "lpa__ext4")]
    assert actions[0].reason is Reason.MAIN_FIRST
    assert actions[1].reason is Reason.OBJECT_LOADED


def test_only_live_objects_get_their_module() -> None:
    actions = plan(CAT, state(coming=["ext4"]), frozenset({"lpa"}))
    assert steps(actions) == [(L, "lpa__vmlinux")]


def test_converged_state_plans_nothing() -> None:
    s = state(["ext4"], ["lpa__vmlinux", "lpa__ext4", "lpb__vmlinux", "lpb__ext4"])
    assert plan(CAT, s, BOTH) == []


def test_target_loaded_later_gets_only_its_module() -> None:
    s = state(["ext4", "xfs"], ["lpa__vmlinux", "lpa__ext4"])
    assert steps(plan(CAT, s, frozenset({"lpa"}))) == [(L, "lpa__xfs")]


def test_two_patches_on_one_object() -> None:
    assert steps(plan(CAT, state(["ext4"]), BOTH)) == [
        (L, "lpa__vmlinux"),
        (L, "lpa__ext4"),
        (L, "lpb__vmlinux"),
        (L, "lpb__ext4"),
    ]


def test_target_removed_keep_policy_keeps_module_armed() -> None:
    s = state([], ["lpa__vmlinux", "lpa__ext4"])
    assert plan(CAT, s, frozenset({"lpa"}), RemovalPolicy.KEEP) == []


def test_target_removed_remove_policy_disables_then_unloads() -> None:
    s = state([], ["lpa__vmlinux", "lpa__ext4"])
    actions = plan(CAT, s, frozenset({"lpa"}), RemovalPolicy.REMOVE)
    assert steps(actions) == [(D, "lpa__ext4"), (U, "lpa__ext4")]
    assert {a.reason for a in actions} == {Reason.OBJECT_GONE}


def test_remove_policy_leaves_a_softdep_armed_module_while_its_object_comes() -> None:
    """kmod's softdep loads P__m, then m: in between the object is absent. A module the
    orchestrator says is arming is not taken away (seen on 7.3: it was, and m came up
    unpatched); once the grace is over the policy applies again."""
    s = state([], ["lpa__vmlinux", "lpa__ext4"])
    assert (
        plan(CAT, s, frozenset({"lpa"}), RemovalPolicy.REMOVE, arming=frozenset({"lpa__ext4"}))
        == []
    )
    assert steps(plan(CAT, s, frozenset({"lpa"}), RemovalPolicy.REMOVE)) == [
        (D, "lpa__ext4"),
        (U, "lpa__ext4"),
    ]


def test_stale_module_is_unloaded_and_reloaded_when_wanted() -> None:
    s = state(["ext4"], ["lpa__vmlinux"], stale=["lpa__ext4"])
    assert steps(plan(CAT, s, frozenset({"lpa"}))) == [(U, "lpa__ext4"), (L, "lpa__ext4")]


def test_stale_module_of_absent_object_is_only_unloaded() -> None:
    s = state([], ["lpa__vmlinux"], stale=["lpa__ext4"])
    assert steps(plan(CAT, s, frozenset({"lpa"}))) == [(U, "lpa__ext4")]


def test_forced_module_is_never_unloaded() -> None:
    s = state([], ["lpa__vmlinux"], forced_stale=["lpa__ext4"])
    assert plan(CAT, s, frozenset({"lpa"})) == []


def test_failed_main_blocks_its_objects() -> None:
    actions = plan(CAT, state(["ext4"]), frozenset({"lpa"}), avoid=frozenset({"lpa__vmlinux"}))
    assert actions == []


def test_failed_object_module_is_not_retried_but_others_proceed() -> None:
    s = state(["ext4", "xfs"], ["lpa__vmlinux"])
    actions = plan(CAT, s, frozenset({"lpa"}), avoid=frozenset({"lpa__ext4"}))
    assert steps(actions) == [(L, "lpa__xfs")]


UP = catalog(
    patch("lpa", ["ext4"], series="lpa", version=1),
    patch("lpa_v2", ["ext4"], series="lpa", version=2),
)


def test_cumulative_upgrade_stacks_before_retiring() -> None:
    s = state(["ext4"], ["lpa__vmlinux", "lpa__ext4"])
    sel = select_desired(UP)
    assert sel.desired == {"lpa_v2"}
    first = plan(UP, s, sel.desired)
    # successor loads come first, then the old patch goes, object first, main last
    assert steps(first) == [
        (L, "lpa_v2__vmlinux"),
        (L, "lpa_v2__ext4"),
        (D, "lpa__ext4"),
        (U, "lpa__ext4"),
        (D, "lpa__vmlinux"),
        (U, "lpa__vmlinux"),
    ]


def test_cumulative_upgrade_keeps_old_patch_when_successor_failed() -> None:
    s = state(["ext4"], ["lpa__vmlinux", "lpa__ext4", "lpa_v2__vmlinux"])
    actions = plan(UP, s, frozenset({"lpa_v2"}), avoid=frozenset({"lpa_v2__ext4"}))
    assert actions == []


def test_select_desired_pin_exclude_explicit_and_disabled() -> None:
    assert select_desired(UP, pin={"lpa": 1}).desired == {"lpa"}
    assert select_desired(UP, exclude=["lpa_v2"]).desired == {"lpa"}
    assert select_desired(UP, explicit=["lpa"]).desired == {"lpa"}
    sel = select_desired(UP, disabled=["lpa_v2"])
    assert sel.desired == {"lpa"}
    assert sel.notes["lpa_v2"] == NotDesired(Unwanted.DISABLED)
    assert str(sel.notes["lpa_v2"]) == "disabled by an operator"
    assert select_desired(UP).notes["lpa"] == NotDesired(Unwanted.SUPERSEDED, "lpa_v2")
    assert str(select_desired(UP).notes["lpa"]) == "superseded by lpa_v2"
    sel = select_desired(UP, exclude=["lpa_v2"], refused={"lpa": "sysfs shows replace=1"})
    assert sel.desired == frozenset()
    assert sel.notes["lpa"] == NotDesired(Unwanted.REFUSED, "sysfs shows replace=1")
    assert sel.notes["lpa_v2"].reason is Unwanted.EXCLUDED
    assert select_desired(UP, explicit=["lpa"]).notes["lpa_v2"].reason is Unwanted.NOT_LISTED


REP = catalog(patch("lpa", ["ext4"]), patch("lprep", [], replace=True))


def test_replace_patch_is_never_desired_nor_loaded() -> None:
    sel = select_desired(REP, explicit=["lpa", "lprep"])
    assert sel.desired == {"lpa"}
    assert sel.notes["lprep"].reason is Unwanted.REPLACE
    assert "atomic-replace" in str(sel.notes["lprep"])
    assert all(a.patch != "lprep" for a in plan(REP, state(["ext4"]), frozenset({"lpa", "lprep"})))


def test_replace_patch_loaded_anyway_goes_first_and_wiped_are_restored() -> None:
    # lprep replaced lpa: lpa's livepatches vanished, modules still loaded with refcnt 0
    s = state(["ext4"], ["lprep__vmlinux"], stale=["lpa__vmlinux", "lpa__ext4"])
    assert steps(plan(REP, s, frozenset({"lpa"}))) == [
        (D, "lprep__vmlinux"),
        (U, "lprep__vmlinux"),
        (U, "lpa__vmlinux"),
        (L, "lpa__vmlinux"),
        (U, "lpa__ext4"),
        (L, "lpa__ext4"),
    ]


def test_refused_at_run_time_is_taken_away() -> None:
    s = state(["ext4"], ["lpa__vmlinux", "lpa__ext4"])
    actions = plan(CAT, s, frozenset({"lpa"}), refused=frozenset({"lpa"}))
    assert steps(actions) == [
        (D, "lpa__ext4"),
        (U, "lpa__ext4"),
        (D, "lpa__vmlinux"),
        (U, "lpa__vmlinux"),
    ]


def test_patch_being_disabled_is_waited_for() -> None:
    s = state(["ext4"], ["lpa__vmlinux"], disabled=["lpa__ext4"])
    assert plan(CAT, s, frozenset({"lpa"})) == []


def test_foreign_livepatches_are_left_alone() -> None:
    s = state(["ext4"], ["kpatch_foo__vmlinux", "lpa__vmlinux", "lpa__ext4"])
    assert plan(CAT, s, frozenset({"lpa"})) == []


def test_undesired_patch_is_retired_objects_first() -> None:
    s = state(["ext4"], ["lpb__vmlinux", "lpb__ext4"])
    assert steps(plan(CAT, s, frozenset())) == [
        (D, "lpb__ext4"),
        (U, "lpb__ext4"),
        (D, "lpb__vmlinux"),
        (U, "lpb__vmlinux"),
    ]


# --- properties: drive the planner like the orchestrator does --------------------------

FULL = catalog(
    patch("lpa", ["ext4", "xfs"], series="lpa", version=1),
    patch("lpa_v2", ["ext4", "xfs"], series="lpa", version=2),
    patch("lpb", ["ext4"]),
    patch("lprep", [], replace=True),
)
OBJECTS = ["ext4", "xfs"]
ALL_MODULES = sorted(FULL.by_module())


def apply(s: KernelState, a: Action) -> KernelState:
    """A minimal kernel model: the effect of one action once its transition is done."""
    mods, lps = dict(s.modules), dict(s.livepatches)
    if a.kind is ActionKind.LOAD:
        assert a.module not in mods, f"loaded twice: {a.module}"
        if a.obj != "vmlinux":
            assert a.patch + "__vmlinux" in lps, f"{a.module} before its main module"
            assert s.object_live(a.obj), f"{a.module} while {a.obj} is not live"
        mods[a.module] = LoadedModule(a.module, "live", 1)
        lps[a.module] = LivePatchState(a.module, True, False, objects={a.obj: ObjectState(a.obj)})
    elif a.kind is ActionKind.DISABLE:
        del lps[a.module]
        mods[a.module] = LoadedModule(a.module, "live", 0)
    else:
        assert mods[a.module].refcnt == 0, f"unload of referenced {a.module}"
        del mods[a.module]
    return replace(s, modules=mods, livepatches=lps)


def patched_objects(s: KernelState, series: str) -> set[str]:
    out = set()
    for name, lp in s.livepatches.items():
        pm = FULL.by_module()[name]
        if FULL.patches[pm.patch].series == series and lp.enabled:
            out.add(pm.obj)
    return out


@st.composite
def kernel_states(draw: st.DrawFn) -> KernelState:
    targets = draw(st.sets(st.sampled_from(OBJECTS)))
    mods = {t: LoadedModule(t, "live", 0) for t in targets}
    lps = {}
    for m in ALL_MODULES:
        kind = draw(st.sampled_from(["absent", "absent", "applied", "stale"]))
        if kind == "applied":
            mods[m] = LoadedModule(m, "live", 1)
            obj = m.split("__", 1)[1]
            lps[m] = LivePatchState(m, True, False, objects={obj: ObjectState(obj)})
        elif kind == "stale":
            mods[m] = LoadedModule(m, "live", 0)
    return KernelState("6.1.0-test", mods, lps)


@settings(max_examples=300, deadline=None)
@given(
    kernel_states(),
    st.sets(st.sampled_from(["lpa", "lpa_v2", "lpb"])),
    st.sampled_from(list(RemovalPolicy)),
)
def test_replanning_converges_to_a_fixed_point(
    s: KernelState, desired: set[str], policy: RemovalPolicy
) -> None:
    want = frozenset(desired)
    for _ in range(50):
        actions = plan(FULL, s, want, policy)
        if not actions:
            break
        loads = [a.module for a in actions if a.kind is ActionKind.LOAD]
        assert len(loads) == len(set(loads)), "a plan loads a module twice"
        before = patched_objects(s, "lpa")
        s = apply(s, actions[0])
        # no live object of the lpa series loses its patch while a successor is desired
        if want & {"lpa", "lpa_v2"}:
            lost = {o for o in before - patched_objects(s, "lpa") if s.object_live(o)}
            assert not lost or actions[0].reason in (Reason.STALE, Reason.REPLACE), lost
    else:
        raise AssertionError("did not converge in 50 steps")
    # fixed point: every desired patch applied on vmlinux and every live object
    for name in want:
        p = FULL.patches[name]
        assert f"{name}__vmlinux" in s.livepatches
        for obj in p.objects:
            if s.object_live(obj):
                assert f"{name}__{obj}" in s.livepatches
    # nothing undesired or replace is left applied, and no stale module is left
    for name in s.livepatches:
        assert FULL.by_module()[name].patch in want
    assert all(m in s.livepatches or m in OBJECTS for m in s.modules)
