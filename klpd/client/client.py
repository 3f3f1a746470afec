"""klpctl's calls to klpd over D-Bus, and what their failures mean as exit codes.

Standard library only (through :mod:`klpd.client.wire`): klpctl starts fast on purpose.
"""

from __future__ import annotations

import time

from klpd.client.render import MalformedJSON, loads
from klpd.client.wire import CallError, Connection, WireError
from klpd.dbus import names

TYPE_CHECKING = False  # typing costs milliseconds on every poll: not at run time
if TYPE_CHECKING:
    from typing import Any

EXIT_CONVERGED = 0
EXIT_CONVERGING = 1
EXIT_DEGRADED = 2
EXIT_FAILED = 3
EXIT_NOT_RUNNING = 4
EXIT_PERMISSION = 5
EXIT_USAGE = 6

EXIT_BY_STATE = {
    "converged": EXIT_CONVERGED,
    "converging": EXIT_CONVERGING,
    "degraded": EXIT_DEGRADED,
    "failed": EXIT_FAILED,
}
WAIT_DEFAULT = 300.0
_NOT_RUNNING = (
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.UnknownObject",
)
_DENIED = (names.ERROR_ACCESS_DENIED, "org.freedesktop.DBus.Error.AccessDenied")
_INVALID = (names.ERROR_INVALID_ARGUMENT, names.ERROR_UNKNOWN_PATCH)


class Failure(Exception):
    """A message for stderr and the exit code that goes with it."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Client:
    """The calls klpctl makes, each turned into a :class:`Failure` when it fails."""

    def __init__(self, address: str) -> None:
        self.address = address
        try:
            self.conn = Connection(address)
        except (WireError, OSError) as e:
            raise Failure(EXIT_NOT_RUNNING, f"klpd is not reachable: {e}") from None

    def call(self, member: str, signature: str = "", *args: Any, **kw: Any) -> list[Any]:
        try:
            return self.conn.call(
                names.BUS_NAME, names.OBJECT_PATH, names.INTERFACE, member, signature, args, **kw
            )
        except CallError as e:
            raise _failure_of(e, self.address) from None
        except (WireError, OSError) as e:
            raise Failure(EXIT_NOT_RUNNING, f"lost the bus at {self.address}: {e}") from None

    def loads(self, text: str) -> Any:
        try:
            return loads(text)
        except MalformedJSON as e:
            raise Failure(EXIT_FAILED, str(e)) from None

    def wait_for_name(self, deadline: float) -> bool:
        """True once klpd owns its bus name (at once, or by NameOwnerChanged before
        ``deadline``); False if it did not appear in time."""
        rule = (
            "type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',"
            f"arg0='{names.BUS_NAME}'"
        )
        if self._has_owner():
            return True
        self.conn.add_match(rule)  # before asking again: a start in between is not lost
        if self._has_owner():
            return True
        while (left := deadline - time.monotonic()) > 0:
            sig = self.conn.next_signal(left)
            if sig is not None and sig.member == "NameOwnerChanged" and sig.body[2]:
                return True
        return False

    def _has_owner(self) -> bool:
        try:
            reply = self.conn.call(
                "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                "NameHasOwner", "s", (names.BUS_NAME,),
            )  # fmt: skip
        except (CallError, WireError, OSError) as e:
            raise Failure(EXIT_NOT_RUNNING, f"lost the bus at {self.address}: {e}") from None
        return bool(reply[0])

    def wait_settled(self, seconds: float) -> str:
        """klpd's state once it has nothing left to do, or "converging" at the timeout."""
        try:
            return str(self.call("WaitSettled", "d", seconds, timeout=seconds + 30)[0])
        except Failure as e:
            if "UnknownMethod" not in str(e):
                raise
        # an older klpd: WaitConverged said true once idle, whatever the result
        (settled,) = self.call("WaitConverged", "d", seconds, timeout=seconds + 30)
        return str(self.describe()["state"]) if settled else "converging"

    def describe(self) -> dict[str, Any]:
        return self.describe_text()[1]

    def describe_text(self) -> tuple[str, dict[str, Any]]:
        text: str = self.call("Describe")[0]
        return text, self.loads(text)


def _failure_of(e: CallError, address: str) -> Failure:
    if e.name in _NOT_RUNNING:
        return Failure(EXIT_NOT_RUNNING, f"klpd is not running ({names.BUS_NAME} on {address})")
    if e.name in _DENIED:
        return Failure(EXIT_PERMISSION, f"permission denied: {e.message}")
    if e.name in _INVALID:
        return Failure(EXIT_USAGE, e.message)
    if e.name == "org.freedesktop.DBus.Error.NoReply" and "disconnected" in e.message:
        return Failure(EXIT_NOT_RUNNING, f"klpd went away: {e.message}")
    if e.name == "org.freedesktop.DBus.Error.NoReply":
        return Failure(EXIT_FAILED, f"klpd did not answer: {e.message}")
    return Failure(EXIT_FAILED, f"{e.name.removeprefix(names.ERROR_PREFIX)}: {e.message}")
