"""Phase 2 of ``bench/dbus_load.py``: root's latency while uid 65534 abuses the API.

klpd is kept converging (a task sleeps in ext4 while lpa is disabled, ``on_stall = "wait"``), so
``WaitConverged`` calls are held. Three conditions, each timing root's ``klpctl status``,
``klpctl wait --timeout 0`` and in-process ``Describe`` and ``WaitConverged(0)``:

- quiet: nobody else calls;
- flood, no polkit: uid 65534 (tests/dbus_flood.py under setpriv) asks for 64
  ``WaitConverged`` from 16 connections (16 are held, its maximum) and calls ``EnablePatch``
  from each as fast as klpd answers; klpd cannot ask polkit and refuses;
- flood, slow polkit: the same with a polkit that says no after ``--polkit-delay`` s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from _common import median, pct
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from dbus_flood import flood_argv
from dbus_helpers import AS_NOBODY
from fake_polkit import spawn_fake_polkit
from klpd_harness import KlpdProcess
from klpd_sim.harness import SimKernel, wait_for

from klpd.dbus import names

KLPCTL = str(Path(sys.executable).parent / "klpctl")
FLOOD_CONNECTIONS = 16
FLOOD_WAITS = 64
TIMED = ("klpctl status", "klpctl wait --timeout 0", "Describe (dbus-fast)", "WaitConverged(0)")


def manager(member: str, signature: str = "", *body: Any) -> Message:
    return Message(
        destination=names.BUS_NAME,
        path=names.OBJECT_PATH,
        interface=names.INTERFACE,
        member=member,
        signature=signature,
        body=list(body),
    )


async def timed_klpctl(address: str, *args: str) -> float:
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        KLPCTL,
        "--bus",
        address,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 1):  # 1: converging (status) / not converged yet (wait)
        raise SystemExit(f"root's klpctl {' '.join(args)} exited {proc.returncode}: {err!r}")
    return elapsed


async def timed_call(bus: MessageBus, msg: Message) -> float:
    start = time.perf_counter()
    reply = await asyncio.wait_for(bus.call(msg), 120)
    elapsed = time.perf_counter() - start
    if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
        raise SystemExit(f"root's {msg.member} was refused: {reply and reply.body}")
    return elapsed


async def time_root(address: str, root: MessageBus, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {what: [] for what in TIMED}
    for _ in range(n):
        out["klpctl status"].append(await timed_klpctl(address, "status"))
        out["klpctl wait --timeout 0"].append(await timed_klpctl(address, "wait", "--timeout", "0"))
        for _ in range(5):
            out["Describe (dbus-fast)"].append(await timed_call(root, manager("Describe")))
            out["WaitConverged(0)"].append(
                await timed_call(root, manager("WaitConverged", "d", 0.0))
            )
    return out


class NobodyFlood:
    """tests/dbus_flood.py as uid 65534, in summary mode, until stopped."""

    async def start(self, address: str) -> None:
        argv = flood_argv(
            address,
            "EnablePatch",
            "s",
            "lpa",
            connections=FLOOD_CONNECTIONS,
            calls=0,
            waits=FLOOD_WAITS,
            summary=True,
        )
        self.proc = await asyncio.create_subprocess_exec(
            *AS_NOBODY, *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        assert "connected" in await self._line()

    async def _line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 300)
        if not line:
            raise SystemExit("the flood (uid 65534) exited early")
        result: dict[str, Any] = json.loads(line)
        return result

    async def stop(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        summary = await self._line()
        await self.proc.wait()
        return summary


def describe_flood(summary: dict[str, Any]) -> str:
    seconds = summary.pop("seconds")
    calls = sum(v for k, v in summary.items() if not k.startswith("wait"))
    short = {
        k.replace("io.github.Klpd1.Error.", "").replace("error ", ""): v for k, v in summary.items()
    }
    return f"{calls} EnablePatch in {seconds:.1f} s ({calls / seconds:.0f}/s): {short}"


async def abuse_phase(a: argparse.Namespace, address: str, k: KlpdProcess, sim: SimKernel) -> None:
    root = await MessageBus(bus_address=address).connect()
    # lpa__ext4's transition to unpatched waits for a task asleep in ext4
    sim.stall("ext4", comm="bench-sleeper")
    reply = await root.call(manager("DisablePatch", "s", "lpa"))
    assert reply is not None and reply.message_type is MessageType.METHOD_RETURN, reply
    wait_for(lambda: "(stalled)" in " ".join(k.statuses()), 60, "lpa__ext4's transition to stall")
    results = {"quiet": await time_root(address, root, a.n)}
    floods: dict[str, str] = {}
    memory = {"quiet": k.memory_kib()}
    for condition, delay in (("no polkit", None), (f"polkit {a.polkit_delay:g} s", a.polkit_delay)):
        polkit = None if delay is None else spawn_fake_polkit(address, allow=False, delay=delay)
        flood = NobodyFlood()
        try:
            await flood.start(address)
            results[condition] = await time_root(address, root, a.n)
            floods[condition] = describe_flood(await flood.stop())
        finally:
            if polkit is not None:
                assert polkit.stdin is not None
                polkit.stdin.close()
                polkit.wait()
        memory[condition] = k.memory_kib()
    root.disconnect()
    sim.unstall("ext4")

    print(
        "\n2. root while uid 65534 holds its WaitConverged maximum and floods EnablePatch "
        f"from {FLOOD_CONNECTIONS} connections; {a.n} runs per command (x5 for the calls), ms"
    )
    header = f"{'root':<26}" + "".join(f"{c + ' p50':>18} {'p99':>8}" for c in results)
    print(header)
    for what in TIMED:
        quiet = median(results["quiet"][what])
        row = f"{what:<26}"
        for condition, r in results.items():
            p50, p99 = median(r[what]), pct(r[what], 99)
            ratio = f" ({p50 / quiet:.1f}x)" if condition != "quiet" else ""
            row += f"{p50 * 1e3:>11.1f}{ratio:>7} {p99 * 1e3:>8.1f}"
        print(row)
    for condition, text in floods.items():
        print(f"flood, {condition}: {text}")
    flooded = [r for c, r in results.items() if c != "quiet"]
    worst_ctl = max(pct(r[w], 99) for r in flooded for w in TIMED[:2])
    worst_call = max(pct(r[w], 99) for r in flooded for w in TIMED[2:])
    answered = sum(len(v) for r in results.values() for v in r.values())
    print(
        f"root: all {answered} commands and calls answered, none refused; worst p99 under a "
        f"flood: klpctl {worst_ctl * 1e3:.0f} ms, in-process call {worst_call * 1e3:.0f} ms"
    )
    print(
        "klpd RSS (MiB): "
        + ", ".join(f"{c} {m['VmRSS'] / 1024:.1f}" for c, m in memory.items())
        + f"; peak {max(m['VmHWM'] for m in memory.values()) / 1024:.1f}"
    )
