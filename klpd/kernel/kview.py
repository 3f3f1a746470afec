"""The kernel's state at the cost of what can have changed since the last read.

klpd reads the kernel after every action it takes. A full read of ``/sys/module`` and
``/sys/kernel/livepatch`` opens a few files per module and per livepatch — about 9,000
files with 1,000 applied patch modules and 300 targets, hundreds of milliseconds — while one
action changes a handful. :class:`KernelView` keeps the last state and, on
:meth:`KernelView.refresh`, reads again only:

- what the caller says it touched (the module an action named, modules a uevent named);
- what appeared in or vanished from the two directories besides (dependencies modprobe
  pulled in, patches an atomic-replace patch wiped, patches whose disable finished), by a
  listing of each — only when their link counts say something else came or went;
- what is still moving: modules not ``live`` yet, livepatches in transition or disabled
  (being freed), livepatch modules whose livepatch is gone but whose reference is still
  held (the kernel drops it after the directory), and every livepatch with an object named
  like a module that came or went (its ``patched`` flips).

Some facts this relies on (6.1; see ../../../shared/DOMAIN.md):

- a livepatch's ``enabled`` changes only by a write to it; klpd's own writes are touched,
  and another tool's disable is caught by :meth:`KernelView.full`, which the orchestrator
  does at the start of every reconcile pass and after any EBUSY (the kernel refuses a
  second transition, so one missed for a moment can never be doubled);
- its object's ``patched`` changes only in its own transition or when the object's module
  comes or goes; its functions are fixed once loaded (a replace patch's no-ops go when its
  transition ends, while it is re-read);
- a built-in module's ``/sys/module`` directory has no ``initstate`` and never changes;
- every entry of ``/sys/module`` and ``/sys/kernel/livepatch`` is a kobject's directory,
  and a sysfs directory's link count is 2 + its subdirectories (kernfs sets it from its
  count of them at every stat: ``kernfs_refresh_inode``; tmpfs keeps it so too). Once the
  touched names are read, a count that matches what klpd knows means nothing else came or
  went — unless as many came as went between two reads, which only other tools' loads
  and unloads do: their uevents name those modules (the orchestrator passes them on) and
  ask for a pass, which starts with a full read. Where the counts do not match the
  listings (another file system), both directories are listed every time.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Collection, Iterable
from pathlib import Path

from klpd.core.model import KernelState, LivePatchState, LoadedModule, ObjectState

_numbers = itertools.count(1)  # states' generations, unique across views (a reload's too)


def _read(path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, 4096).decode(errors="replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_int(path: str) -> int | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _read_bool(path: str) -> bool | None:
    value = _read_int(path)
    return None if value is None else value != 0


def _subdirs(path: str) -> list[str]:
    try:
        with os.scandir(path) as it:
            return [e.name for e in it if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _links(path: str) -> int:
    try:
        return os.stat(path).st_nlink
    except OSError:
        return -1


def _entries(path: str) -> list[str]:
    """``/sys/module`` or ``/sys/kernel/livepatch``: every entry there is a kobject's
    directory, so a plain listing (no per-entry type check: half the cost at 1,000)."""
    try:
        return os.listdir(path)
    except OSError:
        return []


class KernelView:
    """The last :class:`KernelState` read, kept up to date by :meth:`refresh`."""

    __slots__ = (
        "_builtin",
        "_by_object",
        "_counting",
        "_livepatches",
        "_lp_dir",
        "_mod_dir",
        "_modules",
        "_moving_lps",
        "_not_live",
        "_number",
        "_reread",
        "_touched",
        "_was_livepatch",
        "reads",
        "release",
    )

    def __init__(self, sysfs_root: Path, release: str) -> None:
        self._mod_dir = str(sysfs_root / "module")
        self._lp_dir = str(sysfs_root / "kernel/livepatch")
        self.release = release
        self._modules: dict[str, LoadedModule] = {}
        self._livepatches: dict[str, LivePatchState] = {}
        self._builtin: set[str] = set()
        self._was_livepatch: set[str] = set()
        self._by_object: dict[str, set[str]] = {}  # object -> livepatches with that object
        self._touched: set[str] = set()
        # what is still moving, kept up to date as things are read (not searched for)
        self._not_live: set[str] = set()  # modules coming or going
        self._moving_lps: set[str] = set()  # livepatches in transition or disabled
        self._counting = False  # the directories' link counts count their entries
        self._number = 0  # the generation of the last state made
        self._reread: set[str] = set()  # names read again since then
        self.reads = 0  # directories read (a module or a livepatch), for the bench and tests

    # --- reading one thing ---------------------------------------------------------------

    def _read_module(self, name: str) -> LoadedModule | None:
        self.reads += 1
        d = f"{self._mod_dir}/{name}"
        state = _read(f"{d}/initstate")
        if state is None:
            return None
        return LoadedModule(name, state, _read_int(f"{d}/refcnt"))

    def _read_livepatch(self, name: str) -> LivePatchState | None:
        self.reads += 1
        d = f"{self._lp_dir}/{name}"
        enabled = _read_bool(f"{d}/enabled")
        if enabled is None:
            return None
        objects = {}
        for o in _subdirs(d):
            od = f"{d}/{o}"
            funcs = tuple(sorted(f for f in _subdirs(od) if "," in f))
            objects[o] = ObjectState(name=o, patched=_read_bool(f"{od}/patched"), functions=funcs)
        return LivePatchState(
            name=name,
            enabled=enabled,
            transition=bool(_read_bool(f"{d}/transition")),
            replace=_read_bool(f"{d}/replace"),
            stack_order=_read_int(f"{d}/stack_order"),
            objects=objects,
        )

    def _forget_module(self, name: str) -> None:
        self._modules.pop(name, None)
        self._builtin.discard(name)
        self._not_live.discard(name)

    def _keep_module(self, name: str, m: LoadedModule | None) -> None:
        if m is None:
            self._builtin.add(name)
            return
        self._modules[name] = m
        if not m.live:
            self._not_live.add(name)

    def _forget_livepatch(self, name: str) -> None:
        lp = self._livepatches.pop(name, None)
        self._moving_lps.discard(name)
        for obj in lp.objects if lp is not None else ():
            self._by_object.get(obj, set()).discard(name)

    def _keep_livepatch(self, lp: LivePatchState) -> None:
        self._livepatches[lp.name] = lp
        self._was_livepatch.add(lp.name)
        if lp.transition or not lp.enabled:
            self._moving_lps.add(lp.name)
        for obj in lp.objects:
            self._by_object.setdefault(obj, set()).add(lp.name)

    def _counts(self) -> tuple[int, int]:
        """What the two directories' link counts would be if they held what is known."""
        known_mods = len(self._modules) + len(self._builtin)
        return 2 + known_mods, 2 + len(self._livepatches)

    def _reread_module(self, name: str, listed: Collection[str] | None) -> None:
        """``listed``: the listing of ``/sys/module``, or None when not listed (then a
        missing ``initstate`` is a built-in known as one, or a module gone)."""
        self._reread.add(name)
        was_builtin = name in self._builtin
        self._forget_module(name)
        if listed is not None and name not in listed:
            return
        m = self._read_module(name)
        if m is not None or listed is not None or was_builtin:
            self._keep_module(name, m)

    def _reread_livepatch(self, name: str, listed: Collection[str] | None) -> None:
        self._reread.add(name)
        self._forget_livepatch(name)
        lp = self._read_livepatch(name) if listed is None or name in listed else None
        if lp is not None:
            self._keep_livepatch(lp)

    def _state(self, afresh: bool = False) -> KernelState:
        state = KernelState(
            release=self.release, modules=dict(self._modules), livepatches=dict(self._livepatches)
        )
        basis, self._number = self._number, next(_numbers)
        reread, self._reread = (None if afresh else frozenset(self._reread)), set()
        return state.stamped(self._number, basis, reread)

    # --- the two ways to read -------------------------------------------------------------

    def full(self) -> KernelState:
        """Read everything again."""
        self._modules.clear()
        self._livepatches.clear()
        self._by_object.clear()
        self._builtin.clear()
        self._touched.clear()
        self._not_live.clear()
        self._moving_lps.clear()
        links = (_links(self._mod_dir), _links(self._lp_dir))
        mods, lps = _entries(self._mod_dir), _entries(self._lp_dir)
        # a count that moved in between lists the next refresh: it is checked again there
        self._counting = links == (2 + len(mods), 2 + len(lps))
        for name in mods:
            self._keep_module(name, self._read_module(name))
        for name in lps:
            lp = self._read_livepatch(name)
            if lp is not None:
                self._keep_livepatch(lp)
        return self._state(afresh=True)

    def touch(self, modules: Iterable[str]) -> None:
        """These modules (and their livepatches) may have changed: read them next time."""
        self._touched.update(modules)

    def refresh(self) -> KernelState:
        """What can have changed since the last read, read again (see the module doc): what
        was touched and what is moving, then — if the directories' link counts say more
        came or went — what their listings differ in from what is known."""
        links = (_links(self._mod_dir), _links(self._lp_dir))
        touched, self._touched = self._touched, set()
        lps = self._moving_lps | touched
        for obj in touched:
            lps |= self._by_object.get(obj, set())
        for name in lps:
            self._reread_livepatch(name, None)
        # a livepatch gone: its module's reference drops after the directory
        mods = touched | self._not_live | (lps - self._livepatches.keys())
        mods |= (self._was_livepatch - self._livepatches.keys()) & self._modules.keys()
        for name in mods:
            self._reread_module(name, None)
        if self._counting and links == self._counts():
            return self._state()
        listed_mods, listed_lps = set(_entries(self._mod_dir)), set(_entries(self._lp_dir))
        self._counting = links == (2 + len(listed_mods), 2 + len(listed_lps))
        came_or_went = listed_mods ^ (self._modules.keys() | self._builtin)
        more_lps = listed_lps ^ self._livepatches.keys()
        for obj in came_or_went:
            more_lps |= self._by_object.get(obj, set())
        more_mods = came_or_went | (self._livepatches.keys() - listed_lps)
        for name in more_lps:
            self._reread_livepatch(name, listed_lps)
        more_mods |= (self._was_livepatch - listed_lps) & self._modules.keys()
        for name in more_mods:
            self._reread_module(name, listed_mods)
        return self._state()
