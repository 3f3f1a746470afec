"""The controller the D-Bus layer adapts (:class:`~klpd.core.status.Controller`): each
request is validated, delegated to the orchestrator's pieces, answered. No loop logic here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from klpd.core.model import BlockingTask, OverallState
from klpd.core.preview import PlanPreview, UnknownPatches, preview
from klpd.core.preview import Selection as PatchSelection
from klpd.core.status import ControlFailed, Listener, Snapshot, UnknownPatchError
from klpd.service.config import Config
from klpd.service.orchestrator import Orchestrator, incompatible_modules


class Control:
    __slots__ = ("_load_config", "_orch")

    def __init__(
        self, orchestrator: Orchestrator, config_loader: Callable[[], Config] | None = None
    ) -> None:
        self._orch = orchestrator
        self._load_config = config_loader

    def snapshot(self) -> Snapshot:
        return self._orch.reporter.snapshot()

    def blocking_tasks(self) -> tuple[BlockingTask, ...]:
        return self._orch.reporter.blocking_tasks()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return self._orch.reporter.subscribe(listener)

    async def reload(self) -> None:
        orch = self._orch
        if self._load_config is not None:
            try:
                orch.configure(self._load_config())
            except Exception as e:  # a bad new file keeps the old config
                orch.reporter.set_error(f"configuration reload failed, keeping the old one: {e}")
                raise ControlFailed(str(e)) from e
        orch.memory.forget_failures()
        await orch.rescan_off_loop()
        orch.request_reconcile("reload")

    async def enable_patch(self, name: str) -> None:
        orch = self._orch
        patch = orch.catalog.patches.get(name)
        if patch is None:
            raise UnknownPatchError(f"no installed patch named {name!r}")
        orch.overrides.enable(name)
        orch.memory.forget(pm.module for pm in patch.modules.values())
        orch.screening.release(pm.module for pm in patch.modules.values())
        orch.reselect()
        orch.request_reconcile(f"enable {name}")

    async def disable_patch(self, name: str) -> None:
        orch = self._orch
        if name not in orch.catalog.patches:
            raise UnknownPatchError(f"no installed patch named {name!r}")
        orch.overrides.disable(name)
        orch.reselect()
        orch.request_reconcile(f"disable {name}")

    def settled(self) -> OverallState | None:
        return self.snapshot().state if self._orch.converged.is_set() else None

    async def wait_settled(self, timeout: float) -> OverallState:
        """The state once a pass ended with nothing to do (converged, degraded, failed), or
        ``converging`` after ``timeout`` seconds."""
        # Answered here when settled already: Python 3.11's wait_for(..., 0) cancels the
        # wait before it ran, and said "converging" to `klpctl wait --timeout 0` when not.
        if (state := self.settled()) is not None:
            return state
        try:
            await asyncio.wait_for(self._orch.converged.wait(), timeout)
        except TimeoutError:
            return OverallState.CONVERGING
        return self.snapshot().state

    async def wait_converged(self, timeout: float) -> bool:
        return await self.wait_settled(timeout) is OverallState.CONVERGED

    async def plan_preview(
        self, *, rescan: bool = False, enable: Sequence[str] = (), disable: Sequence[str] = ()
    ) -> PlanPreview:
        """What a reconcile would do now (after a rescan, after enable/disable), doing none
        of it: a rescan is scanned into a copy; nothing the orchestrator holds changes."""
        orch, mem = self._orch, self._orch.memory
        catalog, avoid, incompatible = orch.catalog, set(mem.avoided), set(mem.incompatible)
        if rescan:
            catalog = await orch.scanner.catalog_only(orch.catalog)
            avoid = set()  # what a reload forgets
            incompatible = set(incompatible_modules(catalog, orch.picture.release))
        p = orch.config.patches
        try:
            return preview(
                catalog,
                orch.read_state(),
                selection=PatchSelection(p.desired, p.exclude, p.pin),
                disabled=frozenset(orch.overrides.disabled),
                refused=mem.refused,
                avoid=frozenset(avoid | incompatible),
                policy=orch.config.policy.on_object_removed,
                rescan=rescan,
                enable=enable,
                disable=disable,
            )
        except UnknownPatches as e:
            raise UnknownPatchError(str(e)) from None
