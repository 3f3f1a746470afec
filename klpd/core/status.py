"""What klpd reports: the state snapshot, the events, and the controller the D-Bus layer
adapts. Plain data with a JSON form; no dbus_fast here (the D-Bus interface is a thin
adapter over :class:`Controller`).

The JSON of :meth:`Snapshot.to_json` is the schema of ``Describe()`` and of
``klpctl ... --json``; bump :data:`SCHEMA_VERSION` on any incompatible change.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from klpd.core.model import BlockingTask, OverallState
from klpd.core.preview import PlanPreview
from klpd.core.stacking import FunctionVersion

SCHEMA_VERSION = 1


class ModuleStatus(StrEnum):
    """Per ``P__obj`` module, in the spirit of Canonical Livepatch's per-patch states."""

    APPLIED = "applied"  # loaded, enabled, transition done
    APPLYING = "applying"  # loaded, transition in progress
    PENDING = "pending"  # wanted, not loaded yet (queued)
    ARMED = "armed"  # loaded while its object is not: patches the object on its next load
    NOT_NEEDED = "not-needed"  # object not loaded, module not loaded
    UNAPPLYING = "unapplying"  # being disabled / removed
    FAILED = "failed"  # last attempt failed; see error
    REFUSED = "refused"  # klpd will not load it (atomic-replace, bad name, ...)
    QUARANTINED = "quarantined"  # the machine went down right after it was loaded


class PatchStatus(StrEnum):
    APPLIED = "applied"  # every needed module applied
    PARTIAL = "partial"  # some needed modules applied, others pending/failed
    PENDING = "pending"
    RETIRED = "retired"  # superseded or excluded; being / been taken away
    DISABLED = "disabled"  # disabled by an operator (klpctl disable)
    FAILED = "failed"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class ModuleReport:
    module: str
    obj: str
    status: ModuleStatus
    object_loaded: bool
    loaded: bool
    enabled: bool | None = None
    transition: bool | None = None
    patched: bool | None = None
    functions: tuple[str, ...] = ()
    error: str = ""
    # 6.13+ (stack_order): per function of this module, which patch's version runs
    versions: tuple[FunctionVersion, ...] = ()


@dataclass(frozen=True, slots=True)
class PatchReport:
    name: str
    status: PatchStatus
    desired: bool
    series: str
    version: int
    description: str = ""
    cves: tuple[str, ...] = ()
    modules: tuple[ModuleReport, ...] = ()


@dataclass(frozen=True, slots=True)
class TransitionReport:
    module: str
    target: str  # "patched" or "unpatched"
    started_at: float  # unix time
    stalled: bool = False
    blocking: tuple[BlockingTask, ...] = ()


@dataclass(slots=True)
class Counters:
    """What klpd did since it started (metrics ``klpd_*_total``, ``Describe()``)."""

    transitions: int = 0  # livepatch transitions klpd started: loads and disables
    failures: int = 0  # loads, disables, removals that failed (a reverted stall included)
    reconciles: int = 0  # passes of plan-and-act (each runs until the plan is empty)
    modprobe_calls: int = 0  # modprobe runs, EBUSY retries included
    rmmod_calls: int = 0  # rmmod runs, "in use" retries included
    resyncs: int = 0  # full resyncs after lost uevents (netlink overflow)


@dataclass(frozen=True, slots=True)
class Snapshot:
    state: OverallState
    kernel_release: str
    patches: tuple[PatchReport, ...] = ()
    pending: tuple[str, ...] = ()  # actions queued, as text: "load lpa__ext4 (object-loaded)"
    transition: TransitionReport | None = None
    last_error: str = ""
    last_reconcile: float = 0.0  # unix time
    foreign_livepatches: tuple[str, ...] = ()  # livepatches klpd does not manage
    counters: Counters = field(default_factory=Counters)  # a copy, taken when asked for
    # 6.13+ (stack_order): every patched function and which patch's version runs
    functions: tuple[FunctionVersion, ...] = ()
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def patch(self, name: str) -> PatchReport | None:
        return next((p for p in self.patches if p.name == name), None)


class EventKind(StrEnum):
    PATCH_APPLIED = "patch-applied"
    PATCH_RETIRED = "patch-retired"
    PATCH_FAILED = "patch-failed"
    TRANSITION_STARTED = "transition-started"
    TRANSITION_FINISHED = "transition-finished"
    TRANSITION_STALLED = "transition-stalled"
    STATE_CHANGED = "state-changed"  # overall state / last error / transition changed


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    patch: str = ""
    module: str = ""
    detail: str = ""  # error text, target state, ...


Listener = Callable[[Event], None]


class ControlError(Exception):
    """A request the controller refuses. The subclass says which refusal it is; the D-Bus
    layer maps it by type to a typed error (``klpd.dbus.errors``); this base one (and any
    subclass not in that table) is a plain failure."""


class UnknownPatchError(ControlError):
    """No installed patch has that name."""


class InvalidArgumentError(ControlError):
    """An argument is malformed or out of range."""


class BusyError(ControlError):
    """Not now: something in progress prevents it."""


class ControlFailed(ControlError):
    """It was tried and failed (e.g. a configuration reload with a bad file)."""


class Controller(Protocol):
    """What the orchestrator offers to the D-Bus layer (and to tests)."""

    def snapshot(self) -> Snapshot: ...

    def blocking_tasks(self) -> tuple[BlockingTask, ...]: ...

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` on every event; returns the function that unsubscribes."""

    async def reload(self) -> None:
        """Re-read config (if a reloader is wired), rescan the catalog, reconcile."""

    async def enable_patch(self, name: str) -> None:
        """Undo an operator disable: the patch is desired again. Raises ControlError."""

    async def disable_patch(self, name: str) -> None:
        """Operator disable: retire the patch and keep it retired (persisted)."""

    def settled(self) -> OverallState | None:
        """The state if nothing is left to do now (converged, degraded, failed), else None:
        what a wait would answer at once."""

    async def wait_converged(self, timeout: float) -> bool:
        """True once settled converged; False if settled otherwise or timed out."""

    async def wait_settled(self, timeout: float) -> OverallState:
        """The state once nothing is left to do, or CONVERGING after ``timeout`` s."""

    async def plan_preview(
        self, *, rescan: bool = False, enable: Sequence[str] = (), disable: Sequence[str] = ()
    ) -> PlanPreview:
        """What a reconcile would do now (or after rescan/enable/disable); does none of it.
        Raises UnknownPatchError for a name the catalog lacks."""


__all__ = [
    "SCHEMA_VERSION",
    "BusyError",
    "ControlError",
    "ControlFailed",
    "Controller",
    "Counters",
    "Event",
    "EventKind",
    "FunctionVersion",
    "InvalidArgumentError",
    "Listener",
    "ModuleReport",
    "ModuleStatus",
    "PatchReport",
    "PatchStatus",
    "Snapshot",
    "TransitionReport",
    "UnknownPatchError",
    "field",
]
