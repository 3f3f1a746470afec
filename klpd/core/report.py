"""Build the :class:`~klpd.core.status.Snapshot` from what the orchestrator knows. Pure (the
:class:`SnapshotBuilder` only remembers its last build, to make the next one cheaper)."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from klpd.core.model import (
    Action,
    ActionKind,
    Catalog,
    KernelState,
    OverallState,
    Patch,
    PatchModule,
)
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
    pending: Collection[str],
    unapplying: Collection[str],
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


@dataclass(frozen=True, slots=True)
class SnapshotInputs:
    """What a snapshot is made of: the catalog and kernel, the selection, klpd's memory.
    ``refused`` patches are shown with ``refusals[patch]`` (why) when given;
    ``quarantined`` modules (the boot-loop guard) are shown as such until cleared."""

    catalog: Catalog
    state: KernelState
    desired: frozenset[str]
    notes: Mapping[str, NotDesired]
    refused: frozenset[str]
    pending: Sequence[Action]
    failures: Mapping[str, str]
    transition: TransitionReport | None
    overall: OverallState
    last_error: str
    last_reconcile: float
    refusals: Mapping[str, str] | None = None
    quarantined: Collection[str] = ()


def build_snapshot(inputs: SnapshotInputs) -> Snapshot:
    """A snapshot made from scratch (:class:`SnapshotBuilder` makes the same, incrementally)."""
    return SnapshotBuilder().build(inputs)


@dataclass(frozen=True, slots=True)
class _Inputs:
    """What a snapshot's patch reports are made of, as of one build (copies of the caller's
    mutable mappings: the memory's failures and refusals change in place)."""

    catalog: Catalog
    state: KernelState
    desired: frozenset[str]
    notes: Mapping[str, NotDesired]
    refused: frozenset[str]
    refusals: Mapping[str, str]
    functions: tuple[FunctionVersion, ...]
    loading: frozenset[str]  # pending loads
    unapplying: frozenset[str]  # pending disables and unloads
    failures: Mapping[str, str]
    quarantined: frozenset[str]

    def same_for_every_module(self, other: _Inputs) -> bool:
        return (
            self.catalog is other.catalog
            and self.desired == other.desired
            and self.notes == other.notes
            and self.refused == other.refused
            and self.refusals == other.refusals
        )


def _differ(old: Mapping[str, object], new: Mapping[str, object]) -> set[str]:
    """Keys whose value differs (or is in one mapping only): by identity first, the kernel
    view hands on what it did not read again, then by value."""
    if old is new:
        return set()
    out = set(old.keys() ^ new.keys())
    out.update(k for k, v in new.items() if (o := old.get(k, v)) is not v and o != v)
    return out


def _versions_by_object(
    functions: Sequence[FunctionVersion],
) -> dict[str, list[FunctionVersion]]:
    out: dict[str, list[FunctionVersion]] = {}
    for f in functions:
        out.setdefault(f.obj, []).append(f)
    return out


class SnapshotBuilder:
    """:func:`build_snapshot`, again and again, at the cost of what changed since the last
    build: klpd publishes before every action (and when a transition starts and ends), and
    one action changes a module or two of a thousand. A module's report is made again only
    when something it is made of changed — its livepatch, whether it or its object is
    loaded, its pending action, failure or quarantine, its object's function versions —
    and a patch's only when one of its modules' did; anything shared by every module (the
    catalog, the selection, the refusals) makes everything again. The result is equal to a
    fresh build (property-tested); unchanged reports are the same objects as before."""

    __slots__ = ("_by_object", "_last", "_modules", "_patches")

    def __init__(self) -> None:
        self._last: _Inputs | None = None
        self._modules: dict[str, ModuleReport] = {}
        self._patches: dict[str, PatchReport] = {}
        self._by_object: dict[str, list[str]] = {}  # object -> the catalog's modules for it

    def build(self, inputs: SnapshotInputs) -> Snapshot:
        """The snapshot of ``inputs``, equal to :func:`build_snapshot`'s."""
        i, state = inputs, inputs.state
        last = self._last  # the transition watcher publishes twice with the same state
        if last is not None and last.state is state:
            functions = last.functions
        else:
            functions = live_functions(state)
        now = _Inputs(
            catalog=i.catalog,
            state=state,
            desired=i.desired,
            notes=dict(i.notes),
            refused=i.refused,
            refusals=dict(i.refusals or {}),
            functions=functions,
            loading=frozenset(a.module for a in i.pending if a.kind is ActionKind.LOAD),
            unapplying=frozenset(a.module for a in i.pending if a.kind is not ActionKind.LOAD),
            failures=dict(i.failures),
            quarantined=frozenset(i.quarantined),
        )
        patches = self._patch_reports(now)
        self._last = now
        managed = i.catalog.by_module()
        return Snapshot(
            state=i.overall,
            kernel_release=state.release,
            patches=patches,
            pending=tuple(str(a) for a in i.pending),
            transition=i.transition,
            last_error=i.last_error,
            last_reconcile=i.last_reconcile,
            foreign_livepatches=tuple(sorted(state.livepatches.keys() - managed.keys())),
            functions=now.functions,
        )

    def _changed_modules(self, now: _Inputs) -> set[str] | None:
        """Modules whose report may differ from the last build's; None: every module."""
        last = self._last
        if last is None or not now.same_for_every_module(last):
            return None
        reread = now.state.reread_since(last.state)  # the kernel view says what it read
        if reread is not None:
            changed, moved = set(reread), set(reread)
        else:
            changed = _differ(last.state.livepatches, now.state.livepatches)
            moved = _differ(last.state.modules, now.state.modules)  # loaded, or object live
            changed |= moved
        if last.functions != now.functions:
            moved.update(f.obj for f in set(last.functions) ^ set(now.functions))
        for obj in moved:
            changed.update(self._by_object.get(obj, ()))
        changed |= last.loading ^ now.loading
        changed |= last.unapplying ^ now.unapplying
        changed |= _differ(last.failures, now.failures)
        changed |= last.quarantined ^ now.quarantined
        return changed

    def _patch_reports(self, now: _Inputs) -> tuple[PatchReport, ...]:
        catalog = now.catalog
        changed = self._changed_modules(now)
        if changed is None:
            self._modules, self._patches = {}, {}
            self._by_object = {}
            for pm in catalog.by_module().values():
                self._by_object.setdefault(pm.obj, []).append(pm.module)
            redo = set(catalog.patches)
        else:
            managed = catalog.by_module()
            redo = {managed[m].patch for m in changed if m in managed}
        versions = _versions_by_object(now.functions) if redo else {}
        for name in redo:
            self._patches[name] = self._patch_report(catalog.patches[name], now, changed, versions)
        return tuple(self._patches[name] for name in sorted(catalog.patches))

    def _patch_report(
        self,
        patch: Patch,
        now: _Inputs,
        changed: set[str] | None,
        versions: Mapping[str, Sequence[FunctionVersion]],
    ) -> PatchReport:
        is_refused = patch.replace or patch.name in now.refused
        refusal = _refusal(patch.name, now.notes, now.refusals)
        reports = self._modules
        for pm in patch.modules.values():
            if changed is None or pm.module in changed:
                m = _module_report(
                    pm,
                    now.state,
                    now.loading,
                    now.unapplying,
                    now.failures,
                    is_refused,
                    refusal,
                    pm.module in now.quarantined,
                )
                reports[pm.module] = _with_versions(m, versions.get(pm.obj, ()))
        mods = tuple(reports[pm.module] for pm in patch.ordered)
        main = patch.main
        wanted = patch.name in now.desired and not is_refused
        return PatchReport(
            name=patch.name,
            status=_patch_status(wanted, now.notes.get(patch.name), mods),
            desired=wanted,
            series=patch.series,
            version=patch.version,
            description=main.description if main else "",
            cves=patch.cves,
            modules=mods,
        )


def _with_versions(m: ModuleReport, functions: Sequence[FunctionVersion]) -> ModuleReport:
    mine = tuple(f for f in functions if f.obj == m.obj and m.module in f.stack)
    return dataclasses.replace(m, versions=mine) if mine else m
