"""Who may change state: root, or whoever polkit authorises for ``io.github.klpd1.manage``.

Checked on the sender of each call (polkit's verdict is never cached: a uid can lose its
rights between two calls; :class:`klpd.dbus.limits.Callers` asks). The uid comes from the
bus daemon (``GetConnectionUnixUser``), which got it from the kernel (SO_PEERCRED), so a
client cannot lie about it. Polkit is asked on the bus the service is on (the system bus
in production) with a ``system-bus-name`` subject; when it cannot be asked, the call is
refused with an ``AccessDenied`` that says so.
"""

from __future__ import annotations

import asyncio
import logging

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from klpd.dbus.errors import AccessDenied

log = logging.getLogger(__name__)

POLKIT_NAME = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
POLKIT_INTERFACE = "org.freedesktop.PolicyKit1.Authority"
_POLKIT_ALLOW_USER_INTERACTION = 1
# auth_admin may prompt an admin for a password through an agent; give them time.
_POLKIT_TIMEOUT_INTERACTIVE = 300.0
_POLKIT_TIMEOUT = 25.0


async def caller_uid(bus: MessageBus, sender: str) -> int:
    reply = await bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="GetConnectionUnixUser",
            signature="s",
            body=[sender],
        )
    )
    if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
        detail = reply.body[0] if reply is not None and reply.body else "no reply"
        raise AccessDenied(f"cannot tell who the caller {sender} is: {detail}")
    uid: int = reply.body[0]
    return uid


async def polkit_check(bus: MessageBus, sender: str, action: str, interactive: bool) -> bool:
    """polkit's verdict; raises :class:`AccessDenied` when polkit cannot be asked."""
    subject = ["system-bus-name", {"name": Variant("s", sender)}]
    flags = _POLKIT_ALLOW_USER_INTERACTION if interactive else 0
    msg = Message(
        destination=POLKIT_NAME,
        path=POLKIT_PATH,
        interface=POLKIT_INTERFACE,
        member="CheckAuthorization",
        signature="(sa{sv})sa{ss}us",
        body=[subject, action, {}, flags, ""],
    )
    timeout = _POLKIT_TIMEOUT_INTERACTIVE if interactive else _POLKIT_TIMEOUT
    try:
        reply = await _call_with_timeout(bus, msg, timeout)
    except TimeoutError:
        raise AccessDenied(
            f"not root, and polkit ({POLKIT_NAME}) did not answer within {timeout:.0f} s"
        ) from None
    if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
        why = f"{reply.error_name}: {reply.body[0] if reply.body else ''}" if reply else "?"
        # said in the refusal (logged once per uid and 10 s: klpd.dbus.limits.RefusalLog)
        log.debug("polkit unreachable for %s: %s", sender, why)
        raise AccessDenied(f"not root, and polkit ({POLKIT_NAME}) is unreachable ({why})")
    is_authorized, _is_challenge, _details = reply.body[0]
    return bool(is_authorized)


async def _call_with_timeout(bus: MessageBus, msg: Message, timeout: float) -> Message | None:
    async with asyncio.timeout(timeout):
        return await bus.call(msg)
