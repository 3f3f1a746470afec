"""The controller the D-Bus layer adapts (:class:`~klpd.core.status.Controller`): each
request is validated, delegated to the orchestrator's pieces, answered. No loop logic here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from klpd.core.model import BlockingTask
from klpd.core.status import ControlError, Listener, Snapshot
from klpd.service.config import Config
from klpd.service.orchestrator import Orchestrator


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
                raise ControlError("failed", str(e)) from e
        orch.memory.forget_failures()
        orch.rescan()
        orch.request_reconcile("reload")

    async def enable_patch(self, name: str) -> None:
        orch = self._orch
        patch = orch.catalog.patches.get(name)
        if patch is None:
            raise ControlError("unknown-patch", f"no installed patch named {name!r}")
        orch.overrides.enable(name)
        orch.memory.forget(pm.module for pm in patch.modules.values())
        orch.reselect()
        orch.request_reconcile(f"enable {name}")

    async def disable_patch(self, name: str) -> None:
        orch = self._orch
        if name not in orch.catalog.patches:
            raise ControlError("unknown-patch", f"no installed patch named {name!r}")
        orch.overrides.disable(name)
        orch.reselect()
        orch.request_reconcile(f"disable {name}")

    async def wait_converged(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._orch.converged.wait(), timeout)
        except TimeoutError:
            return False
        return True
