"""Plain data shared by the pure core (catalog, planner) and the edges (sysfs, D-Bus).

Nothing here performs I/O; everything is frozen so a plan can be computed, compared and
tested as a value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

# --- what is installed ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PatchModule:
    """One installed ``<patch>__<object>`` module file and the modinfo facts that matter."""

    module: str  # normalised module name, e.g. "lp_cve_2026_1234__ext4"
    patch: str
    obj: str  # "vmlinux" or a module name
    path: str
    livepatch: bool = True  # modinfo livepatch=Y
    depends: tuple[str, ...] = ()
    vermagic: str = ""
    description: str = ""
    cves: tuple[str, ...] = ()
    series: str = ""  # cumulative series (modinfo klpd_series, or the name convention)
    version: int = 1  # position in the series (modinfo klpd_version, or "_v<N>")
    replace: bool = False  # declared atomic-replace (modinfo klpd_replace=Y): refused


@dataclass(frozen=True, slots=True)
class Patch:
    """A patch: its main module (``P__vmlinux``) and one module per other object."""

    name: str
    modules: Mapping[str, PatchModule]  # object name -> module
    series: str
    version: int
    # derived once (the planner and the report ask for them for every patch, every action)
    objects: tuple[str, ...] = field(init=False, repr=False, compare=False)
    replace: bool = field(init=False, repr=False, compare=False)
    ordered: tuple[PatchModule, ...] = field(init=False, repr=False, compare=False)  # main first
    cves: tuple[str, ...] = field(init=False, repr=False, compare=False)  # of all its modules

    def __post_init__(self) -> None:
        objects = tuple(sorted(o for o in self.modules if o != "vmlinux"))
        object.__setattr__(self, "objects", objects)  # frozen: derived fields set once
        object.__setattr__(self, "replace", any(m.replace for m in self.modules.values()))
        ordered = sorted(self.modules.values(), key=lambda m: (m.obj != "vmlinux", m.obj))
        object.__setattr__(self, "ordered", tuple(ordered))
        cves = tuple(sorted({c for m in self.modules.values() for c in m.cves}))
        object.__setattr__(self, "cves", cves)

    @property
    def main(self) -> PatchModule | None:
        return self.modules.get("vmlinux")


@dataclass(frozen=True, slots=True)
class CatalogProblem:
    """A file the catalog skipped, and why (bad name, unreadable modinfo, ...)."""

    path: str
    message: str


@dataclass(frozen=True, slots=True)
class Catalog:
    patches: Mapping[str, Patch] = field(default_factory=dict)
    problems: tuple[CatalogProblem, ...] = ()
    _by_module: Mapping[str, PatchModule] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        mods = {m.module: m for p in self.patches.values() for m in p.modules.values()}
        object.__setattr__(self, "_by_module", MappingProxyType(mods))

    def module(self, name: str) -> PatchModule | None:
        return self._by_module.get(name)

    def by_module(self) -> Mapping[str, PatchModule]:
        """Module name -> module, built once per catalog (read-only)."""
        return self._by_module


# --- what the kernel has ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadedModule:
    """``/sys/module/<name>``: only attributes that exist are filled in."""

    name: str
    initstate: str | None = None  # "live", "coming", "going"; None for built-ins
    refcnt: int | None = None

    @property
    def live(self) -> bool:
        return self.initstate in (None, "live")


@dataclass(frozen=True, slots=True)
class ObjectState:
    """``/sys/kernel/livepatch/<patch>/<object>``."""

    name: str
    patched: bool | None = None  # 6.1+
    functions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LivePatchState:
    """``/sys/kernel/livepatch/<name>`` — ``name`` is the livepatch *module* name."""

    name: str
    enabled: bool
    transition: bool
    replace: bool | None = None  # 6.11+
    stack_order: int | None = None  # 6.14+
    objects: Mapping[str, ObjectState] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BlockingTask:
    pid: int
    comm: str
    patch_state: int
    stack: str | None = None  # /proc/<pid>/stack where readable


@dataclass(frozen=True, slots=True)
class KernelState:
    release: str
    modules: Mapping[str, LoadedModule] = field(default_factory=dict)
    livepatches: Mapping[str, LivePatchState] = field(default_factory=dict)
    # Set by the kernel view that read it (klpd.kernel.kview), never copied (not init
    # fields: dataclasses.replace leaves them out), not part of the value: the state's
    # number, and the module names it read again since its state numbered ``basis`` —
    # every other module and livepatch is the same object as there (None: all read).
    generation: int = field(default=0, init=False, compare=False, repr=False)
    basis: int = field(default=0, init=False, compare=False, repr=False)
    reread: frozenset[str] | None = field(default=None, init=False, compare=False, repr=False)
    # the livepatch in transition (one at a time), if any: asked several times per action
    transition: LivePatchState | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        moving = (lp for lp in self.livepatches.values() if lp.transition)
        object.__setattr__(self, "transition", next(moving, None))  # frozen: set once

    def stamped(self, generation: int, basis: int, reread: frozenset[str] | None) -> KernelState:
        """This new state, marked by the kernel view that made it (see the fields)."""
        object.__setattr__(self, "generation", generation)  # frozen: set once, when made
        object.__setattr__(self, "basis", basis)
        object.__setattr__(self, "reread", reread)
        return self

    def reread_since(self, other: KernelState) -> frozenset[str] | None:
        """The names that may differ from ``other``, when this state says (it was read
        again from ``other``); else None."""
        if self.reread is not None and other.generation and self.basis == other.generation:
            return self.reread
        return None

    def object_live(self, obj: str) -> bool:
        if obj == "vmlinux":
            return True
        m = self.modules.get(obj)
        return m is not None and m.live


# --- what to do -------------------------------------------------------------------------


class ActionKind(StrEnum):
    LOAD = "load"  # modprobe P__obj
    DISABLE = "disable"  # echo 0 > /sys/kernel/livepatch/P__obj/enabled
    UNLOAD = "unload"  # rmmod P__obj (refcnt 0: disabled, or freed by a replace patch)


class Reason(StrEnum):
    OBJECT_LOADED = "object-loaded"  # the object is live and the patch wants it
    MAIN_FIRST = "main-first"  # P__vmlinux before any P__obj
    OBJECT_GONE = "object-gone"  # removal policy "remove": the object went away
    RETIRED = "retired"  # not desired any more (superseded in its series, excluded)
    STALE = "stale"  # module loaded but its livepatch is gone (disabled, replaced)
    RELOAD = "reload"  # stale and still wanted: load it again
    REPLACE = "replace"  # an atomic-replace patch got loaded: take it away


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    module: str
    patch: str
    obj: str
    reason: Reason

    def __str__(self) -> str:
        return f"{self.kind} {self.module} ({self.reason})"


class RemovalPolicy(StrEnum):
    """What becomes of ``P__<m>`` when ``<m>`` is removed (see README)."""

    KEEP = "keep"  # stay loaded: the kernel patches <m> itself on its next load
    REMOVE = "remove"  # the POC's rule: disable and unload it


class OverallState(StrEnum):
    CONVERGED = "converged"
    CONVERGING = "converging"
    DEGRADED = "degraded"  # some module failed; everything else applied
    FAILED = "failed"  # nothing can be applied (e.g. no livepatch support)
