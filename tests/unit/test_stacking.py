"""Which patch's version of each function runs (klpd.core.stacking), 6.13+ stack_order."""

from __future__ import annotations

from klpd.client.render import render_status, render_versions
from klpd.core.model import Catalog, KernelState, LivePatchState, ObjectState, OverallState
from klpd.core.report import SnapshotInputs, build_snapshot
from klpd.core.stacking import FunctionVersion, live_functions

F = "klpd_target_value,1"


def lp(
    name: str,
    order: int | None,
    enabled: bool = True,
    transition: bool = False,
    patched: bool | None = True,
    obj: str = "klpd_target",
    funcs: tuple[str, ...] = (F,),
) -> LivePatchState:
    return LivePatchState(
        name,
        enabled,
        transition,
        replace=False,
        stack_order=order,
        objects={obj: ObjectState(obj, patched, funcs)},
    )


def state(*lps: LivePatchState) -> KernelState:
    return KernelState("7.3.4+deb13-amd64", livepatches={p.name: p for p in lps})


def test_no_stack_order_no_claim() -> None:
    """Before 6.13 sysfs does not say the order: nothing is claimed."""
    assert live_functions(state(lp("lpa__klpd_target", None), lp("lpb__klpd_target", None))) == ()


def test_highest_stack_order_wins() -> None:
    got = live_functions(state(lp("lpa__klpd_target", 1), lp("lpb__klpd_target", 2)))
    assert got == (
        FunctionVersion(
            "klpd_target", F, "lpb__klpd_target", ("lpb__klpd_target", "lpa__klpd_target")
        ),
    )


def test_patching_transition_splits_tasks() -> None:
    got = live_functions(
        state(lp("lpa__klpd_target", 1), lp("lpb__klpd_target", 2, transition=True))
    )
    assert got[0].live == "lpb__klpd_target" and got[0].previous == "lpa__klpd_target"


def test_unpatching_transition_goes_back_to_the_one_below() -> None:
    got = live_functions(
        state(lp("lpa__klpd_target", 1), lp("lpb__klpd_target", 2, enabled=False, transition=True))
    )
    assert got[0].live == "lpa__klpd_target" and got[0].previous == "lpb__klpd_target"
    only = live_functions(state(lp("lpb__klpd_target", 1, enabled=False, transition=True)))
    assert only[0].live == "" and only[0].previous == "lpb__klpd_target"  # back to the original


def test_object_not_loaded_is_not_on_the_stack() -> None:
    assert live_functions(state(lp("lpa__klpd_target", 1, patched=False))) == ()


def test_snapshot_and_klpctl_show_it() -> None:
    st = state(lp("lpa__klpd_target", 1), lp("lpb__klpd_target", 2))
    snap = build_snapshot(
        SnapshotInputs(
            catalog=Catalog(patches={}),
            state=st,
            desired=frozenset(),
            notes={},
            refused=frozenset(),
            pending=(),
            failures={},
            transition=None,
            overall=OverallState.CONVERGED,
            last_error="",
            last_reconcile=0.0,
        )
    )
    d = snap.to_dict()
    assert d["functions"][0]["live"] == "lpb__klpd_target"
    text = render_status(d)
    assert "klpd_target:klpd_target_value,1: lpb__klpd_target" in text
    assert "stack: lpb__klpd_target > lpa__klpd_target" in text
    mine = render_versions(d["functions"], {"module": "lpa__klpd_target"})
    assert mine == ["klpd_target:klpd_target_value,1: not live (lpb__klpd_target runs)"]
