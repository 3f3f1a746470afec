"""Just enough inotify(7) for the sim: watch directories for ``IN_CLOSE_WRITE``.

libc's three calls through ctypes, and the ``struct inotify_event`` stream parsed with
:mod:`struct`; the fd is non-blocking, to be read from an asyncio reader callback.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
from dataclasses import dataclass

IN_CLOSE_WRITE = 0x00000008
IN_IGNORED = 0x00008000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.inotify_init1.argtypes = [ctypes.c_int]
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


@dataclass(frozen=True, slots=True)
class Event:
    wd: int
    mask: int
    name: str


def _check(result: int) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


class INotify:
    def __init__(self) -> None:
        self._fd = _check(_libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC))

    def fileno(self) -> int:
        return self._fd

    def add_watch(self, path: str, mask: int) -> int:
        return _check(_libc.inotify_add_watch(self._fd, os.fsencode(path), mask))

    def rm_watch(self, wd: int) -> None:
        _check(_libc.inotify_rm_watch(self._fd, wd))

    def read(self) -> list[Event]:
        """The events queued now (none if there are none: the fd does not block)."""
        try:
            data = os.read(self._fd, 64 * 1024)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return []
            raise
        events = []
        pos = 0
        while pos + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
            pos += _EVENT.size
            name = data[pos : pos + length].rstrip(b"\0").decode(errors="surrogateescape")
            pos += length
            events.append(Event(wd, mask, name))
        return events

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
