"""The orchestrator: one asyncio loop that keeps the kernel's livepatches as planned.

It reads the kernel, asks the pure planner what to do, does the *first* action only, and
reads the kernel again — so every step is decided from the truth, and killing klpd at any
point loses nothing: the next start reconciles from sysfs the same way.

One kernel transition at a time: before any load or disable it waits for a running
transition to end, polling ``transition`` only while one is in progress, and it retries the
EBUSY that a transition started by someone else still causes.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from klpd.core.model import (
    Action,
    ActionKind,
    BlockingTask,
    Catalog,
    KernelState,
    OverallState,
)
from klpd.core.observe import objects_coming, unsettled, wiped_by_replace
from klpd.core.planner import Selection, plan, select_desired
from klpd.core.report import build_snapshot, overall_state
from klpd.core.status import (
    ControlError,
    Event,
    EventKind,
    Listener,
    Snapshot,
)
from klpd.kernel import kstate
from klpd.kernel.catalog import ModinfoCache, scan_catalog, vermagic_matches
from klpd.kernel.modprobe import Failure, ModprobeResult, modprobe, rmmod
from klpd.service.config import Config
from klpd.service.transition import Outcome, TransitionWatcher

log = logging.getLogger(__name__)


@dataclass
class Counters:
    transitions: int = 0
    failures: int = 0
    reconciles: int = 0
    modprobe_calls: int = 0
    resyncs: int = 0


@dataclass
class _Runtime:
    """What the orchestrator remembers between passes; all of it can be rebuilt from sysfs
    except ``failures`` (why a module failed) and operator overrides (persisted)."""

    failures: dict[str, str] = field(default_factory=dict)
    avoid: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    applied_seen: set[str] = field(default_factory=set)
    loaded_by_us: set[str] = field(default_factory=set)  # this process's own loads
    disabling: set[str] = field(default_factory=set)
    incompatible: set[str] = field(default_factory=set)  # vermagic: never tried
    pinned: set[str] = field(default_factory=set)  # forced: loaded for good


class Orchestrator:
    def __init__(self, config: Config, *, config_loader: Callable[[], Config] | None = None):
        self._config = config
        self._config_loader = config_loader
        self._cache = ModinfoCache()
        self._listeners: list[Listener] = []
        self._dirty = asyncio.Event()
        self._converged = asyncio.Event()
        self._stopping = False
        self._rt = _Runtime()
        self._transitions = TransitionWatcher(
            Path(config.kernel.sysfs_root),
            Path(config.kernel.proc_root),
            self._emit,
            self._publish,
            self._set_error,
        )
        self._last_error = ""
        self._last_reconcile = 0.0
        self._pending: list[Action] = []
        self.counters = Counters()
        self._apply_config(config)
        self._disabled = self._load_overrides()
        self._catalog = Catalog()
        self._selection = Selection(frozenset(), {})
        self._state = KernelState(release=self._release)
        self._snapshot: Snapshot | None = None

    # --- configuration and persistent overrides ------------------------------------------

    def _apply_config(self, config: Config) -> None:
        self._config = config
        k = config.kernel
        self._sysfs = Path(k.sysfs_root)
        self._proc = Path(k.proc_root)
        self._transitions.sysfs, self._transitions.proc = self._sysfs, self._proc
        self._release = k.read_release()
        self._catalog_dirs = [Path(d) for d in config.catalog.resolve(self._release)]

    @property
    def config(self) -> Config:
        return self._config

    @property
    def _overrides_path(self) -> Path:
        return Path(self._config.state.directory) / "overrides.json"

    def _load_overrides(self) -> set[str]:
        try:
            data = json.loads(self._overrides_path.read_text())
            return {str(n) for n in data.get("disabled", [])}
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, AttributeError) as e:
            log.error("ignoring unreadable %s: %s", self._overrides_path, e)
            return set()

    def _save_overrides(self) -> None:
        path = self._overrides_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"disabled": sorted(self._disabled)}) + "\n")
        os.replace(tmp, path)

    # --- the Controller protocol (what D-Bus adapts) -------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def snapshot(self) -> Snapshot:
        if self._snapshot is None:
            self._snapshot = self._build_snapshot()
        return self._snapshot

    def blocking_tasks(self) -> tuple[BlockingTask, ...]:
        t = self._transitions.current
        if t is None:
            return ()
        return kstate.blocking_tasks(self._proc, t.target_patched)

    async def reload(self) -> None:
        if self._config_loader is not None:
            try:
                self._apply_config(self._config_loader())
            except Exception as e:  # a bad new file keeps the old config
                self._set_error(f"configuration reload failed, keeping the old one: {e}")
                raise ControlError("failed", str(e)) from e
        self._rt.avoid.clear()
        pinned = self._rt.pinned  # a forced module stays a fact until reboot
        self._rt.failures = {k: v for k, v in self._rt.failures.items() if k in pinned}
        self.rescan()
        self.request_reconcile("reload")

    async def enable_patch(self, name: str) -> None:
        self._require_patch(name)
        if name in self._disabled:
            self._disabled.discard(name)
            self._save_overrides()
        self._clear_failures_of(name)
        self._reselect()
        self.request_reconcile(f"enable {name}")

    async def disable_patch(self, name: str) -> None:
        self._require_patch(name)
        if name not in self._disabled:
            self._disabled.add(name)
            self._save_overrides()
        self._reselect()
        self.request_reconcile(f"disable {name}")

    async def wait_converged(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._converged.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _require_patch(self, name: str) -> None:
        if name not in self._catalog.patches:
            raise ControlError("unknown-patch", f"no installed patch named {name!r}")

    def _clear_failures_of(self, patch: str) -> None:
        p = self._catalog.patches.get(patch)
        for pm in p.modules.values() if p else ():
            self._rt.avoid.discard(pm.module)
            self._rt.failures.pop(pm.module, None)

    # --- inputs: catalog, events ----------------------------------------------------------

    def rescan(self) -> Catalog:
        self._catalog = scan_catalog(self._catalog_dirs, previous=self._catalog, cache=self._cache)
        for problem in self._catalog.problems:
            log.warning("catalog: %s: %s", problem.path, problem.message)
        # A module built for another kernel would fail with "Exec format error": say so
        # up front and never try it.
        self._rt.incompatible.clear()
        for pm in self._catalog.by_module().values():
            if not vermagic_matches(pm, self._release):
                built = pm.vermagic.split()[0] if pm.vermagic else "no vermagic"
                message = f"built for {built}, the running kernel is {self._release}"
                self._rt.failures[pm.module] = message
                self._rt.incompatible.add(pm.module)
                log.warning("%s: %s", pm.module, message, extra={"MODULE": pm.module})
        self._reselect()
        return self._catalog

    def _reselect(self) -> None:
        p = self._config.patches
        self._selection = select_desired(
            self._catalog,
            explicit=p.desired,
            exclude=p.exclude,
            pin=p.pin,
            disabled=self._disabled | self._rt.refused,
        )
        self._publish()

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    @property
    def desired(self) -> frozenset[str]:
        return self._selection.desired

    def module_added(self, module: str) -> None:
        """A module came: a failed ``P__<module>`` gets another chance, then reconcile."""
        for patch in self._catalog.patches.values():
            pm = patch.modules.get(module)
            if pm is not None:
                self._rt.avoid.discard(pm.module)
        self.request_reconcile(f"add {module}")

    def module_removed(self, module: str) -> None:
        self.request_reconcile(f"remove {module}")

    def resync(self, why: str) -> None:
        self.counters.resyncs += 1
        self.request_reconcile(f"resync: {why}")

    def request_reconcile(self, why: str) -> None:
        log.debug("reconcile requested: %s", why)
        self._converged.clear()
        self._dirty.set()

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Reconcile whenever asked, until :meth:`stop`."""
        self._dirty.set()
        while not self._stopping:
            await self._dirty.wait()
            if self._stopping:
                break
            self._dirty.clear()
            try:
                await self.reconcile()
            except Exception as e:  # never die on one bad pass: say it, try again on next event
                log.exception("reconcile failed")
                self._set_error(f"reconcile failed: {e}")

    def stop(self) -> None:
        self._stopping = True
        self._dirty.set()

    def read_state(self) -> KernelState:
        return kstate.read_kernel_state(self._sysfs, self._proc, self._release)

    def plan_now(self, state: KernelState) -> list[Action]:
        return plan(
            self._catalog,
            state,
            self._selection.desired,
            self._config.policy.on_object_removed,
            frozenset(self._rt.avoid | self._rt.incompatible),
            frozenset(self._rt.refused),
        )

    async def reconcile(self) -> None:
        """Plan and act, one action at a time, until the plan is empty."""
        self.counters.reconciles += 1
        cfg = self._config.transition
        settle_polls = int(cfg.revert_timeout / cfg.poll_interval)
        while not self._stopping:
            state = self.read_state()
            self._notice_wiped(state)
            if state.transition is not None:
                # Someone's transition (ours from a previous life, or another tool's).
                await self._wait_transition(state.transition.name, state.transition.enabled)
                continue
            actions = self.plan_now(state)
            self._state, self._pending = state, actions
            if not actions:
                freeing = unsettled(state, self._catalog.by_module(), self._rt.pinned)
                wanted = {o for n in self.desired for o in self._catalog.patches[n].objects}
                if objects_coming(state, wanted) or freeing:
                    # Before 5.11 the add uevent precedes init: wait for "live". A disabled
                    # patch is freed by a kernel work item a moment later; no uevent says
                    # when, so poll while (and only while) one is pending, for at most
                    # transition.revert_timeout.
                    if settle_polls > 0:
                        settle_polls -= 1
                        await asyncio.sleep(cfg.poll_interval)
                        continue
                    self._pin(freeing)
                break
            self._publish()
            await self._execute(actions[0])
        self._last_reconcile = time.time()
        self._publish()
        # Only a pass that no request arrived during proves convergence; otherwise the run
        # loop goes round again (``klpctl disable X && klpctl wait`` must see X retired).
        if not self._pending and self._state.transition is None and not self._dirty.is_set():
            self._converged.set()

    def _pin(self, modules: list[str]) -> None:
        for name in modules:
            if name in self._rt.pinned:
                continue
            self._rt.pinned.add(name)
            message = "disabled but still referenced: forced, it can never be removed"
            self._rt.failures[name] = message
            log.error("%s: %s", name, message, extra={"MODULE": name})

    def _notice_wiped(self, state: KernelState) -> None:
        """Patches we saw applied vanished without us disabling them: say it loudly; the
        planner restores them (stale → reload) and, if the replace patch is ours, takes it
        away."""
        managed = self._catalog.by_module()
        for name, lp in state.livepatches.items():
            if lp.replace and name in managed and managed[name].patch not in self._rt.refused:
                self._refuse_replace(managed[name].patch, f"sysfs shows {name} replace=1")
        wipe = wiped_by_replace(
            state,
            applied_seen=self._rt.applied_seen,
            loaded_by_us=self._rt.loaded_by_us,
            disabling=self._rt.disabling,
            managed=managed,
        )
        if wipe is not None:
            msg = (
                f"livepatches {', '.join(sorted(wipe.gone))} were replaced by an atomic-replace "
                f"patch ({', '.join(wipe.culprits) or 'unknown'}); restoring them"
            )
            log.error(msg, extra={"ACTION": "replace-detected"})
            self._set_error(msg)
            for c in wipe.culprits:
                if c in managed:
                    self._refuse_replace(managed[c].patch, msg)
        self._rt.applied_seen = {n for n, lp in state.livepatches.items() if lp.enabled}

    def _refuse_replace(self, patch: str, why: str) -> None:
        log.error("refusing atomic-replace patch %s: %s", patch, why, extra={"PATCH": patch})
        self._rt.refused.add(patch)
        self._reselect()
        self._emit(Event(EventKind.PATCH_FAILED, patch=patch, detail=f"atomic-replace: {why}"))

    # --- actions ------------------------------------------------------------------------------

    async def _execute(self, action: Action) -> None:
        extra = {
            "PATCH": action.patch,
            "OBJECT": action.obj,
            "MODULE": action.module,
            "ACTION": str(action.kind),
        }
        log.info("%s", action, extra=extra)
        if action.kind is ActionKind.LOAD:
            await self._load(action)
        elif action.kind is ActionKind.DISABLE:
            await self._disable(action)
        else:
            await self._unload(action)

    def _fail(self, action: Action, message: str) -> None:
        self.counters.failures += 1
        self._rt.failures[action.module] = message
        self._rt.avoid.add(action.module)
        self._set_error(f"{action}: {message}")
        log.error(
            "%s failed: %s",
            action,
            message,
            extra={"PATCH": action.patch, "MODULE": action.module, "ACTION": str(action.kind)},
        )
        self._emit(Event(EventKind.PATCH_FAILED, action.patch, action.module, message))

    async def _kmod(self, action: Action, retry_on: Failure) -> ModprobeResult | None:
        """modprobe (LOAD) or rmmod (UNLOAD) ``action.module``, retrying ``retry_on`` with
        backoff; None (and the failure recorded) when it did not work."""
        retry = self._config.retry
        load = action.kind is ActionKind.LOAD
        tool, cmd = (
            (modprobe, self._config.kernel.modprobe) if load else (rmmod, self._config.kernel.rmmod)
        )
        for attempt in range(1, retry.ebusy_attempts + 1):
            self.counters.modprobe_calls += 1
            res = await tool(cmd, action.module, timeout=retry.modprobe_timeout)
            if res.ok:
                return res
            if res.failure is retry_on and attempt < retry.ebusy_attempts:
                delay = retry.backoff(attempt)
                log.info("%s: %s, retry %d in %.2fs", action, res.failure, attempt, delay)
                if load:
                    await self._wait_quiet()
                await asyncio.sleep(delay)
                continue
            self._fail(action, res.describe())
            return None
        return None

    async def _load(self, action: Action) -> None:
        # EBUSY: another transition (ours from a past life, or another tool's) is running.
        if await self._kmod(action, Failure.BUSY) is None:
            return
        self._rt.failures.pop(action.module, None)
        lp = kstate.read_livepatch(self._sysfs, action.module)
        if lp is None:
            self._fail(action, "loaded, but it is not a livepatch (no /sys/kernel/livepatch entry)")
            return
        if lp.replace:
            self._refuse_replace(action.patch, f"{action.module} is an atomic-replace patch")
        # Every enable starts a transition, even one that ended before modprobe exited:
        # report it either way (started/finished signals come in pairs).
        outcome = await self._wait_transition(action.module, True, patch=action.patch)
        if outcome is Outcome.REVERTED:
            return
        if kstate.read_livepatch(self._sysfs, action.module) is not None:
            self._rt.applied_seen.add(action.module)
            self._rt.loaded_by_us.add(action.module)
            self._emit(Event(EventKind.PATCH_APPLIED, action.patch, action.module))

    async def _disable(self, action: Action) -> None:
        retry = self._config.retry
        self._rt.disabling.add(action.module)
        try:
            for attempt in range(1, retry.ebusy_attempts + 1):
                await self._wait_quiet()
                try:
                    kstate.write_attr(self._sysfs, action.module, "enabled", "0\n")
                    break
                except FileNotFoundError:
                    return  # already gone
                except OSError as e:
                    if e.errno == errno.EBUSY and attempt < retry.ebusy_attempts:
                        await asyncio.sleep(retry.backoff(attempt))
                        continue
                    self._fail(action, f"cannot disable: {os.strerror(e.errno or 0)}")
                    return
            self.counters.transitions += 1
            await self._wait_transition(action.module, False, patch=action.patch)
            # The sysfs directory goes (and the module's reference drops) in a work item
            # after the transition: wait for it so the unload that follows can succeed.
            await self._transitions.wait_until(
                lambda: not (self._sysfs / "kernel/livepatch" / action.module).exists(),
                self._config.transition.revert_timeout,
                self._config.transition.poll_interval,
            )
        finally:
            self._rt.disabling.discard(action.module)
            self._rt.applied_seen.discard(action.module)
            self._rt.loaded_by_us.discard(action.module)

    async def _unload(self, action: Action) -> None:
        # "in use": the reference of a disabled patch is dropped by a kernel work item.
        if await self._kmod(action, Failure.IN_USE) is not None:
            self._emit(Event(EventKind.PATCH_RETIRED, action.patch, action.module))

    # --- transitions --------------------------------------------------------------------------

    async def _wait_quiet(self) -> None:
        """Wait for any running transition (ours or another tool's) to end."""
        while (t := self.read_state().transition) is not None:
            await self._wait_transition(t.name, t.enabled)

    async def _wait_transition(self, module: str, target_patched: bool, patch: str = "") -> Outcome:
        outcome, t = await self._transitions.wait(
            module,
            target_patched,
            self._config.transition,
            patch=patch,
            managed=module in self._catalog.by_module(),
        )
        if outcome is Outcome.REVERTED and target_patched:
            message = f"{t.stall_message}; reverted"
            self._rt.failures[module] = message
            self._rt.avoid.add(module)
            self.counters.failures += 1
            self._emit(Event(EventKind.PATCH_FAILED, patch, module, message))
        return outcome

    # --- reporting ------------------------------------------------------------------------------

    def _set_error(self, message: str) -> None:
        self._last_error = message

    def _emit(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed on %s", event.kind)

    def _build_snapshot(self) -> Snapshot:
        current = self._transitions.current
        stalled = bool(current and current.stalled)
        overall = overall_state(
            supported=kstate.livepatch_supported(self._sysfs),
            pending=self._pending,
            state=self._state,
            failures=self._rt.failures,
            stalled=stalled,
        )
        busy = current is not None or self._dirty.is_set() or not self._last_reconcile
        if busy and overall in (OverallState.CONVERGED, OverallState.DEGRADED):
            overall = OverallState.CONVERGING
        return build_snapshot(
            catalog=self._catalog,
            state=self._state,
            desired=self._selection.desired,
            notes=self._selection.notes,
            refused=frozenset(self._rt.refused),
            pending=self._pending,
            failures=self._rt.failures,
            transition=current.report() if current else None,
            overall=overall,
            last_error=self._last_error,
            last_reconcile=self._last_reconcile,
        )

    def _publish(self) -> None:
        """Recompute the snapshot; tell listeners when anything they can see changed."""
        before = self._snapshot
        self._snapshot = self._build_snapshot()
        if before is None or before.to_dict() != self._snapshot.to_dict():
            self._emit(Event(EventKind.STATE_CHANGED, detail=self._snapshot.state.value))
