"""The real-daemon soak: ``klpd`` as a process on the simulated kernel (``klpd-sim run``, its
sysfs a directory, its uevents real netlink messages), ``klpctl`` over a private
``dbus-daemon``, driven by random steps from a seed. SIGKILLs, netlink overflows and bus
restarts are real; the invariants (:mod:`soakcheck`) are checked against the sim's sysfs
files at every quiescent point.

Faults klpd meets through its tools: its ``modprobe``/``rmmod`` are wrappers around the
sim's (:data:`WRAPPER`) that read one-shot fault files the steps leave in a directory: fail
or hang the next modprobe of a module, start another tool's transition first (klpd's EBUSY),
SIGKILL klpd (their parent) right after the n-th call. The sim itself SIGKILLs klpd right
after its n-th write to a livepatch's ``enabled``/``force`` took effect.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from dbus_helpers import start_private_bus
from klpd_harness import KlpdProcess, loaded, wait_for
from klpd_sim.harness import SimKernel
from klpd_sim.uevent import send_module_uevent
from soakcheck import claims_from_describe, log_violations, read_sysfs, violations
from soakspec import (
    FOREIGN,
    TARGETS,
    Step,
    catalog_dir,
    draw_steps,
    install_foreign,
    install_patch,
    machine_draws,
)

SETTLED_GRACE = 3.0  # s: an event still in flight when klpd said settled (it reads in ms)
KLPCTL = str(Path(sys.executable).parent / "klpctl")
KINDS = {
    "load": 14, "unload": 10, "install": 5, "uninstall": 3, "reload": 4, "enable": 3,
    "disable": 3, "fail": 3, "hang": 1, "stall": 3, "unstall": 3, "foreign": 2,
    "foreign_off": 2, "race": 2, "overflow": 1.5, "kill": 1.5, "kill_write": 1, "sigkill": 0.75,
    "bus_down": 1, "bus_up": 1, "quiesce": 4,
}  # fmt: skip
FAULTS = {
    "fail": "modprobe-fail", "hang": "modprobe-hang", "stall": "stall", "race": "ebusy-race",
    "foreign": "foreign-transition", "overflow": "netlink-overflow", "bus_down": "bus-down",
    "kill": "sigkill-armed-tool", "kill_write": "sigkill-armed-write", "sigkill": "sigkill-now",
}  # fmt: skip
WRAPPER = """#!/bin/sh
# klpd's {tool} in the daemon soak: the sim's, with the one-shot faults armed in $F
F={faults}
for m; do :; done
echo "{tool} $m" >> "$F/calls"
if rm "$F/race" 2>/dev/null; then {cli} modprobe {foreign} >/dev/null 2>&1; fi
if [ {tool} = modprobe ] && rm "$F/fail/$m" 2>/dev/null; then
    echo "modprobe: ERROR: could not insert '$m': Invalid argument" >&2; exit 1
fi
if [ {tool} = modprobe ] && rm "$F/hang/$m" 2>/dev/null; then exec sleep 30; fi
{cli} {tool} "$@"; rc=$?
if n=$(cat "$F/kill" 2>/dev/null); then
    if [ "$n" -le 1 ]; then rm -f "$F/kill"; kill -9 $PPID; else echo $((n-1)) > "$F/kill"; fi
fi
exit $rc
"""


def generate(seed: int, n: int) -> list[Step]:
    """``n`` random steps after the configuration, ending with a quiescent check."""
    targets = sorted(TARGETS)
    draws = {**machine_draws(), "kill_write": lambda r: r.randint(1, 4)}
    return draw_steps(seed, n, KINDS, {**draws, "overflow": lambda r: r.choice(targets)})


class InvariantError(AssertionError):
    pass


@dataclass
class Figures:
    steps: int = 0
    quiescent_checks: int = 0
    invariant_checks: int = 0
    kills: int = 0  # SIGKILLs of klpd (then a restart)
    kills_armed: int = 0  # of which armed: after a modprobe/rmmod (wrapper), a sysfs write (sim)
    bus_restarts: int = 0
    klpctl_calls: int = 0
    transitions: int = 0  # livepatch transitions the sim started (its log)
    peak_rss_kb: int = 0  # klpd's VmHWM, the highest seen
    faults: Counter[str] = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per step kind


class DaemonWorld:
    """A simulated kernel, a private bus, klpd and klpctl; the steps and the checks."""

    def __init__(self, sim: SimKernel, workdir: Path, figures: Figures) -> None:
        self.sim, self.fig = sim, figures
        self.moddir = sim.module_dir
        install_foreign(self.moddir)
        catalog_dir(self.moddir).mkdir(exist_ok=True)
        self.faults = workdir / "faults"
        for d in ("fail", "hang"):
            (self.faults / d).mkdir(parents=True, exist_ok=True)
        tools, cli = {}, " ".join(sim.cli)
        for tool in ("modprobe", "rmmod"):
            w = workdir / f"{tool}-soak"
            w.write_text(WRAPPER.format(tool=tool, faults=self.faults, cli=cli, foreign=FOREIGN))
            w.chmod(0o755)
            tools[tool] = [str(w)]
        self.bus = start_private_bus()
        self.address = f"unix:path={self.bus.directory}/bus"  # no guid: it changes
        self.bus_up = True
        self.klpd = KlpdProcess(
            sim,
            workdir,
            {
                "kernel": tools,
                "catalog": {"directories": [str(catalog_dir(self.moddir))]},
                "dbus": {"enabled": True, "bus": self.address},
                "events": {"receive_buffer": 4096},
                "transition": {"stall_timeout": 0.5, "revert_timeout": 2.0},
                "retry": {"ebusy_backoff": 0.01, "ebusy_backoff_max": 0.1, "modprobe_timeout": 1},
            },
        )
        self._offsets = {"sim": 0, "klpd": 0}
        self._killing = False

    def close(self) -> None:
        self.klpd.close()
        self.bus.stop()

    # --- klpd's life, as systemd would see it ------------------------------------------

    def supervise(self) -> None:
        """Restart klpd if it died (Restart=); only a SIGKILL of ours is a way to die."""
        proc = self.klpd.proc
        if proc is None:
            return
        if proc.poll() is None:
            self._sample_rss(proc.pid)
            return
        if proc.returncode != -signal.SIGKILL:
            raise InvariantError(f"klpd exited with {proc.returncode}:\n{self.klpd.log()[-3000:]}")
        self.fig.kills += 1
        self.fig.kills_armed += not self._killing
        self.klpd.proc = None
        self.klpd.start(wait_ready=False)

    def _sample_rss(self, pid: int) -> None:
        with contextlib.suppress(OSError, StopIteration):  # it died meanwhile
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
            hwm = next(int(x.split()[1]) for x in lines if x.startswith("VmHWM:"))
            self.fig.peak_rss_kb = max(self.fig.peak_rss_kb, hwm)

    def klpctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``klpctl ARGS`` on the soak's bus; klpd is restarted meanwhile if it dies (a
        ``klpctl wait`` outlives a restart: it waits for the name to come back)."""
        self.fig.klpctl_calls += 1
        argv = [KLPCTL, "--bus", self.address, *args]
        env = {**os.environ, "LANG": "C.UTF-8"}
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)

            def done() -> bool:
                self.supervise()
                return p.poll() is not None

            try:
                wait_for(done, timeout, f"klpctl {' '.join(args)}", interval=0.02)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(argv, p.returncode, out.read(), err.read())

    # --- steps ---------------------------------------------------------------------------

    def step(self, s: Step) -> None:
        started = time.monotonic()
        try:
            self._step(s)
        finally:
            self.fig.seconds[s[0]] = self.fig.seconds.get(s[0], 0.0) + time.monotonic() - started

    def _step(self, s: Step) -> None:
        self.fig.steps += 1
        self.supervise()
        kind, args = s[0], s[1:]
        sim = self.sim
        if kind in FAULTS and (kind != "bus_down" or self.bus_up):
            self.fig.faults[FAULTS[kind]] += 1
        if kind == "config":
            policy = {"policy": {"on_object_removed": args[0]}}
            self.klpd.configure({**policy, "transition": {"on_stall": args[1]}})
            self.klpd.start()
        elif kind == "load":
            sim.modprobe(args[0], check=False)
        elif kind == "unload":
            sim.rmmod(args[0], check=False)
        elif kind == "install":
            install_patch(self.moddir, args[0])
        elif kind == "uninstall":
            if not any(m.startswith(args[0] + "__") for m in loaded(sim)):
                for f in catalog_dir(self.moddir).glob(f"{args[0]}__*"):
                    f.unlink()
        elif kind in ("reload", "enable", "disable"):
            self.operator(kind, *args)
        elif kind in ("fail", "hang"):
            (self.faults / kind / args[0]).touch()
        elif kind == "stall":
            sim.stall(args[0], "soak-sleeper")
        elif kind == "unstall":
            sim.unstall(args[0])
        elif kind == "foreign":
            sim.modprobe(FOREIGN, check=False)
        elif kind == "foreign_off":
            self.foreign_off()
        elif kind == "race":
            (self.faults / "race").touch()
        elif kind == "overflow":
            self.overflow(args[0])
        elif kind == "kill":
            (self.faults / "kill").write_text(f"{args[0]}\n")
        elif kind == "kill_write":
            if self.klpd.proc is not None:
                sim.kill_after_writes(self.klpd.proc.pid, args[0])
        elif kind == "sigkill":
            self.sigkill()
        elif kind == "bus_down" and self.bus_up:
            self.bus.crash()
            self.bus_up = False
        elif kind == "bus_up":
            self.relaunch_bus()
        elif kind == "quiesce":
            self.quiesce()

    def relaunch_bus(self) -> None:
        if not self.bus_up:
            self.bus.relaunch()
            self.bus_up = True
            self.fig.bus_restarts += 1

    def operator(self, verb: str, *args: str) -> None:
        """``klpctl VERB``: refused at once while the bus is down; else retried while klpd
        is (re)starting or reconnecting, as an operator would."""
        deadline = time.monotonic() + 60
        while True:
            r = self.klpctl(verb, *args)
            if not self.bus_up:
                if r.returncode != 4:
                    raise InvariantError(f"klpctl {verb} without a bus: {r.returncode} {r.stderr}")
                return
            if r.returncode == 0 or (r.returncode == 6 and "no installed patch" in r.stderr):
                return
            if r.returncode != 4 or time.monotonic() > deadline:
                raise InvariantError(f"klpctl {verb} {args}: exit {r.returncode}: {r.stderr}")
            self.supervise()  # klpd died under the call (a SIGKILL after a tool): restart

    def sigkill(self) -> None:
        proc = self.klpd.proc
        if proc is not None and proc.poll() is None:
            self._sample_rss(proc.pid)
            proc.kill()
            proc.wait()
        self._killing = True
        try:
            self.supervise()
        finally:
            self._killing = False

    def overflow(self, target: str) -> None:
        """klpd stopped while a burst fills its tiny receive buffer; the event that matters
        (``target`` comes or goes) is lost in it."""
        proc = self.klpd.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGSTOP)
        try:
            for i in range(100):
                send_module_uevent("add" if i % 2 else "remove", f"klpd_noise_{i % 7}", 60_000 + i)
            if target in loaded(self.sim):
                self.sim.rmmod(target, check=False)
            else:
                self.sim.modprobe(target, check=False)
        finally:
            proc.send_signal(signal.SIGCONT)

    def foreign_off(self) -> None:
        """Another tool retires its patch: disable (if it can now), remove (if it can)."""
        with contextlib.suppress(OSError):  # it went away meanwhile
            if self.sim.read(f"sys/kernel/livepatch/{FOREIGN}/enabled") == "1":
                self.sim.write_attr(FOREIGN, "enabled", "0")
        self.sim.rmmod(FOREIGN, check=False)

    # --- quiescent points ------------------------------------------------------------------

    def quiesce(self) -> None:
        """Take every fault away, let everything settle as an operator would, then check."""
        self.relaunch_bus()
        for f in self.faults.rglob("*"):  # an armed SIGKILL stays: a restart converges too
            if f.is_file() and f.name not in ("calls", "kill"):
                f.unlink()
        for obj in {t["obj"] for t in self.sim.status()["tasks"]}:
            self.sim.unstall(obj)

        def foreign_gone() -> bool:
            self.foreign_off()
            return FOREIGN not in loaded(self.sim)

        wait_for(foreign_gone, 60, "the other tool's patch to go", interval=0.1)
        self.supervise()
        self.fig.quiescent_checks += 1
        last: list[str] = []
        settled_since: float | None = None

        def holds() -> bool:
            """True once klpd settled and every invariant holds; raises if klpd stays
            settled with an invariant broken longer than an event in flight could explain."""
            nonlocal last, settled_since
            settled, last = self._check_once()
            if not settled or not last:
                settled_since = None
                return settled
            settled_since = settled_since or time.monotonic()
            if time.monotonic() - settled_since > SETTLED_GRACE:
                raise InvariantError("klpd settled, yet: " + "; ".join(last))
            return False

        try:
            wait_for(holds, 60, "klpd to settle", interval=0.1)
        except TimeoutError:
            raise InvariantError("klpd did not settle in 60 s: " + "; ".join(last)) from None
        self._check_logs()

    def _check_once(self) -> tuple[bool, list[str]]:
        """Whether klpd settled, and the invariants it breaks."""
        r = self.klpctl("wait", "--timeout", "30")
        if r.returncode not in (0, 2):
            return False, [f"klpctl wait: exit {r.returncode}: {r.stderr.strip()}"]
        try:
            facts = read_sysfs(self.sim.sys)
        except FileNotFoundError as e:
            return False, [f"sysfs changed while read: {e}"]
        r = self.klpctl("status", "--json")
        if r.returncode not in (0, 2):
            return False, [f"klpctl status: exit {r.returncode}: {r.stderr.strip()}"]
        snap = json.loads(r.stdout)
        if snap["state"] not in ("converged", "degraded") or snap["pending"]:
            return False, [f"klpd not settled: {snap['state']}, pending {snap['pending']}"]
        remove = self.klpd.sections["policy"]["on_object_removed"] == "remove"
        errors, checks = violations(facts, claims_from_describe(snap, remove))
        self.fig.invariant_checks += checks + 1
        if any(m.startswith("lprep__") for m in facts.modules):
            errors.append("an atomic-replace module is loaded")
        return True, errors

    def _check_logs(self) -> None:
        """Since the last quiescent point: klpd never asked for a replace module, logged no
        traceback, and the sim never ran two transitions at once."""
        self.fig.invariant_checks += 3
        calls = (self.faults / "calls").read_text() if (self.faults / "calls").exists() else ""
        klpd_log, sim_log = (
            self._new_text("klpd", self.klpd.log_path),
            self._new_text("sim", self.sim.log_path),
        )
        self.fig.transitions += sim_log.count(" transition\n")  # "starting ... transition"
        errors = log_violations(calls, klpd_log, sim_log)
        if errors:
            raise InvariantError("; ".join(errors))

    def _new_text(self, which: str, path: Path) -> str:
        with path.open("rb") as f:
            f.seek(self._offsets[which])
            data = f.read()
        self._offsets[which] += len(data)
        return data.decode(errors="replace")
