"""The reporter: what klpd tells the world — the state snapshot (``Describe()``), events
(D-Bus signals, sd_notify STATUS=, metrics), the last error and the running transition.

It reads what the loop believes (:class:`Picture`) and what it remembers (:class:`Memory`);
it never decides anything. Listeners hear every event; ``STATE_CHANGED`` only when something
they can see changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from klpd.core.model import Action, BlockingTask, Catalog, KernelState, OverallState
from klpd.core.planner import Selection
from klpd.core.report import SnapshotBuilder, SnapshotInputs, current_failures, overall_state
from klpd.core.status import Counters, Event, EventKind, Listener, Snapshot
from klpd.service.memory import Memory
from klpd.service.port import KernelPort
from klpd.service.transition import Transition

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Picture:
    """What the loop currently believes; the orchestrator writes it, the reporter reads it."""

    release: str
    catalog: Catalog = field(default_factory=Catalog)
    selection: Selection = field(default_factory=lambda: Selection(frozenset(), {}))
    state: KernelState = field(default_factory=lambda: KernelState(release=""))
    pending: list[Action] = field(default_factory=list)
    last_reconcile: float = 0.0  # unix time; 0 until the first pass ended
    requested: asyncio.Event = field(default_factory=asyncio.Event)  # a pass is asked for


class Reporter:
    __slots__ = (
        "_builder",
        "_counted",
        "_counters",
        "_listeners",
        "_memory",
        "_picture",
        "_port",
        "_snapshot",
        "last_error",
        "transition",
    )

    def __init__(
        self, picture: Picture, memory: Memory, port: KernelPort, counters: Counters | None = None
    ) -> None:
        self._picture, self._memory, self._port = picture, memory, port
        self._counters = counters or Counters()
        # (the published snapshot, it with the counters): Describe() may be called often
        self._counted: tuple[Snapshot | None, Snapshot | None] = (None, None)
        self._listeners: list[Listener] = []
        self._snapshot: Snapshot | None = None
        self._builder = SnapshotBuilder()  # rebuilds only what changed since the last one
        self.last_error = ""
        self.transition: Transition | None = None  # the one being waited for

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def emit(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed on %s", event.kind)

    def set_error(self, message: str) -> None:
        self.last_error = message

    def snapshot(self) -> Snapshot:
        """The state as last published, with the counters as they are now (counters alone
        never make a ``STATE_CHANGED``: a resync or a retry is no news to a listener)."""
        if self._snapshot is None:
            self._snapshot = self._build()
        base, counted = self._counted
        if base is not self._snapshot or counted is None or counted.counters != self._counters:
            counted = replace(self._snapshot, counters=replace(self._counters))
            self._counted = (self._snapshot, counted)
        return counted

    def publish(self) -> None:
        """Recompute the snapshot; tell listeners when anything they can see changed."""
        before = self._snapshot
        self._snapshot = self._build()
        if before is None or before != self._snapshot:  # frozen dataclasses: by value
            self.emit(Event(EventKind.STATE_CHANGED, detail=self._snapshot.state.value))

    def blocking_tasks(self) -> tuple[BlockingTask, ...]:
        t = self.transition
        if t is not None:
            return self._port.blocking_tasks(t.target_patched)
        # Not watching one, the kernel may still run one: klpd can be inside the modprobe
        # that started it (on 6.12 under TCG modprobe returned seconds after the transition
        # began, and `klpctl blocking` in between said no task blocked), or another tool's
        # began since klpd last read sysfs.
        pic = self._picture
        for module in (*(a.module for a in pic.pending[:1]), *pic.state.livepatches):
            if self._port.in_transition(module):
                lp = self._port.read_livepatch(module)
                return () if lp is None else self._port.blocking_tasks(lp.enabled)
        return ()

    def _build(self) -> Snapshot:
        pic, mem, current = self._picture, self._memory, self.transition
        overall = overall_state(
            supported=self._port.supported(),
            pending=pic.pending,
            state=pic.state,
            # a patch no longer desired (rolled back, superseded) keeps its failures in its
            # report as history, but they no longer make the host degraded
            failures=current_failures(mem.failures, pic.catalog, pic.selection.desired, mem.pinned),
            stalled=bool(current and current.stalled),
        )
        busy = current is not None or pic.requested.is_set() or not pic.last_reconcile
        if busy and overall in (OverallState.CONVERGED, OverallState.DEGRADED):
            overall = OverallState.CONVERGING
        return self._builder.build(
            SnapshotInputs(
                catalog=pic.catalog,
                state=pic.state,
                desired=pic.selection.desired,
                notes=pic.selection.notes,
                refused=mem.refused_patches(),
                refusals=mem.refused,
                quarantined=frozenset(mem.quarantined),
                pending=pic.pending,
                failures=mem.failures,
                transition=current.report() if current else None,
                overall=overall,
                last_error=self.last_error,
                last_reconcile=pic.last_reconcile,
            )
        )
