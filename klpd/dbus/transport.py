"""A full socket buffer is not a dead bus (altdesktop/python-dbus-next#153, in dbus-fast too).

Some facts about dbus-fast's writer (``dbus_fast.aio.message_bus._MessageWriter``, the same
in 2.44.1 and 5.x):

- it writes each message with a non-blocking ``sock.send`` and handles a short write by
  waiting until the socket is writable again;
- but when the buffer is already full, ``send`` writes nothing and raises
  ``BlockingIOError`` (EAGAIN) instead of returning 0, and the writer takes any exception
  as a dead connection: it closes the bus;
- the buffer fills whenever replies are written faster than dbus-daemon reads them: 100
  clients calling ``Describe`` (1.8 KB replies) at once were enough (bench/dbus_load.py).
  klpd dropped its bus connection, its name and every caller's pending call, and logged a
  traceback for each reply still to come.

So klpd's writer gets a socket whose ``send`` returns 0 for EAGAIN: a short write, after
which the writer waits for the socket to be writable, as it should have.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from dbus_fast.aio import MessageBus

log = logging.getLogger(__name__)


class PatientSocket:
    """A socket whose ``send`` says "0 bytes written" where the kernel says EAGAIN."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def send(self, data: Any, flags: int = 0) -> int:
        try:
            return self._sock.send(data, flags)
        except BlockingIOError:
            return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def wait_when_the_socket_is_full(bus: MessageBus) -> None:
    """Give the connected ``bus``'s writer a :class:`PatientSocket`."""
    writer: Any = getattr(bus, "_writer", None)
    sock = getattr(writer, "sock", None)
    if not isinstance(sock, socket.socket):
        # another dbus-fast: nothing to fix here, or nothing klpd knows how to
        log.warning("dbus-fast's writer has no socket to wrap; a full socket drops the bus")
        return
    writer.sock = PatientSocket(sock)


__all__ = ["PatientSocket", "wait_when_the_socket_is_full"]
