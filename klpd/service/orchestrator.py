"""The orchestrator: one asyncio loop that keeps the kernel's livepatches as planned.

It reads the kernel, asks the pure planner what to do, does the *first* action only, and
reads the kernel again — so every step is decided from the truth, and killing klpd at any
point loses nothing: the next start reconciles from sysfs the same way.

The loop is short because the work is in named pieces, each tested on its own:
:class:`~klpd.service.memory.Memory` (failures, avoided, refused, pinned),
:class:`~klpd.service.guard.ReplaceGuard` (atomic-replace detection),
:class:`~klpd.service.executor.Executor` (load / disable / unload, one transition at a time,
one retry policy) over a :class:`~klpd.service.port.KernelPort`, and
:class:`~klpd.service.reporter.Reporter` (snapshot, events, last error), and the
:class:`~klpd.service.bookkeeper.Bookkeeper` that writes down what a step did and holds
the seams for other concerns (a hook before each load, and when a module is known applied).
The executor and the transition watcher never call back into the loop: they return what
happened, or tell the reporter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from klpd.core.model import Action, ActionKind, Catalog, KernelState
from klpd.core.observe import objects_coming, unsettled
from klpd.core.planner import PatchMemo, plan, select_desired
from klpd.core.status import Counters
from klpd.kernel.catalog import vermagic_matches
from klpd.service.arming import Arming
from klpd.service.bookkeeper import Bookkeeper, LoadHook
from klpd.service.bootguard import BootGuard
from klpd.service.config import Config
from klpd.service.executor import Executor
from klpd.service.guard import ReplaceGuard
from klpd.service.inspection import ModuleInspector
from klpd.service.memory import Memory
from klpd.service.overrides import Overrides
from klpd.service.port import KernelPort, SysfsPort
from klpd.service.reporter import Picture, Reporter
from klpd.service.retry import Retry
from klpd.service.scanner import ScanFn, Scanner
from klpd.service.screening import Screening
from klpd.service.transition import TransitionWatcher

log = logging.getLogger(__name__)


def incompatible_modules(catalog: Catalog, release: str) -> dict[str, str]:
    """Modules built for another kernel would fail with "Exec format error": say so up front
    and never try them. Module -> why."""
    out: dict[str, str] = {}
    for pm in catalog.by_module().values():
        if not vermagic_matches(pm, release):
            built = pm.vermagic.split()[0] if pm.vermagic else "no vermagic"
            out[pm.module] = f"built for {built}, the running kernel is {release}"
    return out


def _told(catalog: Catalog, release: str) -> dict[str, str]:
    """A new catalog's problems and incompatible modules, logged; the latter returned."""
    for problem in catalog.problems:
        log.warning("catalog: %s: %s", problem.path, problem.message)
    incompatible = incompatible_modules(catalog, release)
    for module, why in incompatible.items():
        log.warning("%s: %s", module, why, extra={"MODULE": module})
    return incompatible


class Orchestrator:
    def __init__(
        self,
        config: Config,
        *,
        port: KernelPort | None = None,
        hooks: Sequence[LoadHook] = (),
        scan: ScanFn | None = None,
        inspector: ModuleInspector | None = None,
        bootguard: BootGuard | None = None,
    ) -> None:
        """``inspector`` and ``bootguard``: see :mod:`klpd.service.screening` (the daemon
        passes both, from ``host_guards``; in-process tests may leave them out)."""
        release = config.kernel.read_release()
        self._own_port = SysfsPort(config.kernel, release, config.retry.modprobe_timeout)
        self._port: KernelPort = port or self._own_port
        self._stopping = False
        self._heard, self._plan_memo = set[str](), PatchMemo()  # udev's news; the last plan
        self.converged = asyncio.Event()  # set by a pass that ended with nothing to do
        self.counters = Counters()
        self.memory = Memory()
        self.guard = ReplaceGuard()
        self.picture = Picture(release=release, state=KernelState(release=release))
        self.reporter = Reporter(self.picture, self.memory, self._port, self.counters)
        self.screening = Screening(inspector, bootguard, self.memory, self.reporter)
        self.scanner = Scanner(self.screening, scan)
        hooks = self.screening.around(hooks)
        self._arming = Arming(self.request_reconcile)  # softdep pre-armed P__m (arming.py)
        self.books = Bookkeeper(self.memory, self.guard, self.reporter, self.counters, hooks)
        self._watcher = TransitionWatcher(self._port, self.reporter)
        retry, transition = Retry(), config.transition  # (configure sets them again)
        self.executor = Executor(self._port, self._watcher, self.counters, retry, transition)
        self.overrides = Overrides(Path(config.state.directory) / "overrides.json")
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Apply a (re)loaded configuration; the caller rescans."""
        release = config.kernel.read_release()
        self._config = config
        self._own_port.configure(config.kernel, release, config.retry.modprobe_timeout)
        self.picture.release = release
        self.executor.retry = Retry.from_config(config.retry)
        self.executor.transition = config.transition
        self.scanner.directories = [Path(d) for d in config.catalog.resolve(release)]
        self.overrides.path = Path(config.state.directory) / "overrides.json"
        self.screening.configure(config)

    @property
    def config(self) -> Config:
        return self._config

    @property
    def catalog(self) -> Catalog:
        return self.picture.catalog

    @property
    def desired(self) -> frozenset[str]:
        return self.picture.selection.desired

    # --- inputs: catalog, events ---------------------------------------------------------

    def rescan(self) -> Catalog:
        """Scan and adopt here and now (in-process tests, benches)."""
        return self._adopt(*self.scanner.scan(self.picture.catalog))

    async def rescan_off_loop(self) -> Catalog:
        """Scan in a worker thread (:mod:`~klpd.service.scanner`), adopt on the loop."""
        return self._adopt(*await self.scanner.off_loop(self.picture.catalog))

    def _adopt(self, catalog: Catalog, refusals: dict[str, str] | None) -> Catalog:
        self.picture.catalog = catalog
        self.executor.managed = frozenset(catalog.by_module())
        self.memory.mark_incompatible(_told(catalog, self.picture.release))
        self.screening.screen(catalog, self.books, refusals)
        self.reselect()
        return catalog

    def reselect(self) -> None:
        """Which patches are desired: the configuration, the operator's vetoes, refusals."""
        p = self._config.patches
        self.picture.selection = select_desired(
            self.picture.catalog,
            explicit=p.desired,
            exclude=p.exclude,
            pin=p.pin,
            disabled=self.overrides.disabled,
            refused=self.memory.refused,
        )
        self.reporter.publish()

    def module_added(self, module: str) -> None:
        """A module came: a failed ``P__<module>`` gets another chance, then reconcile."""
        self._heard.add(module)  # read at the next look (kview.py says why)
        self.memory.module_came(module, self.picture.catalog)
        self.request_reconcile(f"add {module}")

    def module_removed(self, module: str) -> None:
        self._heard.add(module)
        self.request_reconcile(f"remove {module}")

    def resync(self, why: str) -> None:
        self.counters.resyncs += 1
        self.request_reconcile(f"resync: {why}")

    def request_reconcile(self, why: str) -> None:
        log.debug("reconcile requested: %s", why)
        self.converged.clear()
        self.picture.requested.set()

    # --- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Reconcile whenever asked, until :meth:`stop`."""
        self.screening.start()
        self.picture.requested.set()
        while not self._stopping:
            await self.picture.requested.wait()
            if self._stopping:
                break
            self.picture.requested.clear()
            try:
                await self.reconcile()
            except Exception as e:  # never die on one bad pass: say it, try again on next event
                log.exception("reconcile failed")
                self.reporter.set_error(f"reconcile failed: {e}")

    def stop(self) -> None:
        self._stopping = True
        self.picture.requested.set()

    def read_state(self) -> KernelState:
        return self._port.read_state()

    def plan_now(self, state: KernelState) -> list[Action]:
        mem, policy, memo = self.memory, self._config.policy.on_object_removed, self._plan_memo
        avoid, refused, arming = mem.not_to_load(), mem.refused_patches(), self._arming.now()
        return plan(self.picture.catalog, state, self.desired, policy, avoid, refused, arming, memo)

    def look(self, touched: Sequence[str] | None = None) -> KernelState:
        """Read the kernel (all, or what acting on ``touched`` can have changed, and the
        modules udev told of); notice what klpd did not plan (patches wiped or refused)."""
        news, self._heard = self._heard, set()
        state = self.read_state() if touched is None else self._port.read_changes([*touched, *news])
        self._arming.observed(state, self.picture.catalog, self._config.softdep.enabled, news)
        managed = self.picture.catalog.by_module()
        if self.books.observe(state, managed, self.screening.replace_known(state, managed)):
            self.reselect()
        return state

    async def reconcile(self) -> None:
        """Plan and act, one action at a time, until the plan is empty."""
        self.counters.reconciles += 1
        cfg, pic = self._config.transition, self.picture
        settle_polls = int(cfg.revert_timeout / cfg.poll_interval)
        touched: list[str] | None = None  # None: read all; else what can have changed
        while not self._stopping:
            state = self.look(touched)
            if state.transition is not None:
                # Someone's transition (ours from a previous life, or another tool's).
                t = state.transition
                self.books.record(await self.executor.wait_out(t.name, t.enabled))
                touched = []  # a livepatch in transition is re-read anyway
                continue
            actions = self.plan_now(state)
            pic.state, pic.pending = state, actions
            if not actions:
                freeing = unsettled(state, pic.catalog.by_module(), self.memory.pinned)
                wanted = {o for n in self.desired for o in pic.catalog.patches[n].objects}
                if objects_coming(state, wanted) or freeing:
                    # Before 5.11 the add uevent precedes init: wait for "live". A disabled
                    # patch is freed by a kernel work item a moment later; no uevent says
                    # when, so poll while (and only while) one is pending, for at most
                    # transition.revert_timeout.
                    if settle_polls > 0:
                        settle_polls, touched = settle_polls - 1, []
                        await asyncio.sleep(cfg.poll_interval)
                        continue
                    self.books.pin(freeing)
                break
            self.reporter.publish()
            await self._execute(actions[0])
            touched = [actions[0].module]
        pic.last_reconcile = time.time()
        self.reporter.publish()
        # Only a pass that no request arrived during proves convergence; otherwise the run
        # loop goes round again (``klpctl disable X && klpctl wait`` must see X retired).
        if not pic.pending and pic.state.transition is None and not pic.requested.is_set():
            self.converged.set()

    async def _execute(self, action: Action) -> None:
        extra = {"PATCH": action.patch, "OBJECT": action.obj, "MODULE": action.module}
        log.info("%s", action, extra={**extra, "ACTION": str(action.kind)})
        pm = self.picture.catalog.module(action.module)
        if action.kind is ActionKind.LOAD and pm is not None and self.books.refuse_to_load(pm):
            self.reselect()  # the pre-load seam said no: the patch is refused
            return
        step = await self.executor.run(action)
        self.screening.settled(action, step)
        if self.books.settle(step, pm):
            self.reselect()
