"""Waiting for a livepatch transition to end, and what to do when it stalls.

No uevent marks the end of a transition, so ``transition`` is polled — only while one is
in progress (every ``transition.poll_interval``, 0.1 s like the kernel's selftests). After
``stall_timeout`` the tasks blocking it are read from ``/proc/<pid>/patch_state`` and
reported, then ``on_stall`` decides: keep waiting, revert (write the opposite value to
``enabled``), or force (only when configured: a forced unpatching makes the module
unremovable forever). Another tool's transition is only ever waited for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from klpd.core.model import BlockingTask
from klpd.core.status import Event, EventKind, TransitionReport
from klpd.service.config import TransitionConfig
from klpd.service.port import KernelPort

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    DONE = "done"
    REVERTED = "reverted"
    FORCED = "forced"


@dataclass
class Transition:
    module: str
    patch: str
    target_patched: bool
    started_at: float
    stalled: bool = False
    blocking: tuple[BlockingTask, ...] = ()
    stall_message: str = ""

    def report(self) -> TransitionReport:
        return TransitionReport(
            module=self.module,
            target="patched" if self.target_patched else "unpatched",
            started_at=self.started_at,
            stalled=self.stalled,
            blocking=self.blocking,
        )


class TransitionSink(Protocol):
    """Where the watcher reports (the :class:`~klpd.service.reporter.Reporter`): it tells,
    it never asks back."""

    transition: Transition | None

    def emit(self, event: Event) -> None: ...

    def publish(self) -> None: ...

    def set_error(self, message: str) -> None: ...


class TransitionWatcher:
    """Waits for one transition at a time and reports it to ``sink`` as it goes."""

    __slots__ = ("_port", "_sink")

    def __init__(self, port: KernelPort, sink: TransitionSink) -> None:
        self._port, self._sink = port, sink

    async def wait_until(self, cond: Callable[[], bool], timeout: float, interval: float) -> bool:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(interval)
        return True

    async def wait(
        self,
        module: str,
        target_patched: bool,
        cfg: TransitionConfig,
        *,
        patch: str = "",
        managed: bool = True,
    ) -> tuple[Outcome, Transition]:
        """Until ``transition`` reads 0 (or the stall policy ended it)."""
        t = Transition(module, patch, target_patched, time.time())
        sink = self._sink
        sink.transition = t
        sink.emit(Event(EventKind.TRANSITION_STARTED, patch, module, t.report().target))
        sink.publish()
        began = time.monotonic()
        outcome = Outcome.DONE
        try:
            while self._port.in_transition(module):
                waited = time.monotonic() - began
                if not t.stalled and waited >= cfg.stall_timeout:
                    self._stalled(t, waited)
                    outcome = await self._on_stall(t, cfg, managed)
                    if outcome is not Outcome.DONE:
                        break
                await asyncio.sleep(cfg.poll_interval)
        finally:
            sink.transition = None
        sink.emit(Event(EventKind.TRANSITION_FINISHED, patch, module, outcome.value))
        sink.publish()
        return outcome, t

    def _stalled(self, t: Transition, waited: float) -> None:
        t.stalled = True
        t.blocking = self._port.blocking_tasks(t.target_patched)
        who = ", ".join(f"{b.comm}[{b.pid}]" for b in t.blocking) or "unknown tasks"
        t.stall_message = f"transition of {t.module} stalled for {waited:.1f}s on {who}"
        log.warning(t.stall_message, extra={"MODULE": t.module, "ACTION": "stall"})
        self._sink.set_error(t.stall_message)
        self._sink.emit(Event(EventKind.TRANSITION_STALLED, t.patch, t.module, t.stall_message))
        self._sink.publish()

    async def _on_stall(self, t: Transition, cfg: TransitionConfig, managed: bool) -> Outcome:
        if cfg.on_stall == "wait" or not managed:
            # Another tool's transition is its business: report it, never revert it.
            return Outcome.DONE
        if cfg.on_stall == "force":
            log.warning("forcing transition of %s: the module can never be removed", t.module)
            attr, value, outcome = "force", "1\n", Outcome.FORCED
        else:
            log.warning("reverting stalled transition of %s", t.module, extra={"MODULE": t.module})
            attr, value = "enabled", "0\n" if t.target_patched else "1\n"
            outcome = Outcome.REVERTED
        try:
            self._port.write_attr(t.module, attr, value)
        except OSError as e:  # e.g. EINVAL: it ended by itself just now
            log.error("cannot write %s of %s: %s", attr, t.module, e)
            return Outcome.DONE
        await self.wait_until(
            lambda: not self._port.in_transition(t.module), cfg.revert_timeout, cfg.poll_interval
        )
        return outcome
