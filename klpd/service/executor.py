"""The executor: does one planned action to the kernel — load, disable or unload — through
one retry policy, against a :class:`~klpd.service.port.KernelPort`.

It decides nothing and remembers nothing: it returns a :class:`Step` saying what happened
(the faults, whether the module is now applied, whether it turned out to be an
atomic-replace patch), and the orchestrator records it. Kernel facts it relies on:

- one transition at a time: enabling or disabling a patch while another is in transition
  fails with EBUSY, so before a disable, and between EBUSY retries of a load, it waits for
  the running transition (ours from a previous life, or another tool's) to end;
- every enable starts a transition, even one that ended before modprobe exited: it is
  waited for (and reported) either way, so started/finished signals come in pairs;
- after a disable completes, the sysfs directory goes (and the module reference drops) in a
  kernel work item: it waits for that, so the unload that follows can succeed; an rmmod
  that still says "in use" is retried the same way.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from klpd.core.model import Action, ActionKind
from klpd.core.status import Counters
from klpd.kernel.modprobe import Failure, ModprobeResult
from klpd.service.config import TransitionConfig
from klpd.service.port import KernelPort
from klpd.service.retry import Retry
from klpd.service.transition import Outcome, TransitionWatcher

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Fault:
    """Something that failed: ``module`` is to be recorded as failed with ``message``."""

    patch: str
    module: str
    message: str
    error: str = ""  # the LastError text; "" when already reported (a stall)


@dataclass(frozen=True, slots=True)
class Step:
    """What one action did."""

    action: Action
    faults: tuple[Fault, ...] = ()
    loaded: bool = False  # LOAD: modprobe succeeded
    applied: bool = False  # LOAD: enabled, and its transition completed
    replace: bool = False  # LOAD: sysfs shows it is an atomic-replace patch
    retired: bool = False  # UNLOAD: rmmod succeeded
    replan: bool = False  # nothing done: the kernel changed under the plan, plan again


def _fault(action: Action, message: str) -> Fault:
    return Fault(action.patch, action.module, message, f"{action}: {message}")


class Executor:
    __slots__ = ("_counters", "_port", "_watcher", "managed", "retry", "transition")

    def __init__(
        self,
        port: KernelPort,
        watcher: TransitionWatcher,
        counters: Counters,
        retry: Retry,
        transition: TransitionConfig,
    ) -> None:
        self._port, self._watcher, self._counters = port, watcher, counters
        self.retry = retry  # a fresh policy (attempt 1); each action starts from it
        self.transition = transition
        self.managed: frozenset[str] = frozenset()  # catalog modules: their stalls are ours

    async def run(self, action: Action) -> Step:
        if action.kind is ActionKind.LOAD:
            return await self.load(action)
        if action.kind is ActionKind.DISABLE:
            return await self.disable(action)
        return await self.unload(action)

    # --- the three actions -------------------------------------------------------------

    async def load(self, action: Action) -> Step:
        faults: list[Fault] = []
        # EBUSY: another transition (ours from a past life, or another tool's) is running.
        res = await self._kmod(self._port.modprobe, action, Failure.BUSY, faults)
        if not res.ok:
            return Step(action, (*faults, _fault(action, res.describe())))
        self._counters.transitions += 1
        lp = self._port.read_livepatch(action.module)
        if lp is None:
            message = "loaded, but it is not a livepatch (no /sys/kernel/livepatch entry)"
            return Step(action, (*faults, _fault(action, message)), loaded=True)
        replace = bool(lp.replace)
        outcome = await self._wait(action.module, True, action.patch, faults)
        applied = (
            outcome is not Outcome.REVERTED and self._port.read_livepatch(action.module) is not None
        )
        return Step(action, tuple(faults), loaded=True, applied=applied, replace=replace)

    async def disable(self, action: Action) -> Step:
        faults: list[Fault] = []
        await self._wait_quiet(faults)
        try:
            self._port.write_attr(action.module, "enabled", "0\n")
        except FileNotFoundError:
            return Step(action, tuple(faults))  # already gone
        except OSError as e:
            if e.errno != errno.EBUSY:
                message = f"cannot disable: {os.strerror(e.errno or 0)}"
                return Step(action, (*faults, _fault(action, message)))
            # Another transition started after the plan was made. Wait for it, then let
            # the orchestrator read the kernel and plan again: the disable may be wanted no
            # more (the soak found an object that came back meanwhile and lost its patch to
            # a disable planned while it was gone).
            await self._wait_quiet(faults)
            await asyncio.sleep(self.retry.delay())
            return Step(action, tuple(faults), replan=True)
        self._counters.transitions += 1
        await self._wait(action.module, False, action.patch, faults)
        await self._watcher.wait_until(
            lambda: self._port.read_livepatch(action.module) is None,
            self.transition.revert_timeout,
            self.transition.poll_interval,
        )
        return Step(action, tuple(faults))

    async def unload(self, action: Action) -> Step:
        faults: list[Fault] = []
        # "in use": the reference of a disabled patch is dropped by a kernel work item.
        res = await self._kmod(self._port.rmmod, action, Failure.IN_USE, faults)
        if not res.ok:
            return Step(action, (*faults, _fault(action, res.describe())))
        return Step(action, tuple(faults), retired=True)

    # --- transitions -------------------------------------------------------------------

    async def wait_out(self, module: str, target_patched: bool) -> tuple[Fault, ...]:
        """Wait for a transition found running (ours from a previous life, or another
        tool's); a stalled one of ours is handled by the stall policy."""
        faults: list[Fault] = []
        await self._wait(module, target_patched, "", faults)
        return tuple(faults)

    async def _wait_quiet(self, faults: list[Fault]) -> None:
        """Wait for any running transition to end."""
        while (t := self._port.read_state().transition) is not None:
            await self._wait(t.name, t.enabled, "", faults)

    async def _wait(
        self, module: str, target_patched: bool, patch: str, faults: list[Fault]
    ) -> Outcome:
        outcome, t = await self._watcher.wait(
            module, target_patched, self.transition, patch=patch, managed=module in self.managed
        )
        if outcome is Outcome.REVERTED and target_patched:
            # The stall was reported (LastError, signal) as it happened.
            faults.append(Fault(patch, module, f"{t.stall_message}; reverted"))
        return outcome

    # --- modprobe / rmmod --------------------------------------------------------------

    async def _kmod(
        self,
        tool: Callable[[str], Awaitable[ModprobeResult]],
        action: Action,
        retry_on: Failure,
        faults: list[Fault],
    ) -> ModprobeResult:
        """Run ``tool`` on ``action.module`` until it works, fails otherwise than with
        ``retry_on``, or the retry policy is exhausted; the last result."""
        retry = self.retry
        load = action.kind is ActionKind.LOAD
        while True:
            if load:
                self._counters.modprobe_calls += 1
            else:
                self._counters.rmmod_calls += 1
            res = await tool(action.module)
            if res.ok or res.failure is not retry_on or retry.is_exhausted():
                return res
            delay = retry.delay()
            log.info("%s: %s, retry %d in %.2fs", action, res.failure, retry.attempt, delay)
            if load:
                await self._wait_quiet(faults)
            await asyncio.sleep(delay)
            retry = retry.increment()
