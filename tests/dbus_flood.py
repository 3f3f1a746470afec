"""A D-Bus client that floods klpd, run as its own process (as ``nobody`` under setpriv).

    python tests/dbus_flood.py ADDRESS --connections 8 --calls 100 --member EnablePatch \\
        --signature s --arg lpa [--waits 64] [--summary]

It opens ``--connections`` bus connections, sends ``--waits`` ``WaitConverged(3600)`` calls
round-robin over them and leaves them pending, then each connection calls ``--member`` one
call after the other: ``--calls`` times, or with ``--calls 0`` until EOF on stdin. Each
reply is printed as a line, ``ok`` or ``error <name>`` (``wait ok`` / ``wait error <name>``
for the waits); with ``--summary`` one JSON line once connected (``{"connected": N}``), then
nothing until the calls are done, then one JSON object counting the lines (and
``seconds``: how long the calls took). It exits at EOF
on stdin, keeping its connections (and pending calls) until then; without ``--summary`` its
calls still pending are dropped then. The tests
(tests/e2e/test_dbus_abuse.py) and ``bench/dbus_load.py`` share it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

THIS = Path(__file__).resolve()
BUS_NAME, OBJECT_PATH, INTERFACE = "io.github.Klpd1", "/io/github/Klpd1", "io.github.Klpd1.Manager"


def flood_argv(
    address: str,
    member: str,
    signature: str = "",
    arg: str = "",
    *,
    connections: int = 1,
    calls: int = 1,
    waits: int = 0,
    summary: bool = False,
) -> list[str]:
    """The argv of this script (run it under ``AS_NOBODY`` for an unprivileged flood)."""
    argv = [sys.executable, str(THIS), address, "--member", member, "--signature", signature]
    argv += ["--arg", arg, "--connections", str(connections), "--calls", str(calls)]
    argv += ["--waits", str(waits)]
    return [*argv, "--summary"] if summary else argv


def outcome(reply: Message | None) -> str:
    if reply is None:
        return "error none"
    if reply.message_type is MessageType.ERROR:
        return f"error {reply.error_name}"
    return "ok"


def manager_call(member: str, signature: str, body: list[Any]) -> Message:
    return Message(
        destination=BUS_NAME,
        path=OBJECT_PATH,
        interface=INTERFACE,
        member=member,
        signature=signature,
        body=body,
    )


async def flood(a: argparse.Namespace) -> None:
    counts: Counter[str] = Counter()
    eof = asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    def report(line: str) -> None:
        if a.summary:
            counts[line] += 1
        else:
            print(line, flush=True)

    buses = [await MessageBus(bus_address=a.address).connect() for _ in range(a.connections)]
    body: list[Any] = [float(a.arg) if a.signature == "d" else a.arg] if a.signature else []
    limit: int = a.calls

    async def wait(bus: MessageBus) -> None:
        report("wait " + outcome(await bus.call(manager_call("WaitConverged", "d", [3600.0]))))

    async def calls(bus: MessageBus, more: Callable[[int], bool]) -> None:
        sent = 0
        while more(sent):
            report(outcome(await bus.call(manager_call(a.member, a.signature, body))))
            sent += 1

    def more(sent: int) -> bool:
        return sent < limit if limit else not eof.done()

    waits = [asyncio.ensure_future(wait(buses[i % len(buses)])) for i in range(a.waits)]
    if a.summary:  # the caller may start measuring
        print(json.dumps({"connected": len(buses)}), flush=True)
    start = time.monotonic()
    work = asyncio.gather(*(calls(bus, more) for bus in buses))
    if a.summary:  # the calls end at EOF: count what they got
        await work
        print(json.dumps({**counts, "seconds": round(time.monotonic() - start, 3)}), flush=True)
        await eof
    else:  # EOF ends it all, calls still waiting for a reply included
        await eof
        work.cancel()
    for task in waits:
        task.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address")
    parser.add_argument("--member", required=True)
    parser.add_argument("--signature", default="")
    parser.add_argument("--arg", default="")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--waits", type=int, default=0)
    parser.add_argument("--summary", action="store_true")
    asyncio.run(flood(parser.parse_args()))


if __name__ == "__main__":
    main()
