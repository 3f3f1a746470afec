"""A fake polkit authority for the private test bus (``start_fake_polkit``).

No ``from __future__ import annotations`` here, as in klpd.dbus.service: dbus-fast 2.x
(Debian 13's) reads a member's signature from the annotation's value.
"""

import asyncio
import subprocess
import sys
from typing import TYPE_CHECKING

from dbus_fast.aio import MessageBus

# dbus-fast 2.x names them method/signal; 3.x+ keeps those as aliases of dbus_method/dbus_signal.
from dbus_fast.service import ServiceInterface
from dbus_fast.service import method as dbus_method

from klpd.dbus.signatures import DBusStr, DBusUInt32

if TYPE_CHECKING:
    from typing import Annotated

    from dbus_fast import Variant
    from dbus_fast.annotations import DBusSignature

    PolkitResult = Annotated[tuple[bool, bool, dict[str, str]], DBusSignature("(bba{ss})")]
    Subject = Annotated[tuple[str, dict[str, Variant]], DBusSignature("(sa{sv})")]
    Details = Annotated[dict[str, str], DBusSignature("a{ss}")]
else:
    PolkitResult = "(bba{ss})"
    Subject = "(sa{sv})"
    Details = "a{ss}"


class FakePolkit(ServiceInterface):
    """``org.freedesktop.PolicyKit1.Authority.CheckAuthorization`` with a set verdict.

    A slow polkit: clear :attr:`answering` and every check waits (counted in
    :attr:`pending`) until it is set again; ``delay`` adds seconds to every answer."""

    def __init__(self, allow: bool, delay: float = 0.0) -> None:
        super().__init__("org.freedesktop.PolicyKit1.Authority")
        self.allow = allow
        self.delay = delay
        self.checks: list[tuple[str, str, int]] = []
        self.answering = asyncio.Event()
        self.answering.set()
        self.pending = 0

    @dbus_method()
    async def CheckAuthorization(
        self,
        subject: Subject,
        action_id: DBusStr,
        details: Details,
        flags: DBusUInt32,
        cancellation_id: DBusStr,
    ) -> PolkitResult:
        kind, props = subject
        self.checks.append((f"{kind}:{props['name'].value}", action_id, flags))
        self.pending += 1
        try:
            await self.answering.wait()
            if self.delay:
                await asyncio.sleep(self.delay)  # a slow authority, not a synchronisation
        finally:
            self.pending -= 1
        return (self.allow, False, {})


async def start_fake_polkit(
    address: str, allow: bool, delay: float = 0.0
) -> tuple[MessageBus, FakePolkit]:
    bus = await MessageBus(bus_address=address).connect()
    authority = FakePolkit(allow, delay)
    bus.export("/org/freedesktop/PolicyKit1/Authority", authority)
    await bus.request_name("org.freedesktop.PolicyKit1")
    return bus, authority


# --- in its own process (the benchmarks) --------------------------------------------------


async def _serve(address: str, allow: bool, delay: float) -> None:
    bus, _ = await start_fake_polkit(address, allow, delay)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    bus.disconnect()


def spawn_fake_polkit(address: str, allow: bool, delay: float = 0.0) -> subprocess.Popen[bytes]:
    """A fake polkit authority on ``address`` in a child process (as root: only root may own
    its name on the private bus); returns once it is on the bus. Close its stdin to stop it."""
    argv = [sys.executable, __file__, address, "allow" if allow else "deny", str(delay)]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        proc.kill()
        raise RuntimeError(f"the fake polkit did not start (exit {proc.wait()})")
    return proc


if __name__ == "__main__":
    asyncio.run(_serve(sys.argv[1], sys.argv[2] == "allow", float(sys.argv[3])))
