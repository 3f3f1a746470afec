"""The simulated kernel: modules, livepatches and their transitions.

It models what ``kernel/module/`` and ``kernel/livepatch/`` (6.1) do that klpd can see:
``init_module``/``delete_module`` with reference counts, ``klp_enable_patch`` (one
transition at a time, else ``-EBUSY``), ``klp_module_coming``/``klp_module_going``,
``enabled_store``/``force_store``, transitions that complete after a delay unless a task
sleeps in a patched function, and atomic-replace. After every change it calls
``on_change``; :mod:`klpd_sim.render` turns the state into sysfs and procfs.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from klpd_sim.modfile import ModFile
from klpd_sim.profile import profile_for

log = logging.getLogger(__name__)

VMLINUX = "vmlinux"
IDLE, UNPATCHED, PATCHED = -1, 0, 1  # KLP_TRANSITION_IDLE, _UNPATCHED, _PATCHED


@dataclass(slots=True)
class Module:
    name: str
    livepatch: bool
    taint: str = ""  # /sys/module/<m>/taint: O out-of-tree, E unsigned, K livepatch
    initstate: str = "coming"
    refcnt: int = 0
    holders: set[str] = field(default_factory=set)
    uses: list[str] = field(default_factory=list)


@dataclass(slots=True)
class LpObject:
    name: str
    funcs: list[str]
    nop_funcs: list[str] = field(default_factory=list)  # replace: nops for others' funcs
    dynamic: bool = False  # exists only for nops
    patched: bool = False


@dataclass(slots=True)
class LivePatch:
    module: str
    objects: dict[str, LpObject]
    replace: bool
    output: str | None = None  # what its functions return (modinfo klpd_sim_output)
    enabled: bool = True
    forced: bool = False
    missing_func: bool = False  # names a function its object lacks


@dataclass(slots=True)
class Task:
    pid: int
    comm: str
    obj: str
    func: str
    interruptible: bool = False  # woken by the kernel's fake signal
    patch_state: int = IDLE


@dataclass(slots=True)
class Transition:
    patch: str
    target: int
    earliest: float  # loop time before which it does not complete
    timer: asyncio.TimerHandle | None = None
    signal_timer: asyncio.TimerHandle | None = None


class Kernel:
    def __init__(
        self,
        release: str,
        transition_s: float,
        loop: asyncio.AbstractEventLoop,
        emit_uevent: Callable[[str, str, int], None],
        on_change: Callable[[], None],
        fake_signal_s: float = 15.0,
        retry_s: float = 0.0,
    ) -> None:
        self.release = release
        self.profile = profile_for(release)
        self.version = self.profile.version
        self.transition_s = transition_s
        self.fake_signal_s = fake_signal_s
        self.retry_s = retry_s
        self._tainted = False
        self._loop = loop
        self._emit = emit_uevent
        self._on_change = on_change
        self.modules: dict[str, Module] = {}
        self.patches: dict[str, LivePatch] = {}  # klp_patches, in order
        self.transition: Transition | None = None
        self.tasks: dict[int, Task] = {}
        self._seqnum = 0
        self._next_pid = 1000

    # --- modules ---------------------------------------------------------------------

    def loaded(self, obj: str) -> bool:
        m = self.modules.get(obj)
        return obj == VMLINUX or (m is not None and m.initstate != "going")

    def init_module(self, mf: ModFile) -> int:
        """Load ``mf``; 0 or an errno. Returns once the module's init has finished."""
        if mf.name in self.modules:
            return errno.EEXIST
        for dep in mf.depends:
            if dep not in self.modules or self.modules[dep].initstate != "live":
                log.warning("%s: unknown symbol (needs %s)", mf.name, dep)
                return errno.ENOENT
        taint = ("" if mf.get("intree") == "Y" else "OE") + ("K" if mf.livepatch else "")
        mod = Module(mf.name, mf.livepatch, taint, uses=list(mf.depends))
        self.modules[mf.name] = mod
        for dep in mod.uses:
            self.modules[dep].refcnt += 1
            self.modules[dep].holders.add(mod.name)
        self._changed()
        if self.profile.add_uevent_before_init:
            self._uevent("add", mod.name)  # before 5.11: before init
        err = self._klp_module_coming(mod) or self._run_init(mod, mf)
        if err:
            self._free_module(mod)
            if self.profile.add_uevent_before_init:
                self._uevent("remove", mod.name)  # its add went out before the init
            log.info("%s: init failed: %s", mod.name, errno.errorcode.get(err, err))
            return err
        mod.initstate = "live"
        self._changed()
        if not self.profile.add_uevent_before_init:
            self._uevent("add", mod.name)
        return 0

    def delete_module(self, name: str) -> int:
        mod = self.modules.get(name)
        if mod is None:
            return errno.ENOENT
        if mod.holders or mod.refcnt > 0 or mod.initstate != "live":
            return errno.EWOULDBLOCK
        mod.initstate = "going"
        self._klp_module_going(mod)
        self._free_module(mod)
        self._uevent("remove", name)
        return 0

    def _free_module(self, mod: Module) -> None:
        for dep in mod.uses:
            d = self.modules[dep]
            d.refcnt -= 1
            d.holders.discard(mod.name)
        del self.modules[mod.name]
        self._changed()

    def _run_init(self, mod: Module, mf: ModFile) -> int:
        if mf.init_errno:
            return mf.init_errno
        if mf.livepatch:
            return self._klp_enable_patch(mod, mf)
        log.info("%s: init", mod.name)  # the start of its unpatched window, if any
        return 0

    def _uevent(self, action: str, module: str) -> None:
        self._seqnum += 1
        self._emit(action, module, self._seqnum)

    # --- livepatch core -------------------------------------------------------------

    def _klp_enable_patch(self, mod: Module, mf: ModFile) -> int:
        if self.transition is not None:
            return errno.EBUSY
        obj = mf.lp_object
        if mf.lp_missing_func and self.loaded(obj):
            log.error("livepatch: symbol '%s' not found in symbol table", mf.lp_funcs[0])
            return errno.EINVAL  # klp_init_patch() fails before the EBUSY check
        objects = {obj: LpObject(obj, list(mf.lp_funcs))}
        if mf.lp_replace:
            self._add_nops(objects)
        patch = LivePatch(
            mod.name,
            objects,
            mf.lp_replace,
            output=mf.get("klpd_sim_output") or None,
            missing_func=mf.lp_missing_func,
        )
        if not self._tainted:
            log.warning("%s: tainting kernel with TAINT_LIVEPATCH", mod.name)
            self._tainted = True
        log.info("livepatch: enabling patch '%s'", mod.name)
        mod.refcnt += 1  # try_module_get(patch->mod)
        self.patches[mod.name] = patch
        for o in objects.values():
            o.patched = self.loaded(o.name)
        self._start_transition(patch, PATCHED)
        return 0

    def _add_nops(self, objects: dict[str, LpObject]) -> None:
        """klp_add_nops(): a replace patch gets a no-op for every function others patch."""
        for other in self.patches.values():
            for o in other.objects.values():
                mine = objects.setdefault(o.name, LpObject(o.name, [], dynamic=True))
                for f in o.funcs:
                    if f not in mine.funcs and f not in mine.nop_funcs:
                        mine.nop_funcs.append(f)

    def _klp_module_coming(self, mod: Module) -> int:
        for patch in self.patches.values():
            o = patch.objects.get(mod.name)
            if o is None:
                continue
            if patch.missing_func:
                log.error("livepatch: symbol '%s' not found in symbol table", o.funcs[0])
                log.error(
                    "livepatch: failed to initialize patch '%s' for module '%s' (-22)",
                    patch.module,
                    mod.name,
                )
                log.warning(
                    "livepatch: patch '%s' failed for module '%s', refusing to load module '%s'",
                    patch.module,
                    mod.name,
                    mod.name,
                )
                self._klp_module_going(mod)
                return errno.EINVAL
            o.patched = True
            log.info(
                "livepatch: applying patch '%s' to loading module '%s'", patch.module, mod.name
            )
        return 0

    def _klp_module_going(self, mod: Module) -> None:
        for patch in self.patches.values():
            o = patch.objects.get(mod.name)
            if o is not None and o.patched:
                o.patched = False
                log.info(
                    "livepatch: reverting patch '%s' on unloading module '%s'",
                    patch.module,
                    mod.name,
                )

    def _blocks(self, task: Task, patch: LivePatch) -> bool:
        o = patch.objects.get(task.obj)
        return o is not None and o.patched

    def _start_transition(self, patch: LivePatch, target: int) -> None:
        now = self._loop.time()
        self.transition = Transition(patch.module, target, now + self.transition_s)
        for task in self.tasks.values():
            task.patch_state = (1 - target) if self._blocks(task, patch) else target
        log.info(
            "livepatch: '%s': starting %s transition",
            patch.module,
            "patching" if target == PATCHED else "unpatching",
        )
        self._changed()
        self._schedule_completion()

    def _schedule_fake_signals(self) -> None:
        tr = self.transition
        if tr is None:
            return
        if tr.signal_timer is not None:
            tr.signal_timer.cancel()
        tr.signal_timer = self._loop.call_later(self.fake_signal_s, self._send_fake_signals)

    def _send_fake_signals(self) -> None:
        """klp_send_signals(): after SIGNALS_TIMEOUT (15) retries, one a second, the kernel
        wakes interruptible sleepers with a fake signal. They leave the function (on 6.1
        the test's sleeper was gone afterwards), and no longer block."""
        tr = self.transition
        if tr is None:
            return
        tr.signal_timer = None
        pending = [t for t in self.tasks.values() if t.patch_state == 1 - tr.target]
        if pending:
            log.info("livepatch: signaling remaining tasks")
        woken = [t for t in pending if t.interruptible]
        for task in woken:
            del self.tasks[task.pid]
        if woken:
            self._changed()
        self._schedule_fake_signals()
        self._schedule_completion()

    def _schedule_completion(self) -> None:
        tr = self.transition
        if tr is None:
            return
        if tr.signal_timer is None:
            self._schedule_fake_signals()
        if tr.timer is not None:
            tr.timer.cancel()
        tr.timer = self._loop.call_at(self._next_attempt(tr.earliest), self.try_complete_transition)

    def _next_attempt(self, earliest: float) -> float:
        """When to try to complete: at once, or (``retry_s``, the kernel's 1 s
        ``klp_transition_work``) on the next whole multiple of ``retry_s``."""
        when = max(self._loop.time(), earliest)
        if self.retry_s > 0:
            tick = math.ceil(when / self.retry_s) * self.retry_s
            when = tick if tick >= when else tick + self.retry_s
        return when

    def try_complete_transition(self) -> None:
        tr = self.transition
        if tr is None:
            return
        tr.timer = None
        if self._loop.time() < tr.earliest:
            self._schedule_completion()
            return
        blocking = [t for t in self.tasks.values() if t.patch_state not in (IDLE, tr.target)]
        if blocking:
            # The kernel retries every second; the sim tries again when a task changes.
            log.debug("'%s': %d task(s) still block the transition", tr.patch, len(blocking))
            return
        self._complete_transition()

    def _complete_transition(self) -> None:
        tr = self.transition
        assert tr is not None
        for timer in (tr.timer, tr.signal_timer):
            if timer is not None:
                timer.cancel()
        patch = self.patches[tr.patch]
        self.transition = None
        for task in self.tasks.values():
            task.patch_state = IDLE
        log.info(
            "livepatch: '%s': %s complete",
            patch.module,
            "patching" if tr.target == PATCHED else "unpatching",
        )
        freed: list[LivePatch] = []
        if tr.target == PATCHED:
            if patch.replace:
                for other in [p for p in self.patches.values() if p is not patch]:
                    for o in other.objects.values():
                        o.patched = False
                    other.enabled = False
                    freed.append(other)
                self._discard_nops(patch)
        else:
            for o in patch.objects.values():
                o.patched = False
            freed.append(patch)
        self._changed()  # transition 0, objects unpatched, no-ops gone
        # klp_free_patch_async(): each directory goes, then the module reference
        for p in freed:
            self._free_patch(p)
            self._changed()

    def _discard_nops(self, patch: LivePatch) -> None:
        for name in [n for n, o in patch.objects.items() if o.dynamic]:
            del patch.objects[name]
        for o in patch.objects.values():
            o.nop_funcs.clear()

    def _free_patch(self, patch: LivePatch) -> None:
        del self.patches[patch.module]
        mod = self.modules.get(patch.module)
        if mod is not None and not patch.forced:
            mod.refcnt -= 1  # module_put(patch->mod), skipped for forced patches

    def _reverse_transition(self) -> None:
        tr = self.transition
        assert tr is not None
        patch = self.patches[tr.patch]
        patch.enabled = not patch.enabled
        tr.target = 1 - tr.target
        tr.earliest = self._loop.time() + self.transition_s
        if tr.signal_timer is not None:
            tr.signal_timer.cancel()
            tr.signal_timer = None
        # Tasks still in the old state are already where the reversed transition goes;
        # the others are outside the patched functions and switch back at once.
        for task in self.tasks.values():
            task.patch_state = tr.target
        log.info(
            "livepatch: '%s': reversing transition from %s",
            patch.module,
            "unpatching to patching" if tr.target == PATCHED else "patching to unpatching",
        )
        self._changed()
        self._schedule_completion()

    def stack_order(self, name: str) -> int:
        """``stack_order_show``: the patch's 1-based position in klp_patches, counted when
        read (patches below it that go away move it down)."""
        return list(self.patches).index(name) + 1

    def live_version(self, obj: str, func: str) -> str | None:
        """The patch whose version of ``func`` runs for a task that is not in transition:
        the newest patch on the function's ftrace stack, ``None`` for the original (also
        while an atomic-replace patch's no-op is on top). During a transition a task that
        has not switched yet still runs the version below the patch in transition."""
        for patch in reversed(self.patches.values()):
            o = patch.objects.get(obj)
            if o is None or not o.patched:
                continue
            if func in o.funcs:
                return patch.module
            if func in o.nop_funcs:
                return None
        return None

    # --- sysfs attribute writes --------------------------------------------------------

    def write_enabled(self, name: str, text: str) -> int:
        """``enabled_store``: 0 or the errno the writer would have got."""
        patch = self.patches.get(name)
        if patch is None:
            return errno.EINVAL
        value = _parse_bool(text)
        if value is None or value == patch.enabled:
            return errno.EINVAL
        if self.transition is not None and self.transition.patch == name:
            self._reverse_transition()
            return 0
        if value:
            return errno.EINVAL  # a disabled patch cannot be re-enabled
        if self.transition is not None:
            return errno.EBUSY
        patch.enabled = False
        self._start_transition(patch, UNPATCHED)
        return 0

    def write_force(self, name: str, text: str) -> int:
        """``force_store``: ends the transition. klp_force_transition() marks the patches
        being removed as forced, and a forced patch's module reference is never put: the
        patch being disabled, or (forcing a replace patch in) every patch it replaces."""
        value = _parse_bool(text)
        if value is None or not value:
            return errno.EINVAL
        tr = self.transition
        if tr is None or tr.patch != name:
            return errno.EINVAL
        # 6.1 prints "patched state" for unpatching transitions too
        log.warning("livepatch: forcing remaining tasks to the patched state")
        patch = self.patches[name]
        if self.profile.force_marks_every_patch:
            for p in self.patches.values():
                p.forced = True
        elif tr.target == UNPATCHED:
            patch.forced = True
        elif patch.replace:
            for other in self.patches.values():
                if other is not patch:
                    other.forced = True
        for task in self.tasks.values():
            task.patch_state = tr.target
        tr.earliest = self._loop.time()  # completes on the next attempt
        self._changed()
        self._schedule_completion()
        return 0

    # --- tasks --------------------------------------------------------------------------

    def stall(self, obj: str, comm: str, func: str | None, interruptible: bool = False) -> Task:
        """A task goes to sleep in ``obj``'s patched function."""
        if func is None:
            func = next(
                (
                    f
                    for p in self.patches.values()
                    for o in p.objects.values()
                    if o.name == obj
                    for f in o.funcs
                ),
                f"{obj}_klpd_sim_sleep",
            )
        task = Task(self._next_pid, comm, obj, func, interruptible)
        self._next_pid += 1
        tr = self.transition
        if tr is not None:
            blocks = self._blocks(task, self.patches[tr.patch])
            task.patch_state = (1 - tr.target) if blocks else tr.target
        self.tasks[task.pid] = task
        self._changed()
        return task

    def unstall(self, obj: str) -> list[int]:
        pids = [t.pid for t in self.tasks.values() if t.obj == obj]
        for pid in pids:
            del self.tasks[pid]
        self._changed()
        if pids:
            self._schedule_completion()
        return pids

    # --- rendering ------------------------------------------------------------------

    def _changed(self) -> None:
        self._on_change()


def _parse_bool(text: str) -> bool | None:
    """kstrtobool(): 1/y/Y/on → true, 0/n/N/off → false."""
    t = text.strip().lower()
    if t in ("1", "y", "yes", "on", "true"):
        return True
    if t in ("0", "n", "no", "off", "false"):
        return False
    return None
