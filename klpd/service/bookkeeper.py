"""The bookkeeper: writes down what the executor and the replace guard found — in memory,
the counters, the reporter (events, LastError) and the log — and runs the load hooks.

The seams for other concerns are here, named: :meth:`Bookkeeper.refuse_to_load` (a module is
about to be loaded; a :class:`LoadHook` may refuse its patch) and ``applied`` (a module is
known applied: loaded, enabled, its transition done). Methods that refuse a patch return
True: the orchestrator then selects the desired patches again.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

from klpd.core.model import ActionKind, KernelState, PatchModule
from klpd.core.status import Counters, Event, EventKind
from klpd.service.executor import Fault, Step
from klpd.service.guard import Refusal, ReplaceGuard
from klpd.service.memory import Memory
from klpd.service.reporter import Reporter

log = logging.getLogger(__name__)

PINNED = "disabled but still referenced: forced, it can never be removed"


class LoadHook(Protocol):
    """Another concern's say (module inspection, a boot-loop guard): asked before each load,
    told when a module is known applied."""

    def before_load(self, module: PatchModule) -> str | None:
        """A reason to refuse ``module``'s patch (it is then never loaded), or None."""

    def applied(self, module: PatchModule) -> None: ...


class Bookkeeper:
    __slots__ = ("_counters", "_guard", "_hooks", "_memory", "_replace_marked", "_reporter")

    def __init__(
        self,
        memory: Memory,
        guard: ReplaceGuard,
        reporter: Reporter,
        counters: Counters,
        hooks: Sequence[LoadHook] = (),
    ) -> None:
        self._memory, self._guard, self._reporter = memory, guard, reporter
        self._counters, self._hooks = counters, tuple(hooks)
        self._replace_marked: frozenset[str] = frozenset()

    def refuse_to_load(self, pm: PatchModule) -> bool:
        """The pre-load seam: True when a hook refused ``pm``'s patch (now refused)."""
        for hook in self._hooks:
            why = hook.before_load(pm)
            if why:
                return self.refuse(Refusal(pm.patch, why, what=type(hook).__name__))
        return False

    def settle(self, step: Step, pm: PatchModule | None) -> bool:
        """Record what one action did; True when a patch got refused."""
        action = step.action
        if step.loaded:
            self._memory.record_success(action.module)
        self.record(step.faults)
        refused = False
        refusal = self._guard.check_loaded(action.patch, action.module, step.replace)
        if refusal is not None:
            refused = self.refuse(refusal)
        if action.kind is ActionKind.DISABLE and not step.replan:
            self._guard.taken_away(action.module)
        if step.applied:
            self._applied(action.patch, action.module, pm)
        if step.retired:
            self._reporter.emit(Event(EventKind.PATCH_RETIRED, action.patch, action.module))
        return refused

    def _applied(self, patch: str, module: str, pm: PatchModule | None) -> None:
        """The seam where a module is known applied (loaded, enabled, transition done)."""
        self._guard.applied(module)
        for hook in self._hooks:
            if pm is not None:
                hook.applied(pm)
        self._reporter.emit(Event(EventKind.PATCH_APPLIED, patch, module))

    def record(self, faults: Sequence[Fault]) -> None:
        for f in faults:
            self._counters.failures += 1
            self._memory.record_failure(f.module, f.message)
            if f.error:
                self._reporter.set_error(f.error)
                log.error("%s", f.error, extra={"PATCH": f.patch, "MODULE": f.module})
            self._reporter.emit(Event(EventKind.PATCH_FAILED, f.patch, f.module, f.message))

    def observe(
        self,
        state: KernelState,
        managed: Mapping[str, PatchModule],
        replace_known: Collection[str] = (),
    ) -> bool:
        """Patches we saw applied vanished without us disabling them: say it loudly; the
        planner restores them (stale → reload) and, if the replace patch is ours, takes it
        away. An atomic-replace patch still applied is a failure (DEGRADED) until it is
        gone. True when a patch got refused."""
        findings = self._guard.observe(
            state, managed, self._memory.refused_patches(), replace_known
        )
        if findings.wipe:
            log.error(findings.wipe, extra={"ACTION": "replace-detected"})
            self._reporter.set_error(findings.wipe)
        for name in self._replace_marked - findings.replace_applied:
            self._memory.failures.pop(name, None)
        for name in findings.replace_applied - self._replace_marked:
            why = "an atomic-replace patch is applied: it replaced every other livepatch"
            self._memory.failures[name] = why
            log.error("%s: %s", name, why, extra={"MODULE": name, "ACTION": "replace-applied"})
        self._replace_marked = findings.replace_applied
        refused = [self.refuse(r) for r in findings.refusals]
        return any(refused)

    def refuse(self, refusal: Refusal) -> bool:
        """Never load ``refusal.patch`` again; True the first time."""
        if not self._memory.refuse(refusal.patch, refusal.why):
            return False
        patch, why, what = refusal.patch, refusal.why, refusal.what
        log.error("refusing %s patch %s: %s", what, patch, why, extra={"PATCH": patch})
        self._reporter.emit(Event(EventKind.PATCH_FAILED, patch=patch, detail=f"{what}: {why}"))
        return True

    def pin(self, modules: Sequence[str]) -> None:
        for name in modules:
            if self._memory.pin(name, PINNED):
                log.error("%s: %s", name, PINNED, extra={"MODULE": name})
