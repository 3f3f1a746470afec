"""``Describe()`` calls per second on klpd's D-Bus service.

The service (FakeController, tests/dbus_helpers.py, the sample two-patch snapshot) runs
in its own process on a private dbus-daemon; the client here measures for a fixed time:

- sequential: one call after the other with klpctl's client (klpd.client.wire);
- pipelined: dbus-fast with ``--depth`` calls in flight (a fleet agent's best case).

    python bench/dbus_describe.py [--seconds 3] [--depth 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_helpers import spawn_fake_service, start_private_bus

from klpd.client.wire import Connection
from klpd.dbus import names


def sequential(address: str, seconds: float) -> tuple[float, int]:
    with Connection(address) as conn:
        size = len(conn.call(names.BUS_NAME, names.OBJECT_PATH, names.INTERFACE, "Describe")[0])
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            conn.call(names.BUS_NAME, names.OBJECT_PATH, names.INTERFACE, "Describe")
            calls += 1
    return calls / elapsed, size


async def pipelined(address: str, seconds: float, depth: int) -> float:
    bus = await MessageBus(bus_address=address).connect()
    calls = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal calls
        while time.perf_counter() < deadline:
            reply = await bus.call(
                Message(
                    destination=names.BUS_NAME,
                    path=names.OBJECT_PATH,
                    interface=names.INTERFACE,
                    member="Describe",
                )
            )
            assert reply is not None and reply.message_type is MessageType.METHOD_RETURN
            calls += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(depth)))
    elapsed = time.perf_counter() - start
    bus.disconnect()
    return calls / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--depth", type=int, default=16)
    a = parser.parse_args()
    bus = start_private_bus()
    service = spawn_fake_service(bus.address)
    try:
        rate, size = sequential(bus.address, a.seconds)
        piped = asyncio.run(pipelined(bus.address, a.seconds, a.depth))
    finally:
        service.kill()
        service.wait()
        bus.stop()
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; Describe() is {size} bytes")
    print(f"sequential (klpd.client.wire):        {rate:8.0f} calls/s ({1e6 / rate:.0f} us/call)")
    print(f"pipelined x{a.depth} (dbus-fast aio):     {piped:8.0f} calls/s")


if __name__ == "__main__":
    main()
