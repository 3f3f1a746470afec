"""Who is calling, and how much of klpd one caller may hold.

Everyone may call the reads and ``WaitConverged``; each held call costs a coroutine (an
hour for a ``WaitConverged``, five minutes for a polkit prompt). The bus bounds pending
calls per connection and connections per uid, but 256 connections x 128 calls of one uid
is still far more than klpd should hold for an unprivileged user. So every held call takes
a *slot*: at most ``per_connection`` per bus connection and ``per_uid`` per non-root uid,
and unprivileged callers together at most ``total - reserve``. The ``reserve`` is only for
root and polkit-authorised callers, so no number of unprivileged callers can make root's
``klpctl wait`` fail with ``Busy`` (issue 11, point 5).

A caller's uid comes from the bus (``GetConnectionUnixUser``, SO_PEERCRED underneath) and
is remembered per unique connection name: the bus never reuses a unique name, so the
answer cannot go stale; the memory is bounded (oldest names forgotten first).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from dbus_fast.aio import MessageBus

from klpd.core.model import BlockingTask
from klpd.core.status import Controller
from klpd.dbus import auth, names
from klpd.dbus.errors import AccessDenied, Busy

log = logging.getLogger(__name__)

# Remembered sender -> uid pairs (a few hundred bytes each).
MAX_REMEMBERED_CALLERS = 4096
# How long a polkit "no" for a read (stacks, the wait reserve) is taken as the answer.
READ_VERDICT_SECONDS = 10.0
# A uid's refused calls are logged once per this (with the count of the others).
REFUSAL_LOG_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Bounds:
    """Caps on one kind of held call. Root and polkit-authorised callers are bound only
    by ``total``; everybody else also by the other three."""

    total: int
    reserve: int
    per_uid: int
    per_connection: int

    def __post_init__(self) -> None:
        if not 0 <= self.reserve < self.total:
            raise ValueError(f"reserve {self.reserve} must be below total {self.total}")


# WaitConverged: 256 in all, 64 of them kept for root/polkit; one unprivileged uid holds at
# most 16 (a fleet agent needs one), one connection at most 4.
WAIT_BOUNDS = Bounds(total=256, reserve=64, per_uid=16, per_connection=4)
# polkit checks in flight for non-root callers (root is never checked, so it needs no
# reserve): an interactive one can wait five minutes for an admin's password.
AUTH_BOUNDS = Bounds(total=64, reserve=0, per_uid=4, per_connection=2)


class Slots:
    """Counted slots for one kind of held call, under :class:`Bounds`."""

    def __init__(self, what: str, bounds: Bounds) -> None:
        self.what = what
        self.bounds = bounds
        self.held = 0
        self.unprivileged = 0
        self._by_uid: Counter[int] = Counter()
        self._by_connection: Counter[str] = Counter()

    def refusal(self, sender: str, uid: int, privileged: bool) -> str | None:
        """Why a new slot cannot be had now (None: it can)."""
        b = self.bounds
        if self.held >= b.total:
            return f"all {b.total} {self.what} slots are taken"
        if privileged:
            return None
        if self.unprivileged >= b.total - b.reserve:
            return (
                f"the {b.total - b.reserve} {self.what} slots for unprivileged callers are "
                f"taken ({b.reserve} are kept for root and polkit-authorised callers)"
            )
        if self._by_uid[uid] >= b.per_uid:
            return f"uid {uid} already holds {b.per_uid} {self.what} slots"
        if self._by_connection[sender] >= b.per_connection:
            return f"{sender} already holds {b.per_connection} {self.what} slots"
        return None

    @contextmanager
    def hold(self, sender: str, uid: int, privileged: bool) -> Iterator[None]:
        """Take a slot for the ``with`` block; :class:`Busy` if none is free."""
        why = self.refusal(sender, uid, privileged)
        if why is not None:
            raise Busy(f"{why}; try again later")
        self.held += 1
        if not privileged:
            self.unprivileged += 1
            self._by_uid[uid] += 1
            self._by_connection[sender] += 1
        try:
            yield
        finally:
            self.held -= 1
            if not privileged:
                self.unprivileged -= 1
                _decrement(self._by_uid, uid)
                _decrement(self._by_connection, sender)


def _decrement(counter: Counter[Any], key: object) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


class RefusalLog:
    """A warning for the first refused call of a uid in each :data:`REFUSAL_LOG_SECONDS`;
    the others are counted and summed up in the next warning. An unprivileged flood of
    1,000 refused calls a second otherwise wrote as many journal lines, and journald's rate
    limit (10,000 per 30 s by default) would then drop klpd's own messages."""

    def __init__(self, interval: float = REFUSAL_LOG_SECONDS) -> None:
        self.interval = interval
        self._last: OrderedDict[int, tuple[float, int]] = OrderedDict()  # uid -> (logged, since)

    def refused(self, uid: int, sender: str, what: str, why: str) -> None:
        now = time.monotonic()
        last = self._last.get(uid)
        if last is not None and now - last[0] < self.interval:
            self._last[uid] = (last[0], last[1] + 1)
            return
        more = f" (and {last[1]} more since the last warning)" if last and last[1] else ""
        log.warning("refused %s from uid %d (%s): %s%s", what, uid, sender, why, more)
        self._last.pop(uid, None)
        self._last[uid] = (now, 0)
        while len(self._last) > MAX_REMEMBERED_CALLERS:
            self._last.popitem(last=False)


class Callers:
    """The uid behind a sender, and whether it may change state (root or polkit)."""

    def __init__(self, bus: MessageBus, auth_bounds: Bounds = AUTH_BOUNDS) -> None:
        self._bus = bus
        self._uids: OrderedDict[str, int] = OrderedDict()
        self._refused: dict[int, float] = {}  # uid -> when polkit last said no (for reads)
        self.checks = Slots("authorisation", auth_bounds)
        self.refusals = RefusalLog()

    def note_refusal(self, sender: str, what: str, why: str) -> None:
        """Log a refused call of ``sender`` (throttled per uid; -1 if its uid is unknown)."""
        self.refusals.refused(self._uids.get(sender, -1), sender, what, why)

    async def uid(self, sender: str) -> int:
        known = self._uids.get(sender)
        if known is not None:
            return known
        uid = await auth.caller_uid(self._bus, sender)
        self._uids[sender] = uid
        while len(self._uids) > MAX_REMEMBERED_CALLERS:
            self._uids.popitem(last=False)
        return uid

    async def authorize(self, sender: str, what: str, *, interactive: bool) -> int:
        """The caller's uid if it may change state; :class:`AccessDenied` otherwise."""
        uid = await self.uid(sender)
        if uid == 0:
            return uid
        with self.checks.hold(sender, uid, privileged=False):
            allowed = await auth.polkit_check(self._bus, sender, names.POLKIT_ACTION, interactive)
        if allowed:
            log.info("polkit authorised uid %d (%s) for %s", uid, sender, what)
            return uid
        raise AccessDenied(
            f"{what} needs root or polkit authorisation for {names.POLKIT_ACTION}; "
            f"uid {uid} has neither"
        )

    async def privileged(self, sender: str, uid: int) -> bool:
        """Root, or polkit says yes without asking anyone; False when it cannot be told.

        For reads (stacks, the WaitConverged reserve): a "no" is remembered per uid for
        :data:`READ_VERDICT_SECONDS`, so a user repeating a read (from any number of
        connections) does not make klpd ask polkit, and log, each time."""
        if uid == 0:
            return True
        refused_at = self._refused.get(uid)
        if refused_at is not None and time.monotonic() - refused_at < READ_VERDICT_SECONDS:
            return False
        try:
            await self.authorize(sender, "privileged read", interactive=False)
        except (AccessDenied, Busy):
            self._refused[uid] = time.monotonic()
            while len(self._refused) > MAX_REMEMBERED_CALLERS:
                self._refused.pop(next(iter(self._refused)))
            return False
        self._refused.pop(uid, None)
        return True


# ListBlockingTasks walks every /proc/<pid>/task/<tid>: ~40 ms with 3,000 threads, on the
# loop (400 calls blocked it 16.4 s). One walk serves every caller per transition and change,
# for at most this long.
BLOCKING_REFRESH_SECONDS = 2.0
# Plan(rescan=true) walks the catalog directories: unprivileged callers get one per this.
PLAN_RESCAN_SECONDS = 2.0


class BlockingCache:
    """The controller's blocking tasks, walked at most once per transition, change (see
    :meth:`forget`) and :data:`BLOCKING_REFRESH_SECONDS`."""

    def __init__(self, controller: Controller) -> None:
        self._controller = controller
        self._cached: tuple[object, float, tuple[BlockingTask, ...]] | None = None
        self.walks = 0

    def tasks(self) -> tuple[BlockingTask, ...]:
        t = self._controller.snapshot().transition
        key = (t.module, t.target, t.started_at) if t else None
        now = time.monotonic()
        cached = self._cached
        if cached is None or cached[0] != key or now - cached[1] >= BLOCKING_REFRESH_SECONDS:
            self.walks += 1
            cached = self._cached = (key, now, self._controller.blocking_tasks())
        return cached[2]

    def forget(self) -> None:
        self._cached = None


def without_stacks(tasks: tuple[BlockingTask, ...]) -> tuple[BlockingTask, ...]:
    """Kernel stacks are for root and polkit-authorised callers only."""
    return tuple(replace(t, stack=None) for t in tasks)


class Throttle:
    """At most one go per ``interval`` seconds (for unprivileged callers, together)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: float | None = None

    def ready(self) -> bool:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        return True


__all__ = [
    "AUTH_BOUNDS",
    "BLOCKING_REFRESH_SECONDS",
    "PLAN_RESCAN_SECONDS",
    "WAIT_BOUNDS",
    "BlockingCache",
    "Bounds",
    "Callers",
    "RefusalLog",
    "Slots",
    "Throttle",
    "without_stacks",
]
