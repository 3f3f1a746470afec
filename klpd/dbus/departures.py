"""Callers that left the bus: their held calls end, and give their slots back.

dbus-fast runs a method to its end whatever became of the caller, so a ``WaitConverged``
whose caller disconnected held its slot (klpd.dbus.limits) for up to an hour: a fleet
agent restarted four times while klpd converged found its uid's 16 slots taken by its own
dead connections, and got ``Busy`` (bench/dbus_load.py saw a second flood's waits all
refused). klpd watches ``NameOwnerChanged`` for unique names losing their owner (the bus
never reuses one) and cancels what those callers still wait for.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable
from typing import TypeVar

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from klpd.dbus.errors import Failed

log = logging.getLogger(__name__)
T = TypeVar("T")

BUS_DRIVER = "org.freedesktop.DBus"
NAME_OWNER_CHANGED = (
    "type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',"
    "interface='org.freedesktop.DBus',member='NameOwnerChanged'"
)
# Unique names seen leaving, remembered for a call whose handler starts after the signal
# was read (the reader handles every buffered message before any task runs).
MAX_REMEMBERED_DEPARTURES = 4096


class CallerGone(Failed):
    """The caller left the bus; nobody reads this reply."""


class Departures:
    """Runs held calls until their caller leaves the bus (see :meth:`unless_gone`)."""

    def __init__(self, bus: MessageBus) -> None:
        self._bus = bus
        self._watching: dict[str, set[asyncio.Future[None]]] = {}
        self._gone: OrderedDict[str, None] = OrderedDict()
        self.watched = False  # NameOwnerChanged reaches klpd

    async def watch(self) -> None:
        """Subscribe to ``NameOwnerChanged``; without it, held calls run to their end."""
        self._bus.add_message_handler(self._on_message)
        reply = await self._bus.call(
            Message(
                destination=BUS_DRIVER,
                path="/org/freedesktop/DBus",
                interface=BUS_DRIVER,
                member="AddMatch",
                signature="s",
                body=[NAME_OWNER_CHANGED],
            )
        )
        self.watched = reply is not None and reply.message_type is MessageType.METHOD_RETURN
        if not self.watched:
            log.warning("cannot watch callers leave the bus: %s", reply and reply.body)

    def _on_message(self, msg: Message) -> bool:
        if (
            msg.message_type is MessageType.SIGNAL
            and msg.member == "NameOwnerChanged"
            and msg.sender == BUS_DRIVER
            and msg.signature == "sss"
        ):
            name, _old, new = msg.body
            if name.startswith(":") and not new:
                self._left(name)
        return False  # others may want it too

    def _left(self, name: str) -> None:
        self._gone[name] = None
        while len(self._gone) > MAX_REMEMBERED_DEPARTURES:
            self._gone.popitem(last=False)
        for left in self._watching.pop(name, ()):
            if not left.done():
                left.set_result(None)

    async def unless_gone(self, sender: str, work: Awaitable[T]) -> T:
        """``work``'s result, or :class:`CallerGone` (``work`` cancelled) once ``sender``
        has left the bus."""
        if sender in self._gone:
            raise CallerGone(f"{sender} left the bus")
        left: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._watching.setdefault(sender, set()).add(left)
        task = asyncio.ensure_future(work)
        try:
            await asyncio.wait((task, left), return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                return task.result()
            raise CallerGone(f"{sender} left the bus")
        finally:
            if not task.done():
                task.cancel()
            watching = self._watching.get(sender)
            if watching is not None:
                watching.discard(left)
                if not watching:
                    del self._watching[sender]


__all__ = ["CallerGone", "Departures"]
