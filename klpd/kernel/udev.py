"""Module ``add``/``remove`` uevents from udev's netlink group, on the asyncio loop.

No thread: the monitor's socket is registered with ``loop.add_reader`` and drained when
readable. When the socket overflows (ENOBUFS) events were lost: the source asks for a full
resync from sysfs instead of guessing, and clears the socket error first — see pyudev#194,
an overflowed netlink socket keeps failing until its ``SO_ERROR`` is read.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

import pyudev

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModuleEvent:
    action: str  # "add" or "remove"
    module: str
    seqnum: int


EventSink = Callable[[ModuleEvent], None]
ResyncSink = Callable[[str], None]


class UdevSource:
    """Feeds module events to ``on_event`` and lost-event notices to ``on_resync``."""

    def __init__(
        self,
        on_event: EventSink,
        on_resync: ResyncSink,
        *,
        receive_buffer: int = 1 << 20,
        source: str = "udev",
    ) -> None:
        self._on_event = on_event
        self._on_resync = on_resync
        self._context = pyudev.Context()
        self._monitor = pyudev.Monitor.from_netlink(self._context, source=source)
        self._monitor.filter_by("module")
        self._receive_buffer = receive_buffer
        self._loop: asyncio.AbstractEventLoop | None = None
        self.received = 0
        self.overflows = 0

    def fileno(self) -> int:
        return int(self._monitor.fileno())

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self._monitor.set_receive_buffer_size(self._receive_buffer)
        except OSError as e:  # SO_RCVBUFFORCE needs CAP_NET_ADMIN; the default still works
            log.warning("cannot set netlink receive buffer to %d: %s", self._receive_buffer, e)
        self._monitor.start()
        self._loop = loop
        loop.add_reader(self.fileno(), self._drain)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.fileno())
            self._loop = None

    def _take_socket_error(self) -> int:
        """Read (and so clear) the socket's pending error; 0 when there is none."""
        sock = socket.socket(fileno=self.fileno())
        try:
            return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        finally:
            sock.detach()

    def _drain(self) -> None:
        while True:
            # pyudev#194: after an overflow the socket reports POLLERR, and pyudev's poll()
            # raises on every call until SO_ERROR is read. Read it first, every time.
            err = self._take_socket_error()
            if err:
                self.overflows += err == errno.ENOBUFS
                why = "uevent overflow (ENOBUFS)" if err == errno.ENOBUFS else os.strerror(err)
                log.warning("uevent socket error: %s; events lost, resyncing from sysfs", why)
                self._on_resync(why)
                continue
            try:
                device = self._monitor.poll(timeout=0)
            except OSError as e:
                if self._take_socket_error() == errno.ENOBUFS or e.errno == errno.ENOBUFS:
                    self.overflows += 1
                    log.warning("uevent socket overflowed: events lost, resyncing from sysfs")
                    self._on_resync("uevent overflow (ENOBUFS)")
                    continue
                log.error("uevent receive failed: %s; resyncing from sysfs", e)
                self._on_resync(f"uevent receive failed: {e}")
                return
            if device is None:
                return
            self.received += 1
            action = device.action
            name = device.sys_name
            if action not in ("add", "remove") or not name:
                continue
            try:
                seq = int(device.sequence_number)
            except (TypeError, ValueError):
                seq = 0
            self._on_event(ModuleEvent(action=action, module=name, seqnum=seq))
