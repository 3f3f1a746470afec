"""A minimal, synchronous D-Bus client: just what klpctl needs, standard library only.

Why not dbus-fast here: importing ``dbus_fast.aio`` costs ~70 ms (asyncio alone ~40 ms),
more than the interpreter start itself, and klpctl runs on every fleet poll (see
``docs/dbus.md`` for the numbers). This module speaks the wire protocol directly: SASL
EXTERNAL over a unix socket, ``Hello``, method calls, ``AddMatch`` and signals. It
marshals the basic types, arrays, structs, dict entries and variants; no unix fds.
No dataclasses or typing either: importing them costs ~12 ms and ~3 ms.
"""

from __future__ import annotations

import _socket  # not socket: its enum conversions cost ~3 ms per klpctl run
import os
import struct
import time

SYSTEM_BUS_DEFAULT = "unix:path=/run/dbus/system_bus_socket"

_CALL, _RETURN, _ERROR, _SIGNAL = 1, 2, 3, 4
_FLAG_NO_AUTO_START = 0x2
_FLAG_INTERACTIVE = 0x4
_F_PATH, _F_INTERFACE, _F_MEMBER, _F_ERROR, _F_REPLY, _F_DEST, _F_SENDER, _F_SIG = range(1, 9)
_ALIGN = {"y": 1, "b": 4, "n": 2, "q": 2, "i": 4, "u": 4, "x": 8, "t": 8, "d": 8, "h": 4,
          "s": 4, "o": 4, "g": 1, "v": 1, "a": 4, "(": 8, "{": 8}  # fmt: skip
_FIXED = {"y": "B", "b": "I", "n": "h", "q": "H", "i": "i", "u": "I", "x": "q", "t": "Q",
          "d": "d", "h": "I"}  # fmt: skip


class WireError(Exception):
    """The bus could not be reached or spoke nonsense."""


class CallError(Exception):
    """An error reply: ``name`` is the D-Bus error name."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


TYPE_CHECKING = False  # typing costs ~3 ms per klpctl run: for mypy only
if TYPE_CHECKING:
    from typing import Any


# Signals kept for next_signal() at most; older ones are dropped (and counted) beyond it.
MAX_QUEUED_SIGNALS = 1024


class Signal:
    """A received signal. ``sender`` is the unique name the bus stamped on it (a sender
    cannot forge it); anyone can *send* a signal to anyone, so callers check it, and the
    ``signature``, before they believe a word (:func:`klpd.client.ctl._event_of`)."""

    __slots__ = ("body", "interface", "member", "path", "sender", "signature")

    def __init__(
        self, sender: str, path: str, interface: str, member: str, signature: str, body: list[Any]
    ):
        self.sender, self.path, self.interface = sender, path, interface
        self.member, self.signature, self.body = member, signature, body


def system_bus_address() -> str:
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", SYSTEM_BUS_DEFAULT)


def _type_end(sig: str, i: int) -> int:
    """Index just after the single complete type starting at ``sig[i]``."""
    c = sig[i]
    if c == "a":
        return _type_end(sig, i + 1)
    if c in "({":
        close = ")" if c == "(" else "}"
        j = i + 1
        while sig[j] != close:
            j = _type_end(sig, j)
        return j + 1
    return i + 1


def split_signature(sig: str) -> list[str]:
    out, i = [], 0
    while i < len(sig):
        j = _type_end(sig, i)
        out.append(sig[i:j])
        i = j
    return out


class _Writer:
    def __init__(self) -> None:
        self.buf = bytearray()

    def align(self, n: int) -> None:
        self.buf.extend(b"\0" * (-len(self.buf) % n))

    def write(self, sig: str, value: Any) -> None:
        c = sig[0]
        self.align(_ALIGN[c])
        if c in _FIXED:
            self.buf.extend(struct.pack("<" + _FIXED[c], value))
        elif c in "so":
            data = value.encode()
            self.buf.extend(struct.pack("<I", len(data)) + data + b"\0")
        elif c == "g":
            data = value.encode()
            self.buf.extend(bytes([len(data)]) + data + b"\0")
        elif c == "v":
            vsig, inner = value
            self.write("g", vsig)
            self.write(vsig, inner)
        elif c == "a":
            elem = sig[1:]
            at = len(self.buf)
            self.buf.extend(b"\0\0\0\0")
            self.align(_ALIGN[elem[0]])
            start = len(self.buf)
            items = value.items() if elem[0] == "{" else value
            for item in items:
                self.write(elem, item)
            struct.pack_into("<I", self.buf, at, len(self.buf) - start)
        elif c in "({":
            for s, v in zip(split_signature(sig[1:-1]), value, strict=True):
                self.write(s, v)
        else:
            raise WireError(f"cannot marshal type {sig!r}")


class _Reader:
    def __init__(self, data: bytes, little: bool, pos: int = 0) -> None:
        self.data, self.pos, self.e = data, pos, "<" if little else ">"

    def align(self, n: int) -> None:
        self.pos += -self.pos % n

    def read(self, sig: str) -> Any:
        c = sig[0]
        self.align(_ALIGN[c])
        if c in _FIXED:
            fmt = self.e + _FIXED[c]
            (v,) = struct.unpack_from(fmt, self.data, self.pos)
            self.pos += struct.calcsize(fmt)
            return bool(v) if c == "b" else v
        if c in "so":
            (n,) = struct.unpack_from(self.e + "I", self.data, self.pos)
            s = self.data[self.pos + 4 : self.pos + 4 + n].decode()
            self.pos += 4 + n + 1
            return s
        if c == "g":
            n = self.data[self.pos]
            s = self.data[self.pos + 1 : self.pos + 1 + n].decode()
            self.pos += n + 2
            return s
        if c == "v":
            return self.read(self.read("g"))
        if c == "a":
            (n,) = struct.unpack_from(self.e + "I", self.data, self.pos)
            self.pos += 4
            elem = sig[1:]
            self.align(_ALIGN[elem[0]])
            end = self.pos + n
            items = []
            while self.pos < end:
                items.append(self.read(elem))
            return dict(items) if elem[0] == "{" else items
        if c in "({":
            return tuple(self.read(s) for s in split_signature(sig[1:-1]))
        raise WireError(f"cannot unmarshal type {sig!r}")


# What a message this reader cannot follow raises while it is read.
_MALFORMED = (struct.error, UnicodeDecodeError, IndexError, KeyError, ValueError,
              TypeError, RecursionError, WireError)  # fmt: skip


class _Message:
    __slots__ = ("body", "fields", "kind", "serial")

    def __init__(self, kind: int, serial: int, fields: dict[int, Any], body: list[Any] | None):
        self.kind, self.serial, self.fields, self.body = kind, serial, fields, body


def _parse_address(address: str) -> list[str | bytes]:
    """Socket addresses to try, in order: unix paths (str) and abstract names (bytes)."""
    out: list[str | bytes] = []
    for entry in address.split(";"):
        transport, _, params = entry.partition(":")
        if transport != "unix":
            continue
        kv = dict(p.split("=", 1) for p in params.split(",") if "=" in p)
        if "path" in kv:
            out.append(_unescape(kv["path"]))
        elif "abstract" in kv:
            out.append(b"\0" + _unescape(kv["abstract"]).encode())
    if not out:
        raise WireError(f"no usable unix: transport in bus address {address!r}")
    return out


def _unescape(value: str) -> str:
    parts = value.split("%")
    return parts[0] + "".join(chr(int(p[:2], 16)) + p[2:] for p in parts[1:])


class Connection:
    """One authenticated connection; :meth:`call` blocks until the reply."""

    def __init__(self, address: str, timeout: float = 10.0) -> None:
        self._serial = 0
        self._signals: list[Signal] = []
        # Signals are kept only once add_match() asked for some: anyone may send unicast
        # signals to this connection, and a `klpctl wait` must not hoard them (issue 11).
        self.keep_signals = False
        self.dropped_signals = 0
        self._buf = b""
        self.sock = self._connect(address, timeout)
        self.unique_name: str = self.call(
            "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "Hello"
        )[0]

    def _connect(self, address: str, timeout: float) -> _socket.socket:
        last: OSError | None = None
        for target in _parse_address(address):
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
            sock.settimeout(timeout)
            try:
                sock.connect(target)
                uid = str(os.geteuid()).encode().hex()
                sock.sendall(b"\0AUTH EXTERNAL " + uid.encode() + b"\r\n")
                line = self._auth_line(sock)
                if not line.startswith(b"OK "):
                    raise WireError(f"the bus refused authentication: {line.decode()!r}")
                sock.sendall(b"BEGIN\r\n")
                return sock
            except OSError as e:
                sock.close()
                last = e
        raise WireError(f"cannot connect to {address}: {last}")

    @staticmethod
    def _auth_line(sock: _socket.socket) -> bytes:
        line = b""
        while not line.endswith(b"\r\n"):
            chunk = sock.recv(256)
            if not chunk:
                raise WireError("the bus closed the connection during authentication")
            line += chunk
        return line[:-2]

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def call(
        self,
        destination: str,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        args: tuple[Any, ...] = (),
        *,
        timeout: float = 25.0,
        interactive: bool = False,
    ) -> list[Any]:
        """The reply's body; :class:`CallError` for an error reply."""
        fields: list[tuple[int, tuple[str, Any]]] = [
            (_F_PATH, ("o", path)),
            (_F_INTERFACE, ("s", interface)),
            (_F_MEMBER, ("s", member)),
            (_F_DEST, ("s", destination)),
        ]
        if signature:
            fields.append((_F_SIG, ("g", signature)))
        flags = _FLAG_NO_AUTO_START | (_FLAG_INTERACTIVE if interactive else 0)
        serial = self._send(_CALL, flags, fields, signature, args)
        deadline = time.monotonic() + timeout
        while True:
            msg = self._receive(deadline)
            if msg is None:
                raise CallError("org.freedesktop.DBus.Error.NoReply", f"{member}: timed out")
            if msg.kind in (_RETURN, _ERROR) and msg.fields.get(_F_REPLY) == serial:
                if msg.kind == _ERROR:
                    text = msg.body[0] if msg.body and isinstance(msg.body[0], str) else ""
                    raise CallError(str(msg.fields.get(_F_ERROR, "?")), text)
                if msg.body is None:
                    raise WireError(f"{member}: the reply could not be read")
                return msg.body
            if msg.kind == _SIGNAL:
                self._keep(msg)

    def _keep(self, msg: _Message) -> None:
        if not self.keep_signals or msg.body is None:
            return  # not asked for, or a body this client could not read: dropped
        if len(self._signals) >= MAX_QUEUED_SIGNALS:
            self._signals.pop(0)
            self.dropped_signals += 1
        self._signals.append(_signal_of(msg))

    def add_match(self, rule: str) -> None:
        self.keep_signals = True
        self.call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "AddMatch",
            "s",
            (rule,),
        )

    def next_signal(self, timeout: float | None = None) -> Signal | None:
        """The next signal received, or None after ``timeout`` seconds (None: forever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._signals:
            msg = self._receive(deadline)
            if msg is None:
                return None
            if msg.kind == _SIGNAL:
                self._keep(msg)
        return self._signals.pop(0)

    def _send(
        self,
        kind: int,
        flags: int,
        fields: list[tuple[int, tuple[str, Any]]],
        signature: str,
        args: tuple[Any, ...],
    ) -> int:
        self._serial += 1
        body = _Writer()
        for sig, arg in zip(split_signature(signature), args, strict=True):
            body.write(sig, arg)
        head = _Writer()
        head.buf.extend(struct.pack("<cBBBII", b"l", kind, flags, 1, len(body.buf), self._serial))
        head.write("a(yv)", fields)
        head.align(8)
        self.sock.sendall(bytes(head.buf) + bytes(body.buf))
        return self._serial

    def _receive(self, deadline: float | None) -> _Message | None:
        head = self._read_exact(16, deadline)
        if head is None:
            return None
        little = head[:1] == b"l"
        e = "<" if little else ">"
        kind, _flags, _version, body_len, serial, fields_len = struct.unpack(e + "BBBIII", head[1:])
        total = 16 + fields_len + (-(16 + fields_len) % 8) + body_len
        rest = self._read_exact(total - 16, None)
        if rest is None:
            raise WireError("connection closed mid-message")
        data = head + rest
        r = _Reader(data, little, 12)
        try:
            fields = dict(r.read("a(yv)"))
        except _MALFORMED as e:
            raise WireError(f"unreadable message header from the bus: {e!r}") from None
        r.align(8)
        body: list[Any] | None
        try:
            body = [r.read(s) for s in split_signature(str(fields.get(_F_SIG, "")))]
        except _MALFORMED:
            body = None  # the message is skipped (a signal) or refused (a reply)
        return _Message(kind, serial, fields, body)

    def _read_exact(self, n: int, deadline: float | None) -> bytes | None:
        while len(self._buf) < n:
            if deadline is None:
                self.sock.settimeout(None)
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(max(65536, n - len(self._buf)))
            except TimeoutError:
                if self._buf:  # a deadline never splits a message: finish reading it
                    deadline = None
                    continue
                return None
            if not chunk:
                raise WireError("the bus closed the connection")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


def _signal_of(msg: _Message) -> Signal:
    f = msg.fields
    return Signal(f.get(_F_SENDER, ""), f.get(_F_PATH, ""), f.get(_F_INTERFACE, ""),
                  f.get(_F_MEMBER, ""), f.get(_F_SIG, ""), msg.body or [])  # fmt: skip
