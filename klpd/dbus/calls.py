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

:func:`refuse_oversized`, the handler before it, answers a call whose arguments are far
larger than any klpd takes with ``InvalidArgument`` before anything parses them.
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any

from dbus_fast import Message, MessageFlag, MessageType, Variant

from klpd.dbus import names
from klpd.dbus.errors import AccessDenied, InvalidArgument

log = logging.getLogger(__name__)

_current_call: contextvars.ContextVar[Message | None] = contextvars.ContextVar(
    "klpd_current_call", default=None
)


# No call of klpd's needs more: a patch name is at most 55 bytes, Plan()'s options a few
# lists of them. Larger arguments are refused before dispatch because errors quote them
# back: both klpd's and dbus-fast's ("interface ... does not have property '<name>'"). A
# 9 MB DescribePatch name of control characters came back as a 36 MB InvalidArgument, over
# dbus-daemon's 32 MiB message limit, and the bus dropped klpd's connection: its name and
# every caller's pending call with it, at one unprivileged read.
MAX_ARGUMENTS_SIZE = 64 * 1024


def arguments_size(body: list[Any], limit: int = MAX_ARGUMENTS_SIZE) -> int:
    """The characters of every string plus the items of every container in ``body``;
    counting stops past ``limit``."""
    size = 0
    pending: list[Any] = list(body)
    while pending and size <= limit:
        value = pending.pop()
        if isinstance(value, Variant):
            size += 1
            pending.append(value.value)
        elif isinstance(value, (str, bytes)):
            size += len(value)
        elif isinstance(value, dict):
            size += len(value)
            if size <= limit:
                pending += value.keys()
                pending += value.values()
        elif isinstance(value, (list, tuple)):
            size += len(value)
            if size <= limit:
                pending += value
        else:  # a number
            size += 1
    return size


def refuse_oversized(msg: Message) -> Message | bool:
    """Message handler: an ``InvalidArgument`` error for a method call with arguments over
    :data:`MAX_ARGUMENTS_SIZE` (nothing for one that expects no reply); other messages go on."""
    if msg.message_type is not MessageType.METHOD_CALL:
        return False
    size = arguments_size(msg.body)
    if size <= MAX_ARGUMENTS_SIZE:
        return False
    log.warning(
        "refused %s.%s from %s: arguments over %d characters",
        msg.interface,
        msg.member,
        msg.sender,
        MAX_ARGUMENTS_SIZE,
    )
    if msg.flags & MessageFlag.NO_REPLY_EXPECTED:
        return True
    error = InvalidArgument(
        f"{msg.member}: arguments over {MAX_ARGUMENTS_SIZE} characters; no call of klpd's "
        "takes that much"
    )
    return Message.new_error(msg, error.error_name, error.text)


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


__all__ = ["MAX_ARGUMENTS_SIZE", "arguments_size", "record_call", "refuse_oversized", "served_call"]
