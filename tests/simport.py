"""The simulated kernel's model (``klpd_sim.kernel.Kernel``) in-process, behind klpd's
:class:`~klpd.service.port.KernelPort`: the soak drives the real orchestrator against it with
no process per step.

What klpd sees is what ``klpd-sim run`` would render into sysfs (the same fields), modprobe
and rmmod are the sim's kmod (``klpd_sim.kmod``: the same probe lists, messages and exit
codes), and a write to ``enabled``/``force`` is the model's store function, so it fails with
the kernel's errno: EBUSY while another transition runs, EINVAL for a value the patch
already has, ENOENT once the patch's directory is gone. Faults are injected here: a
modprobe that fails or hangs until klpd's timeout, and a SIGKILL of klpd right after any
effect (modprobe, rmmod, sysfs write) — raised as :class:`Killed`, which no ``except
Exception`` in klpd stops.
"""

from __future__ import annotations

import asyncio
import errno
import os
import selectors
import time as _time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from klpd_sim.kernel import Kernel, LivePatch
from klpd_sim.kmod import ToolResult
from klpd_sim.kmod import modprobe as sim_modprobe
from klpd_sim.kmod import rmmod as sim_rmmod

from klpd.core.model import BlockingTask, KernelState, LivePatchState, LoadedModule, ObjectState
from klpd.kernel.modprobe import ModprobeResult, classify
from klpd.kernel.run import RunResult


class Killed(BaseException):
    """klpd was SIGKILLed: nothing in it runs on."""


@dataclass
class SimPort:
    kernel: Kernel
    moddir: Path
    conf_dirs: list[Path]
    fail_next: dict[str, str] = field(default_factory=dict)  # module -> modprobe's stderr
    hang_next: set[str] = field(default_factory=set)  # module -> modprobe times out
    kill_after: int | None = None  # SIGKILL klpd after this many more effects
    race_next: Callable[[], None] | None = None  # another tool acts just before klpd's write
    writes: list[tuple[str, str, str, int]] = field(default_factory=list)  # ..., errno
    calls: list[tuple[str, str]] = field(default_factory=list)
    on_effect: Callable[[str, str], None] | None = None

    # --- reading ------------------------------------------------------------------------

    def supported(self) -> bool:
        return True

    def _lp(self, p: LivePatch) -> LivePatchState:
        k = self.kernel
        objects = {
            o.name: ObjectState(
                o.name,
                patched=o.patched if k.profile.object_patched_attr else None,
                functions=tuple(sorted(f"{f},1" for f in [*o.funcs, *o.nop_funcs])),
            )
            for o in p.objects.values()
        }
        return LivePatchState(
            p.module,
            enabled=p.enabled,
            transition=k.transition is not None and k.transition.patch == p.module,
            replace=p.replace if k.profile.replace_attr else None,
            stack_order=k.stack_order(p.module) if k.profile.stack_order_attr else None,
            objects=objects,
        )

    def read_state(self) -> KernelState:
        k = self.kernel
        return KernelState(
            release=k.release,
            modules={n: LoadedModule(n, m.initstate, m.refcnt) for n, m in k.modules.items()},
            livepatches={n: self._lp(p) for n, p in k.patches.items()},
        )

    def read_changes(self, touched: Iterable[str]) -> KernelState:
        return self.read_state()

    def read_livepatch(self, module: str) -> LivePatchState | None:
        p = self.kernel.patches.get(module)
        return None if p is None else self._lp(p)

    def in_transition(self, module: str) -> bool:
        t = self.kernel.transition
        return t is not None and t.patch == module

    def blocking_tasks(self, target_patched: bool) -> tuple[BlockingTask, ...]:
        target = int(target_patched)
        return tuple(
            BlockingTask(t.pid, t.comm, t.patch_state)
            for t in self.kernel.tasks.values()
            if t.patch_state not in (-1, target)
        )

    # --- effects ------------------------------------------------------------------------

    def _effect(self, what: str, module: str) -> None:
        self.calls.append((what, module))
        if self.on_effect is not None:
            self.on_effect(what, module)
        if self.kill_after is not None:
            self.kill_after -= 1
            if self.kill_after <= 0:
                self.kill_after = None
                raise Killed(f"after {what} {module}")

    def _result(self, tool: str, module: str, res: ToolResult) -> ModprobeResult:
        run = RunResult((tool, "--", module), res.rc, res.stdout, res.stderr, 0.0)
        return ModprobeResult(run, classify(run))

    async def modprobe(self, module: str) -> ModprobeResult:
        await asyncio.sleep(0)  # a process: other things happen meanwhile
        if module in self.hang_next:
            self.hang_next.discard(module)
            self._effect("modprobe-hang", module)
            run = RunResult(("modprobe", "--", module), 124, "", "", 60.0)
            return ModprobeResult(run, classify(run))
        if module in self.fail_next:
            stderr = self.fail_next.pop(module)
            self._effect("modprobe-fail", module)
            return self._result("modprobe", module, ToolResult(1, "", stderr))
        res = sim_modprobe(self.kernel, self.moddir, self.conf_dirs, module)
        self._effect("modprobe", module)
        return self._result("modprobe", module, res)

    async def rmmod(self, module: str) -> ModprobeResult:
        await asyncio.sleep(0)
        res = sim_rmmod(self.kernel, module)
        self._effect("rmmod", module)
        return self._result("rmmod", module, res)

    def write_attr(self, module: str, attr: str, value: str) -> None:
        if self.race_next is not None:  # e.g. another tool starts a transition first
            race, self.race_next = self.race_next, None
            race()
        if module not in self.kernel.patches:  # open() of a directory that went
            self.writes.append((module, attr, value.strip(), errno.ENOENT))
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), module)
        if attr == "enabled":
            err = self.kernel.write_enabled(module, value)
        elif attr == "force":
            err = self.kernel.write_force(module, value)
        else:
            raise ValueError(attr)
        self.writes.append((module, attr, value.strip(), err))
        self._effect(f"write-{attr}", module)
        if err:
            raise OSError(err, os.strerror(err))


class VirtualClock:
    """Virtual time for an event loop with no real I/O to wait for: when the loop would
    sleep until its next timer, the clock jumps there instead. ``time.monotonic`` users
    (the transition watcher's stall timer) read it through :meth:`monotonic`."""

    def __init__(self) -> None:
        self.now = 0.0
        self.in_flight = 0  # worker-thread jobs not done yet

    def _done(self) -> None:
        self.in_flight -= 1

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        """Wall-clock timestamps (reports) stay real."""
        return _time.time()

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        # asyncio keeps its selector private; the virtual clock wraps its select()
        selector: selectors.BaseSelector = loop._selector  # type: ignore[attr-defined]
        real_select = selector.select

        def select(timeout: float | None = None) -> list[Any]:
            if self.in_flight:  # a worker thread (e.g. a catalog scan): wait for it really,
                # with virtual time standing still
                return real_select(None if timeout is None else min(timeout, 0.05))
            if timeout is not None and timeout > 0:
                self.now += timeout
            elif timeout is None:  # only real I/O can wake the loop (e.g. its shutdown)
                events = real_select(10.0)
                if not events:
                    raise RuntimeError("the loop would wait forever: nothing is scheduled")
                return events
            return real_select(0)

        real_executor = loop.run_in_executor

        def run_in_executor(executor: Any, func: Callable[..., Any], *args: Any) -> Any:
            future = real_executor(executor, func, *args)
            self.in_flight += 1
            future.add_done_callback(lambda _: self._done())
            return future

        # the loop reads the clock, waits, and runs worker threads through these: replace them
        loop.run_in_executor = run_in_executor  # type: ignore[method-assign,assignment]  # above
        loop.time = self.monotonic  # type: ignore[method-assign]  # the comment above
        selector.select = select  # type: ignore[method-assign]  # the comment above
