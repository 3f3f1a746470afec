"""The method call being served, bound to the method that serves it (issue 11, point 1).

dbus-fast does not hand the message to a method, so :func:`record_call` — a message
handler run just before dispatch, in the same callback — records EVERY method call, whatever
its headers, and the method's task inherits it: asyncio copies the context when it creates
the task. The reader callback runs in one context for all messages, so a call recorded only
for some headers (main recorded only those naming the Manager interface) leaves the previous
caller's message in place for the others: a ``DisablePatch`` without an interface from uid
65534 was authorised as root's pending ``WaitConverged``.

:func:`served_call` then checks that the recorded message really is a call of that member
on klpd's object — a call without an interface is routed by dbus-fast to the one method of
that name and is authorised like any other; anything else is refused.
"""

from __future__ import annotations

import contextvars
import logging

from dbus_fast import Message, MessageType

from klpd.dbus import names
from klpd.dbus.errors import AccessDenied

log = logging.getLogger(__name__)

_current_call: contextvars.ContextVar[Message | None] = contextvars.ContextVar(
    "klpd_current_call", default=None
)


def record_call(msg: Message) -> bool:
    """Message handler: remember every method call; never handles one itself."""
    if msg.message_type is MessageType.METHOD_CALL:
        _current_call.set(msg)
    return False


def served_call(member: str) -> Message:
    """The message being served, checked to be a call of ``member`` on klpd's object from a
    sender (with the Manager interface or none); :class:`AccessDenied` otherwise."""
    call = _current_call.get()
    if (
        call is None
        or call.message_type is not MessageType.METHOD_CALL
        or not call.sender
        or call.member != member
        or call.path != names.OBJECT_PATH
        or call.interface not in (None, names.INTERFACE)
    ):
        log.error("refused %s: the message being served is not a call of it", member)
        raise AccessDenied(f"{member}: cannot tell which call this is; refused")
    return call


__all__ = ["record_call", "served_call"]
