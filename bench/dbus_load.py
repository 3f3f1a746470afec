"""klpd's D-Bus API under load and abuse (issue 10): latencies, ratios and klpd's memory.

The real klpd on the simulated kernel, on a private dbus-daemon configured like the system
bus (klpd_sim.bus, the shipped policy) with one change, said in the output: the per-uid
connection limit (dbus-daemon's default, 256) is raised, because the 1,000 clients here are
one process of one uid. Run as root (the abuse phase runs a client as ``nobody``).

1. Load: ``--clients`` connections in this process; each round, every client makes one call
   at the same time, for ``Describe``, ``Get(State)`` and ``WaitConverged(60)`` (klpd is
   converged: it answers at once). The same calls, interleaved, go to a trivial dbus-fast
   service (bench/_dbus_baseline.py, the same reply sizes) and ``GetId`` to the bus daemon
   (the floor), so the figures are ratios. klpd's VmRSS/VmHWM before, during and after.
2. Abuse: klpd is kept converging (a task sleeps in ext4 while lpa is disabled). uid 65534
   (tests/dbus_flood.py) asks for 64 ``WaitConverged`` (16 are its maximum) and floods
   ``EnablePatch`` from 16 connections, once with no polkit on the bus and once with a
   polkit that takes ``--polkit-delay`` seconds to say no. Meanwhile root's
   ``klpctl status``, ``klpctl wait --timeout 0`` and in-process ``Describe`` and
   ``WaitConverged(0)`` are timed, against the same without the flood.

    sudo .venv/bin/python bench/dbus_load.py [--clients 1000] [--rounds 5] [-n 30]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import resource
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from _common import NOISE_NOTE, ROOT, bench_env, median, pct
from _dbus_abuse import abuse_phase
from _dbus_baseline import BASELINE_NAME, spawn_baseline
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from klpd_harness import KlpdProcess
from klpd_sim.bus import start_private_bus
from klpd_sim.harness import SimKernel

from klpd.dbus import names

# dbus-daemon's defaults are 256 connections per uid and 2,048 in all.
BUS_LIMITS = {"max_connections_per_user": 4096, "max_completed_connections": 4096}
BENCH_POLICY = """<busconfig>
  <!-- the baseline service (bench/_dbus_baseline.py) -->
  <policy user="root"><allow own="{baseline}"/></policy>
  <policy context="default"><allow send_destination="{baseline}"/></policy>
  <include>{shipped}</include>
</busconfig>
"""
SHIPPED = ROOT / "etc/dbus-1/system.d/io.github.Klpd1.conf"
CONNECT_BATCH = 50  # dbus-daemon allows 64 connections mid-authentication


def manager_message(destination: str, kind: str) -> Message:
    if kind == "Get(State)":
        return Message(
            destination=destination,
            path=names.OBJECT_PATH,
            interface="org.freedesktop.DBus.Properties",
            member="Get",
            signature="ss",
            body=[names.INTERFACE, "State"],
        )
    wait = kind.startswith("WaitConverged")
    return Message(
        destination=destination,
        path=names.OBJECT_PATH,
        interface=names.INTERFACE,
        member="WaitConverged" if wait else kind,
        signature="d" if wait else "",
        body=[60.0] if wait else [],
    )


def get_id() -> Message:
    return Message(
        destination="org.freedesktop.DBus",
        path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus",
        member="GetId",
    )


KINDS = ("Describe", "Get(State)", "WaitConverged(60)")


@dataclass
class Samples:
    seconds: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


async def connect_many(address: str, n: int) -> list[MessageBus]:
    buses: list[MessageBus] = []
    while len(buses) < n:
        batch = min(CONNECT_BATCH, n - len(buses))
        buses += await asyncio.gather(
            *(MessageBus(bus_address=address).connect() for _ in range(batch))
        )
    return buses


async def burst(buses: list[MessageBus], make: Callable[[], Message], into: Samples) -> None:
    """Every client makes one call at once; each call's latency goes ``into``."""

    async def one(bus: MessageBus) -> None:
        start = time.perf_counter()
        reply = await asyncio.wait_for(bus.call(make()), 120)
        into.seconds.append(time.perf_counter() - start)
        if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
            into.errors[f"{reply and reply.error_name}: {reply and reply.body}"[:200]] += 1

    await asyncio.gather(*(one(b) for b in buses))


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


async def load_phase(a: argparse.Namespace, address: str, k: KlpdProcess, tmp: Path) -> None:
    memory = {"idle": k.memory_kib()}
    start = time.perf_counter()
    buses = await connect_many(address, a.clients)
    connect_s = time.perf_counter() - start
    memory[f"{a.clients} connected"] = k.memory_kib()
    reply = await buses[0].call(manager_message(names.BUS_NAME, "Describe"))
    assert reply is not None and reply.message_type is MessageType.METHOD_RETURN, reply
    described = Path(tmp, "described.json")
    described.write_text(reply.body[0])
    baseline = spawn_baseline(address, described)
    samples = {(t, kind): Samples() for t in (names.BUS_NAME, BASELINE_NAME) for kind in KINDS}
    floor = Samples()
    try:
        for _ in range(a.rounds):
            for kind in KINDS:
                for target in (names.BUS_NAME, BASELINE_NAME):
                    make = functools.partial(manager_message, target, kind)
                    await burst(buses, make, samples[target, kind])
            await burst(buses, get_id, floor)
        memory["after the calls"] = k.memory_kib()
    finally:
        for bus in buses:
            bus.disconnect()
        assert baseline.stdin is not None
        baseline.stdin.close()
        baseline.wait()
    memory["all disconnected"] = k.memory_kib()

    print(
        f"\n1. {a.clients} concurrent clients (connections of one process; connected in "
        f"{connect_s:.1f} s), {a.rounds} rounds of one call each; latency in ms"
    )
    print(f"{'call':<20} {'klpd p50':>9} {'p99':>8} {'base p50':>9} {'p99':>8} ", end="")
    print(f"{'ratio p50':>10} {'p99':>6}")
    for kind in KINDS:
        mine, base = samples[names.BUS_NAME, kind], samples[BASELINE_NAME, kind]
        p50, p99 = median(mine.seconds), pct(mine.seconds, 99)
        b50, b99 = median(base.seconds), pct(base.seconds, 99)
        errors = f"  errors: klpd {dict(mine.errors)}, baseline {dict(base.errors)}"
        errors = errors if mine.errors or base.errors else ""
        print(
            f"{kind:<20} {p50 * 1e3:>9.1f} {p99 * 1e3:>8.1f} {b50 * 1e3:>9.1f} {b99 * 1e3:>8.1f} "
            f"{p50 / b50:>9.2f}x {p99 / b99:>5.2f}x{errors}"
        )
    f50, f99 = median(floor.seconds), pct(floor.seconds, 99)
    print(f"{'bus GetId (floor)':<20} {'':>9} {'':>8} {f50 * 1e3:>9.1f} {f99 * 1e3:>8.1f}")
    print("klpd memory (MiB):   " + ", ".join(f"{w} {mib(m['VmRSS'])}" for w, m in memory.items()))
    print(f"klpd peak RSS (VmHWM): {mib(memory['all disconnected']['VmHWM'])} MiB")


def raise_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-n", type=int, default=30, help="root's timed calls per condition")
    parser.add_argument("--polkit-delay", type=float, default=5.0)
    a = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the abuse phase runs a client as nobody (setpriv)")
    bench_env()
    raise_fd_limit()
    tmp = Path(tempfile.mkdtemp(prefix="klpd-bench-dbusload-"))
    policy = tmp / "bench-policy.conf"
    policy.write_text(BENCH_POLICY.format(baseline=BASELINE_NAME, shipped=SHIPPED))
    bus = start_private_bus(policy, BUS_LIMITS)
    print(
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; dbus-daemon limits raised: "
        + ", ".join(f"{k}={v}" for k, v in BUS_LIMITS.items())
    )
    try:
        with SimKernel(transition_ms=100) as sim:
            sim.modprobe("ext4")
            k = KlpdProcess(
                sim,
                tmp,
                {
                    "patches": {"desired": ["lpa"]},
                    "dbus": {"enabled": True, "bus": bus.address},
                    "logging": {"level": "info"},
                    "transition": {"on_stall": "wait"},
                },
            )
            try:
                k.start()
                k.wait_state("converged", 60)
                asyncio.run(load_phase(a, bus.address, k, tmp))
                asyncio.run(abuse_phase(a, bus.address, k, sim))
            finally:
                k.close()
    finally:
        bus.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(NOISE_NOTE.format(os.cpu_count()))


if __name__ == "__main__":
    main()
