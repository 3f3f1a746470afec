"""The baseline of ``bench/dbus_load.py``: a trivial dbus-fast service with klpd's members.

``Describe`` returns a fixed text (the bench passes klpd's own, so the replies are the same
size), ``State`` is a constant, ``WaitConverged`` answers ``true`` at once. Its writer
waits when its socket is full, as klpd's does (klpd.dbus.transport): without that, plain
dbus-fast drops its bus connection in the first burst. It owns
``io.github.KlpdBench`` (the bench's bus policy lets root own it) and serves until EOF on
stdin:

    python bench/_dbus_baseline.py ADDRESS DESCRIBE_FILE

No ``from __future__ import annotations``: see klpd.dbus.signatures.
"""

import asyncio
import subprocess
import sys
from pathlib import Path

from dbus_fast.aio import MessageBus
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_property
from dbus_fast.service import method as dbus_method

from klpd.dbus import names
from klpd.dbus.signatures import DBusBool, DBusDouble, DBusStr
from klpd.dbus.transport import wait_when_the_socket_is_full

BASELINE_NAME = "io.github.KlpdBench"


class Baseline(ServiceInterface):
    def __init__(self, described: str) -> None:
        super().__init__(names.INTERFACE)
        self._described = described

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> DBusStr:
        return "converged"

    @dbus_method()
    def Describe(self) -> DBusStr:
        return self._described

    @dbus_method()
    def WaitConverged(self, timeout: DBusDouble) -> DBusBool:
        return True


async def serve(address: str, described: str) -> None:
    bus = await MessageBus(bus_address=address).connect()
    wait_when_the_socket_is_full(bus)  # as klpd: plain dbus-fast drops the bus under load
    bus.export(names.OBJECT_PATH, Baseline(described))
    await bus.request_name(BASELINE_NAME)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    bus.disconnect()


def spawn_baseline(address: str, describe_file: Path) -> subprocess.Popen[bytes]:
    """The baseline service in a child process; returns once it owns its name."""
    argv = [sys.executable, __file__, address, str(describe_file)]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        proc.kill()
        raise RuntimeError(f"the baseline service did not start (exit {proc.wait()})")
    return proc


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], Path(sys.argv[2]).read_text()))
