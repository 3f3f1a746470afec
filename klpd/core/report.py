"""Build the :class:`~klpd.core.status.Snapshot` from what the orchestrator knows. Pure."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence

from klpd.core.model import Action, ActionKind, Catalog, KernelState, OverallState, PatchModule
from klpd.core.planner import NotDesired, Unwanted
from klpd.core.stacking import FunctionVersion, live_functions
from klpd.core.status import (
    ModuleReport,
    ModuleStatus,
    PatchReport,
    PatchStatus,
    Snapshot,
    TransitionReport,
)


def _module_report(
    pm: PatchModule,
    state: KernelState,
    pending: set[str],
    unapplying: set[str],
    failures: Mapping[str, str],
    refused: bool,
    refusal: str = "",
    quarantined: bool = False,
) -> ModuleReport:
    lp = state.livepatches.get(pm.module)
    loaded = pm.module in state.modules
    obj_loaded = state.object_live(pm.obj)
    obj_state = lp.objects.get(pm.obj) if lp else None
    error = failures.get(pm.module, "")
    if refused:
        status = ModuleStatus.REFUSED
        error = error or refusal
    elif quarantined and lp is None:
        status = ModuleStatus.QUARANTINED
    elif pm.module in unapplying or (lp is not None and not lp.enabled):
        status = ModuleStatus.UNAPPLYING
    elif lp is not None and lp.transition:
        status = ModuleStatus.APPLYING
    elif lp is not None and lp.enabled:
        status = ModuleStatus.APPLIED if obj_loaded else ModuleStatus.ARMED
    elif error:
        status = ModuleStatus.FAILED
    elif pm.module in pending:
        status = ModuleStatus.PENDING
    else:
        status = ModuleStatus.NOT_NEEDED
    return ModuleReport(
        module=pm.module,
        obj=pm.obj,
        status=status,
        object_loaded=obj_loaded,
        loaded=loaded,
        enabled=lp.enabled if lp else None,
        transition=lp.transition if lp else None,
        patched=obj_state.patched if obj_state else None,
        functions=obj_state.functions if obj_state else (),
        error=error,
    )


def _refusal(patch: str, notes: Mapping[str, NotDesired], refusals: Mapping[str, str]) -> str:
    if patch in refusals:
        return f"refused: {refusals[patch]}"
    return str(notes.get(patch, "")) or "refused: atomic-replace patch"


def _patch_status(
    desired: bool, note: NotDesired | None, mods: Sequence[ModuleReport]
) -> PatchStatus:
    statuses = {m.status for m in mods}
    if ModuleStatus.REFUSED in statuses or (note is not None and note.reason.refusal):
        return PatchStatus.REFUSED
    if not desired:
        if note is not None and note.reason is Unwanted.DISABLED:
            return PatchStatus.DISABLED
        return PatchStatus.RETIRED
    needed = [m for m in mods if m.obj == "vmlinux" or m.object_loaded]
    done = [m for m in needed if m.status is ModuleStatus.APPLIED]
    failed = [m for m in needed if m.status in (ModuleStatus.FAILED, ModuleStatus.QUARANTINED)]
    if needed and len(done) == len(needed):
        return PatchStatus.APPLIED
    if failed and not done:
        return PatchStatus.FAILED
    if done or failed:
        return PatchStatus.PARTIAL
    return PatchStatus.PENDING


def current_failures(
    failures: Mapping[str, str],
    catalog: Catalog,
    desired: frozenset[str],
    forced: set[str] | frozenset[str],
) -> dict[str, str]:
    """The failures that still say something about the host: those of desired patches'
    modules, of modules klpd does not know (yet), and of forced modules (they stay loaded
    for good). A retired or disabled patch's failures stay in its report as history."""
    managed = catalog.by_module()
    return {
        module: error
        for module, error in failures.items()
        if module in forced or module not in managed or managed[module].patch in desired
    }


def overall_state(
    *,
    supported: bool,
    pending: Sequence[Action],
    state: KernelState,
    failures: Mapping[str, str],
    stalled: bool,
) -> OverallState:
    if not supported:
        return OverallState.FAILED
    if pending or state.transition is not None:
        return OverallState.CONVERGING
    if failures or stalled:
        return OverallState.DEGRADED
    return OverallState.CONVERGED


def build_snapshot(
    *,
    catalog: Catalog,
    state: KernelState,
    desired: frozenset[str],
    notes: Mapping[str, NotDesired],
    refused: frozenset[str],
    pending: Sequence[Action],
    failures: Mapping[str, str],
    transition: TransitionReport | None,
    overall: OverallState,
    last_error: str,
    last_reconcile: float,
    refusals: Mapping[str, str] | None = None,
    quarantined: Collection[str] = (),
) -> Snapshot:
    """``refused`` patches are shown with ``refusals[patch]`` (why) when given;
    ``quarantined`` modules (the boot-loop guard) are shown as such until cleared."""
    pending_load = {a.module for a in pending if a.kind is ActionKind.LOAD}
    unapplying = {a.module for a in pending if a.kind is not ActionKind.LOAD}
    patches: list[PatchReport] = []
    functions = live_functions(state)
    for patch in sorted(catalog.patches.values(), key=lambda p: p.name):
        is_refused = patch.replace or patch.name in refused
        mods = tuple(
            _module_report(
                pm,
                state,
                pending_load,
                unapplying,
                failures,
                is_refused,
                _refusal(patch.name, notes, refusals or {}),
                pm.module in quarantined,
            )
            for pm in sorted(patch.modules.values(), key=lambda m: (m.obj != "vmlinux", m.obj))
        )
        mods = tuple(_with_versions(m, functions) for m in mods)
        main = patch.main
        wanted = patch.name in desired and not is_refused
        note = notes.get(patch.name)
        patches.append(
            PatchReport(
                name=patch.name,
                status=_patch_status(wanted, note, mods),
                desired=wanted,
                series=patch.series,
                version=patch.version,
                description=main.description if main else "",
                cves=tuple(sorted({c for m in patch.modules.values() for c in m.cves})),
                modules=mods,
            )
        )
    managed = catalog.by_module()
    foreign = tuple(sorted(n for n in state.livepatches if n not in managed))
    return Snapshot(
        state=overall,
        kernel_release=state.release,
        patches=tuple(patches),
        pending=tuple(str(a) for a in pending),
        transition=transition,
        last_error=last_error,
        last_reconcile=last_reconcile,
        foreign_livepatches=foreign,
        functions=functions,
    )


def _with_versions(m: ModuleReport, functions: Sequence[FunctionVersion]) -> ModuleReport:
    mine = tuple(f for f in functions if f.obj == m.obj and m.module in f.stack)
    return dataclasses.replace(m, versions=mine) if mine else m
