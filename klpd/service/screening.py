"""What klpd checks about modules before it ever loads one, kept next to the loop rather
than in it: the module inspector's refusals (read from each module file's ``struct
klp_patch``, :mod:`klpd.service.inspection`) and the boot-loop guard's quarantine
(:mod:`klpd.service.bootguard`). Both are applied again after every catalog scan (a fixed
file lifts its refusal) and both take part in each load as hooks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from klpd.core.model import Action, ActionKind, Catalog, KernelState, PatchModule
from klpd.core.screen import REPLACE_PREFIX, Undeterminable
from klpd.core.status import Event, EventKind
from klpd.service.bookkeeper import Bookkeeper, LoadHook
from klpd.service.bootguard import BootGuard, BootGuardHook
from klpd.service.config import Config
from klpd.service.executor import Step
from klpd.service.guard import Refusal
from klpd.service.inspection import ModuleInspector
from klpd.service.memory import Memory
from klpd.service.reporter import Reporter


def host_guards(config: Config) -> tuple[ModuleInspector, BootGuard | None]:
    """What the daemon guards every load with: module inspection, with the running kernel's
    struct layout (its BTF), and the boot-loop guard (unless ``[boot_guard] enabled`` is
    off), keyed by this boot's id."""
    from klpd.kernel.klpinspect import running_kernel_layout
    from klpd.service.bootguard import read_boot_id

    k = config.kernel
    inspector = ModuleInspector(
        running_kernel_layout(k.sysfs_root), Undeterminable(config.inspect.undeterminable)
    )
    if not config.boot_guard.enabled:
        return inspector, None
    guard = BootGuard(
        config.state.directory,
        read_boot_id(k.proc_root),
        grace_period=config.boot_guard.grace_period,
    )
    return inspector, guard


class Screening:
    __slots__ = (
        "_boot_hook",
        "_inspect_refused",
        "_memory",
        "_quarantine_told",
        "_replace_checked",
        "_replace_found",
        "_replace_state",
        "_reporter",
        "bootguard",
        "inspector",
    )

    def __init__(
        self,
        inspector: ModuleInspector | None,
        bootguard: BootGuard | None,
        memory: Memory,
        reporter: Reporter,
    ) -> None:
        self.inspector, self.bootguard = inspector, bootguard
        self._memory, self._reporter = memory, reporter
        self._boot_hook = BootGuardHook(bootguard) if bootguard is not None else None
        self._inspect_refused: dict[str, str] = {}
        self._quarantine_told: set[str] = set()
        self._replace_checked: set[str] = set()  # livepatches whose file was looked at
        self._replace_found: set[str] = set()  # of those, the atomic-replace ones
        self._replace_state: KernelState | None = None  # the state they are of

    def around(self, hooks: Iterable[LoadHook]) -> list[LoadHook]:
        """``hooks`` with inspection first (a refused module is never opened) and the boot
        guard last (it records only what is really about to be loaded)."""
        first: list[LoadHook] = [self.inspector] if self.inspector is not None else []
        last: list[LoadHook] = [self._boot_hook] if self._boot_hook is not None else []
        return [*first, *hooks, *last]

    def configure(self, config: Config) -> None:
        if self.inspector is not None:
            self.inspector.undeterminable = Undeterminable(config.inspect.undeterminable)
        if self.bootguard is not None:
            self.bootguard.grace_period = config.boot_guard.grace_period

    def inspect(self, catalog: Catalog) -> dict[str, str] | None:
        """Read every module of ``catalog`` (each file version once): patch -> why it is
        refused. Only reads files and the inspector's cache: it runs in the scan's worker
        thread, off the event loop. None without an inspector."""
        return self.inspector.screen_catalog(catalog) if self.inspector is not None else None

    def screen(
        self,
        catalog: Catalog,
        books: Bookkeeper,
        refusals: Mapping[str, str] | None = None,
    ) -> None:
        """Inspection refusals (again after every scan: a fixed file lifts its refusal) and
        the boot guard's quarantine; ``refusals`` as :meth:`inspect` found them (read now
        when not given)."""
        self._replace_checked.clear()  # files may have changed: look at each one's again
        self._replace_found.clear()
        self._replace_state = None
        if self.inspector is not None:
            if refusals is None:
                refusals = self.inspector.screen_catalog(catalog)
            for patch, why in self._inspect_refused.items():
                if refusals.get(patch) != why and self._memory.refused.get(patch) == why:
                    self._memory.unrefuse(patch)
            for patch, why in refusals.items():
                what = "atomic-replace" if REPLACE_PREFIX in why else "inspection"
                books.refuse(Refusal(patch, why, what=what))
            self._inspect_refused = dict(refusals)
        if self.bootguard is not None:
            for module, q in self.bootguard.quarantined.items():
                self._memory.quarantine(module, q.reason)
                if module not in self._quarantine_told:  # the failure signal, once
                    self._quarantine_told.add(module)
                    pm = catalog.module(module)
                    patch = pm.patch if pm is not None else ""
                    self._reporter.emit(Event(EventKind.PATCH_FAILED, patch, module, q.reason))

    def start(self) -> None:
        """On the running loop, once: arm the boot guard's timer for the records a previous
        klpd of this boot left open (a watchdog restart within the grace period left them
        open for good, and the next clean reboot quarantined a good patch: tests/system)."""
        if self._boot_hook is not None:
            self._boot_hook.schedule()

    def release(self, modules: Iterable[str]) -> None:
        """An operator enabled the modules' patch: the boot guard lets them load again."""
        for module in modules:
            if self.bootguard is not None and self.bootguard.clear(module):
                self._quarantine_told.discard(module)
            self._memory.release(module)

    def replace_known(self, state: KernelState, managed: Mapping[str, PatchModule]) -> set[str]:
        """Managed livepatches whose file the inspector knows to be atomic-replace.

        Asked after every action: a livepatch's file is looked at when it first shows up
        (stat, read again if it changed since it was inspected), not again while it stays;
        a new catalog (:meth:`screen`) looks at them all again. So the cost per action is
        that of the livepatches that came, not of every applied one (a ``stat`` each)."""
        if self.inspector is None:
            return set()
        checked, found, present = self._replace_checked, self._replace_found, state.livepatches
        last, self._replace_state = self._replace_state, state
        reread = state.reread_since(last) if last is not None else None
        if reread is None:  # every livepatch, in C
            checked.intersection_update(present)  # one that goes and comes back: looked at
            found.intersection_update(present)
            came = present.keys() - checked
        else:  # the kernel view says what it read again: only those can have come or gone
            gone = {n for n in reread if n not in present}
            checked -= gone
            found -= gone
            came = {n for n in reread if n in present and n not in checked}
        found |= self.inspector.replace_modules({n: managed[n] for n in came if n in managed})
        checked |= came
        return set(found)

    def settled(self, action: Action, step: Step) -> None:
        if self.bootguard is not None and action.kind is ActionKind.LOAD and not step.applied:
            self.bootguard.failed(action.module)  # the machine is up: nothing to watch
