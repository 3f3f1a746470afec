"""The sd_notify protocol: READY, STATUS, WATCHDOG, RELOADING, STOPPING.

Messages go through systemd-python's ``systemd.daemon.notify`` — libsystemd's own
``sd_notify(3)``, which handles every ``NOTIFY_SOCKET`` form systemd hands out (a path, an
abstract ``@name``, and ``vsock:`` on recent versions). systemd-python is an optional
dependency (``klpd[systemd]``), so without it a minimal implementation of the same datagram
protocol (path and abstract sockets, which is all a service manager on the host uses) takes
over. Without ``NOTIFY_SOCKET`` every call is a no-op: klpd run by hand or in tests.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

from klpd.core.text import escape_controls

log = logging.getLogger(__name__)

Sender = Callable[[str], bool]


def _libsystemd_sender() -> Sender | None:
    try:
        from systemd import daemon
    except ImportError:
        return None

    def send(message: str) -> bool:
        return bool(daemon.notify(message))

    return send


def socket_sender(address: str) -> Sender:
    """Send datagrams to ``address`` (a path, or ``@name`` for the abstract namespace)."""
    target = "\0" + address[1:] if address.startswith("@") else address

    def send(message: str) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(message.encode(), target)
        return True

    return send


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout in seconds, if systemd expects pings from this process.

    Ping at half of it or more often (sd_watchdog_enabled(3)).
    """
    env = os.environ if environ is None else environ
    usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
    if not usec:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (e.g. our parent)
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None
    return value / 1_000_000 if value > 0 else None


def _one_line(text: str) -> str:
    """Lines joined by spaces, any other control character escaped."""
    return escape_controls(" ".join(text.splitlines()))


class Notifier:
    """Tells the service manager about klpd's state; silent when nobody listens."""

    def __init__(
        self, environ: Mapping[str, str] | None = None, *, sender: Sender | None = None
    ) -> None:
        env = os.environ if environ is None else environ
        self._address = env.get("NOTIFY_SOCKET") or None
        self._watchdog = watchdog_interval(env)
        if sender is not None:
            self._send: Sender | None = sender
        elif self._address is None:
            self._send = None
        elif environ is None and (lib := _libsystemd_sender()) is not None:
            self._send = lib  # libsystemd reads NOTIFY_SOCKET from the real environment
        else:
            self._send = socket_sender(self._address)

    @property
    def enabled(self) -> bool:
        return self._send is not None

    def watchdog_interval(self) -> float | None:
        """Seconds within which :meth:`watchdog` must be called; None if not required."""
        return self._watchdog

    def notify(self, message: str) -> bool:
        """Send raw ``KEY=value`` lines; False if not sent (no socket, or an error)."""
        if self._send is None:
            return False
        try:
            return self._send(message)
        except OSError as e:
            # Never fatal: a lost STATUS is better than a daemon that dies on it.
            log.warning("sd_notify %r to %s failed: %s", message, self._address, e)
            return False

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) is complete."""
        return self.notify("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def status(self, text: str) -> bool:
        """One line shown by ``systemctl status``.

        Escaped: the text can hold a task's comm or a module's description, and a newline
        there would start a forged ``KEY=value`` line of the datagram (``STOPPING=1``)."""
        return self.notify("STATUS=" + _one_line(text))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        """A reload started; send :meth:`ready` when it is done (Type=notify-reload)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")


__all__ = ["Notifier", "Sender", "socket_sender", "watchdog_interval"]
