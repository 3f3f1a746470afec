"""The kernel's state at the cost of what can have changed since the last read.

klpd reads the kernel after every action it takes. A full read of ``/sys/module`` and
``/sys/kernel/livepatch`` opens a few files per module and per livepatch — about 9,000
files with 1,000 applied patch modules and 300 targets, hundreds of milliseconds — while one
action changes a handful. :class:`KernelView` keeps the last state and, on
:meth:`KernelView.refresh`, reads again only:

- what appeared in or vanished from the two directories (one listing each: loads,
  unloads, dependencies modprobe pulled in, patches an atomic-replace patch wiped, patches
  whose disable finished);
- what the caller says it touched (the module an action named);
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
- a built-in module's ``/sys/module`` directory has no ``initstate`` and never changes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from klpd.core.model import KernelState, LivePatchState, LoadedModule, ObjectState


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
        "_livepatches",
        "_lp_dir",
        "_lp_listing",
        "_mod_dir",
        "_mod_listing",
        "_modules",
        "_moving_lps",
        "_not_live",
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
        # the last listings of the two directories, as listed and as sets
        self._mod_listing: tuple[list[str], frozenset[str]] = ([], frozenset())
        self._lp_listing: tuple[list[str], frozenset[str]] = ([], frozenset())
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

    @staticmethod
    def _list(
        path: str, last: tuple[list[str], frozenset[str]]
    ) -> tuple[tuple[list[str], frozenset[str]], set[str]]:
        """The directory's listing now, and the names that came or went since ``last`` (an
        unchanged listing — the common case — is one list comparison)."""
        names = _entries(path)
        if names == last[0]:
            return last, set()
        listed = frozenset(names)
        return (names, listed), set(listed ^ last[1])

    def _state(self) -> KernelState:
        return KernelState(
            release=self.release, modules=dict(self._modules), livepatches=dict(self._livepatches)
        )

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
        self._mod_listing, _ = self._list(self._mod_dir, ([], frozenset()))
        self._lp_listing, _ = self._list(self._lp_dir, ([], frozenset()))
        for name in self._mod_listing[0]:
            self._keep_module(name, self._read_module(name))
        for name in self._lp_listing[0]:
            lp = self._read_livepatch(name)
            if lp is not None:
                self._keep_livepatch(lp)
        return self._state()

    def touch(self, modules: Iterable[str]) -> None:
        """These modules (and their livepatches) may have changed: read them next time."""
        self._touched.update(modules)

    def refresh(self) -> KernelState:
        """What can have changed since the last read, read again (see the module doc).

        After every read the modules known (loaded or built-in) are the last listing of
        ``/sys/module``, and the livepatches known are the last listing of
        ``/sys/kernel/livepatch`` but those that could not be read (vanishing): what came or
        went is the difference of two listings."""
        self._mod_listing, came_or_went = self._list(self._mod_dir, self._mod_listing)
        self._lp_listing, _ = self._list(self._lp_dir, self._lp_listing)
        listed_mods, listed_lps = self._mod_listing[1], self._lp_listing[1]
        came_or_went |= self._touched
        # a livepatch gone: its module's reference drops after the directory
        gone_lps = self._livepatches.keys() - listed_lps
        mods = came_or_went | self._not_live | gone_lps
        mods |= (self._was_livepatch - listed_lps) & self._modules.keys()
        lps = (listed_lps - self._livepatches.keys()) | gone_lps | (self._touched & listed_lps)
        lps |= self._moving_lps
        for obj in came_or_went:
            lps |= self._by_object.get(obj, set())
        self._touched.clear()
        for name in mods:
            self._forget_module(name)
            if name in listed_mods:
                self._keep_module(name, self._read_module(name))
        for name in lps:
            self._forget_livepatch(name)
            lp = self._read_livepatch(name) if name in listed_lps else None
            if lp is not None:
                self._keep_livepatch(lp)
        return self._state()
