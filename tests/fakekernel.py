"""A deterministic in-memory kernel behind :class:`klpd.service.port.KernelPort`, for the
in-process tests of the orchestrator and its pieces (no processes, no sysfs).

It keeps the kernel facts klpd relies on (DOMAIN.md): one transition at a time (EBUSY
otherwise), a transition ends after ``transition_polls`` reads of ``transition`` unless a
task is stalled in the patch, a disabled patch's directory goes when its transition ends
and its module can then be removed, a livepatch holds a reference while enabled, an
atomic-replace patch wipes every other livepatch. Every call is recorded in ``calls``.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass, field

from klpd.core.model import BlockingTask, KernelState, LivePatchState, LoadedModule, ObjectState
from klpd.kernel.modprobe import ModprobeResult, classify
from klpd.kernel.run import RunResult


@dataclass
class FakePatch:
    module: str
    obj: str
    enabled: bool = True
    transition: int = 0  # reads of `transition` left before it ends (0: not in transition)
    replace: bool = False

    def view(self, targets: set[str]) -> LivePatchState:
        patched = self.enabled and (self.obj == "vmlinux" or self.obj in targets)
        return LivePatchState(
            self.module,
            enabled=self.enabled,
            transition=self.transition > 0,
            replace=self.replace,
            objects={self.obj: ObjectState(self.obj, patched=patched)},
        )


@dataclass
class FakeKernel:
    release: str = "6.1.0-test"
    transition_polls: int = 2
    targets: set[str] = field(default_factory=set)  # ordinary modules, live
    coming: set[str] = field(default_factory=set)  # loaded, init not finished
    livepatch_modules: dict[str, int] = field(default_factory=dict)  # name -> refcnt
    patches: dict[str, FakePatch] = field(default_factory=dict)
    # scripted behaviour
    busy: dict[str, int] = field(default_factory=dict)  # module -> EBUSY answers left
    in_use: dict[str, int] = field(default_factory=dict)  # module -> "in use" answers left
    broken: dict[str, str] = field(default_factory=dict)  # module -> modprobe's stderr
    stalled: set[str] = field(default_factory=set)  # patching transitions that never end
    replace: set[str] = field(default_factory=set)  # atomic-replace modules
    replace_attr: bool = True  # sysfs shows ``replace`` (6.11+); False: as on 6.1
    calls: list[tuple[str, ...]] = field(default_factory=list)
    told: list[list[str]] = field(default_factory=list)  # what each read_changes was told

    # --- the port ----------------------------------------------------------------------

    def supported(self) -> bool:
        return True

    def read_state(self) -> KernelState:
        modules = {t: LoadedModule(t, "live", 0) for t in self.targets}
        modules |= {t: LoadedModule(t, "coming", 0) for t in self.coming}
        modules |= {m: LoadedModule(m, "live", r) for m, r in self.livepatch_modules.items()}
        return KernelState(
            release=self.release,
            modules=modules,
            livepatches={n: self._view(p) for n, p in self.patches.items()},
        )

    def _view(self, p: FakePatch) -> LivePatchState:
        view = p.view(self.targets)
        return view if self.replace_attr else dataclasses.replace(view, replace=None)

    def read_changes(self, touched: Iterable[str]) -> KernelState:
        self.told.append(sorted(touched))
        return self.read_state()

    def read_livepatch(self, module: str) -> LivePatchState | None:
        p = self.patches.get(module)
        return None if p is None else self._view(p)

    def in_transition(self, module: str) -> bool:
        p = self.patches.get(module)
        if p is None or p.transition == 0:
            return False
        if module in self.stalled and p.enabled:
            return True
        p.transition -= 1
        if p.transition == 0 and not p.enabled:
            self._free(p)
        return p.transition > 0

    def blocking_tasks(self, target_patched: bool) -> tuple[BlockingTask, ...]:
        if not any(p.transition and p.module in self.stalled for p in self.patches.values()):
            return ()
        return (BlockingTask(pid=4242, comm="sleeper", patch_state=int(not target_patched)),)

    async def modprobe(self, module: str) -> ModprobeResult:
        self.calls.append(("modprobe", module))
        if module in self.broken:
            return _result("modprobe", module, 1, self.broken[module])
        if module in self.livepatch_modules:
            return _result("modprobe", module, 0, "")
        if self.busy.get(module, 0) > 0 or self._running() is not None:
            self.busy[module] = max(self.busy.get(module, 0) - 1, 0)
            return _result(
                "modprobe",
                module,
                1,
                f"modprobe: ERROR: could not insert '{module}': Device or resource busy",
            )
        obj = module.split("__", 1)[1]
        self.livepatch_modules[module] = 1
        if module in self.replace:
            for other in list(self.patches.values()):
                self._free(other)  # wiped: its module stays, with no reference left
        self.patches[module] = FakePatch(
            module, obj, transition=self.transition_polls, replace=module in self.replace
        )
        return _result("modprobe", module, 0, "")

    async def rmmod(self, module: str) -> ModprobeResult:
        self.calls.append(("rmmod", module))
        if module not in self.livepatch_modules:
            return _result(
                "rmmod", module, 1, f"rmmod: ERROR: Module {module} is not currently loaded"
            )
        if self.in_use.get(module, 0) > 0 or self.livepatch_modules[module] > 0:
            self.in_use[module] = max(self.in_use.get(module, 0) - 1, 0)
            return _result("rmmod", module, 1, f"rmmod: ERROR: Module {module} is in use")
        del self.livepatch_modules[module]
        return _result("rmmod", module, 0, "")

    def write_attr(self, module: str, attr: str, value: str) -> None:
        self.calls.append(("write", module, attr, value.strip()))
        p = self.patches.get(module)
        if p is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), module)
        running = self._running()
        if attr == "force":
            if p.transition:
                p.transition = 1
                self.stalled.discard(module)
            return
        want = value.strip() == "1"
        if running is not None and running is not p:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        if want == p.enabled:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        p.enabled = want  # starts a transition, or reverses the running one
        p.transition = self.transition_polls if not p.transition else p.transition
        self.stalled.discard(module)

    # --- the world around klpd --------------------------------------------------------

    def load_target(self, name: str) -> None:
        self.targets.add(name)

    def remove_target(self, name: str) -> None:
        self.targets.discard(name)

    def count(self, what: str) -> int:
        return sum(1 for c in self.calls if c[0] == what)

    def applied(self) -> set[str]:
        return {n for n, p in self.patches.items() if p.enabled and not p.transition}

    def _running(self) -> FakePatch | None:
        return next((p for p in self.patches.values() if p.transition), None)

    def _free(self, p: FakePatch) -> None:
        del self.patches[p.module]
        self.livepatch_modules[p.module] = 0


def _result(tool: str, module: str, rc: int, stderr: str) -> ModprobeResult:
    res = RunResult((tool, "--", module), rc, "", stderr, 0.0)
    return ModprobeResult(res, classify(res))
