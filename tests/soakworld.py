"""The in-process soak: random steps against the real orchestrator on the simulated
kernel's model (:mod:`simport`), invariants checked against the model (what sysfs shows) at
every quiescent point, failures shrunk to a short replayable sequence.

A run is a list of steps, each a small tuple, generated from a seed; the same list replays
the same run (virtual time, one event loop, no processes). See tests/soak/README in the
README's "Soak" section for the step kinds and the invariants.
"""

from __future__ import annotations

import asyncio
import shutil
import time as real_time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from klpd_sim.kernel import Kernel
from klpd_sim.kmod import modprobe as sim_modprobe
from klpd_sim.kmod import rmmod as sim_rmmod
from klpd_sim.spec import init_root
from simport import Killed, SimPort, VirtualClock
from soakcheck import KernelFacts, KlpdClaims, ModuleClaim, violations
from soakspec import (
    FOREIGN,
    RELEASE,
    Step,
    catalog_dir,
    draw_steps,
    install_foreign,
    install_patch,
    machine_draws,
    series_of,
    soak_spec,
)

from klpd.core.status import ControlError, ModuleStatus
from klpd.service import transition as transition_mod
from klpd.service.config import Config
from klpd.service.controls import Control
from klpd.service.orchestrator import Orchestrator


def generate(seed: int, n: int) -> list[Step]:
    """``n`` random steps (a quiescent check every ~25) ending with a quiescent check."""
    kinds = {
        "load": 12, "unload": 8, "install": 5, "uninstall": 3, "reload": 3, "enable": 3,
        "disable": 3, "fail": 3, "hang": 1, "stall": 3, "unstall": 3, "foreign": 2,
        "foreign_off": 2, "race": 2, "overflow": 1, "kill": 3, "wait": 10, "quiesce": 4,
    }  # fmt: skip
    draws = {
        **machine_draws(),
        "wait": lambda r: r.choice([0, 0.001, 0.01, 0.05, 0.3]),
        "overflow": lambda r: r.randint(1, 6),
    }
    return draw_steps(seed, n, kinds, draws)


class InvariantError(AssertionError):
    def __init__(self, message: str, at: int | None = None) -> None:
        super().__init__(message)
        self.at = at  # the index of the step it happened during, when known


@dataclass
class Figures:
    steps: int = 0
    quiescent_checks: int = 0
    invariant_checks: int = 0
    upgrade_samples: int = 0
    restarts: int = 0
    faults: Counter[str] = field(default_factory=Counter)


class World:
    """One simulated machine, klpd's orchestrator on it, and the checks."""

    def __init__(self, root: Path, figures: Figures) -> None:
        self.root = root
        self.fig = figures
        init_root(root, soak_spec())
        self.moddir = root / "lib/modules" / RELEASE
        install_foreign(self.moddir)
        catalog_dir(self.moddir).mkdir()
        loop = asyncio.get_running_loop()
        self.kernel = Kernel(RELEASE, 0.02, loop, self._uevent, self._changed, fake_signal_s=1e9)
        self.port = SimPort(self.kernel, self.moddir, [root / "run/modprobe.d"])
        self.violations: list[str] = []
        self.first_violation = 1 << 62  # the step during which the first violation happened
        self._lose_events = 0
        self.overflowed = False
        self.killed_since_check = False
        self.orch: Orchestrator | None = None
        self.control: Control | None = None
        self.task: asyncio.Task[None] | None = None
        self.config = Config()
        self._covered: dict[tuple[str, str], bool] = {}
        self._wanted: set[tuple[str, str]] = set()  # as klpd desired when last alive
        self._resyncs_at_check = 0
        start = self.kernel._start_transition

        def one_at_a_time(patch: Any, target: int) -> None:
            if self.kernel.transition is not None:
                self.violations.append(f"two transitions: {patch.module} during one")
            start(patch, target)

        self.kernel._start_transition = one_at_a_time  # type: ignore[method-assign]  # a probe

    # --- klpd's life ------------------------------------------------------------------

    def configure(self, policy: str, on_stall: str) -> None:
        self.config = Config().with_overrides(
            {
                "kernel": {"release": RELEASE},
                "catalog": {"directories": [str(catalog_dir(self.moddir))]},
                "state": {"directory": str(self.root / "state")},
                "policy": {"on_object_removed": policy},
                "transition": {
                    "poll_interval": 0.01,
                    "stall_timeout": 0.5,
                    "on_stall": on_stall,
                    "revert_timeout": 2.0,
                },
                "retry": {"ebusy_backoff": 0.01, "ebusy_backoff_max": 0.1, "modprobe_timeout": 5},
            }
        )

    def start(self) -> None:
        self.orch = Orchestrator(self.config, port=self.port)
        self.control = Control(self.orch)
        self.orch.rescan()
        self.task = asyncio.get_running_loop().create_task(self._run(self.orch))

    async def _run(self, orch: Orchestrator) -> None:
        try:
            await orch.run()
        except Killed:
            self.fig.faults["sigkill"] += 1
            if self.orch is orch:
                self.orch, self.control = None, None

    async def stop(self) -> None:
        if self.orch is not None:
            self.orch.stop()
        if self.task is not None:
            await self.task

    def _alive(self) -> Orchestrator:
        if self.orch is None:  # the service manager restarts it
            self.fig.restarts += 1
            self.killed_since_check = True
            self.start()
        assert self.orch is not None
        return self.orch

    # --- what the kernel tells klpd ------------------------------------------------------

    def _uevent(self, action: str, module: str, seqnum: int) -> None:
        if self.orch is None:  # klpd is dead: its socket is gone, and with it any overflow
            self._lose_events = 0  # (seed 2283304225: a stale overflow after a restart)
            return
        if self._lose_events > 0:
            self._lose_events -= 1
            if self._lose_events == 0:  # the socket reports ENOBUFS: klpd resyncs
                self.orch.resync("overflow")
            return
        if action == "add":
            self.orch.module_added(module)
        else:
            self.orch.module_removed(module)

    def _changed(self) -> None:
        """After every change of the kernel: no object of a desired series unpatched. Sampled
        while klpd is dead too (the kernel keeps its patches; the soak found a stale sample
        when an object left and came back while klpd was down)."""
        orch = self.orch
        if orch is not None:
            # (series, object) pairs the desired version of a series ships a module for
            self._wanted = {
                (series_of(p), o) for p in orch.desired for o in orch.catalog.patches[p].modules
            }
        now: dict[tuple[str, str], bool] = {}
        tr = self.kernel.transition
        for p in self.kernel.patches.values():
            if not p.enabled or (tr is not None and tr.patch == p.module):
                continue  # a patching transition may still be reverted: not yet covered
            series = series_of(p.module.split("__", 1)[0])
            for o in p.objects.values():
                if o.patched:
                    now[(series, o.name)] = True
        for key, was in self._covered.items():
            series, obj = key
            if was and not now.get(key) and key in self._wanted and self._live(obj):
                self.violations.append(f"{obj} lost the {series} series' patch")
                self.first_violation = min(self.first_violation, self.fig.steps)
        self.fig.upgrade_samples += len(now)
        self._covered = now

    def _live(self, obj: str) -> bool:
        """Its code can run patched: vmlinux, or a module past klp_module_coming() (the
        kernel's klp_alive) and not yet going."""
        m = self.kernel.modules.get(obj)
        return obj == "vmlinux" or (m is not None and m.initstate == "live")

    # --- steps ---------------------------------------------------------------------------

    async def step(self, s: Step) -> None:
        self.fig.steps += 1
        kind, args = s[0], s[1:]
        k, moddir, confs = self.kernel, self.moddir, self.port.conf_dirs
        if kind == "config":
            self.configure(*args)
            self.start()
        elif kind == "load":
            sim_modprobe(k, moddir, confs, args[0])
        elif kind == "unload":
            sim_rmmod(k, args[0])
        elif kind == "install":
            install_patch(moddir, args[0])
        elif kind == "uninstall":
            if not any(m.startswith(args[0] + "__") for m in k.modules):
                for f in catalog_dir(moddir).glob(f"{args[0]}__*"):
                    f.unlink()
        elif kind in ("reload", "enable", "disable"):
            self._alive()
            control = self.control
            assert control is not None
            try:
                if kind == "reload":
                    await control.reload()
                else:
                    await getattr(control, f"{kind}_patch")(args[0])
            except ControlError:
                pass  # an unknown patch: refused with a typed error, nothing changes
        elif kind == "fail":
            self.fig.faults["modprobe-failure"] += 1
            self.port.fail_next[args[0]] = (
                f"modprobe: ERROR: could not insert '{args[0]}': Invalid argument"
            )
        elif kind == "hang":
            self.fig.faults["modprobe-hang"] += 1
            self.port.hang_next.add(args[0])
        elif kind == "stall":
            self.fig.faults["stall"] += 1
            k.stall(args[0], "soak-sleeper", None)
        elif kind == "unstall":
            k.unstall(args[0])
        elif kind == "foreign":
            self.fig.faults["foreign-transition"] += 1
            sim_modprobe(k, moddir, confs, FOREIGN)
        elif kind == "race":  # another tool's load wins the race with klpd's next write
            self.fig.faults["ebusy-race"] += 1
            self.port.race_next = lambda: self.foreign_load()
        elif kind == "foreign_off":
            if FOREIGN in k.patches and k.patches[FOREIGN].enabled:
                k.write_enabled(FOREIGN, "0")
            sim_rmmod(k, FOREIGN)
        elif kind == "overflow":
            self.fig.faults["netlink-overflow"] += 1
            self.overflowed = True
            self._lose_events = args[0]
        elif kind == "kill":
            self.port.kill_after = args[0]
            self.killed_since_check = True
        elif kind == "wait":
            await asyncio.sleep(args[0])
        elif kind == "quiesce":
            await self.quiesce()
        self._alive()
        await asyncio.sleep(0)

    def foreign_load(self) -> None:
        sim_modprobe(self.kernel, self.moddir, self.port.conf_dirs, FOREIGN)

    async def quiesce(self) -> None:
        """Let everything settle as an operator would, then check the invariants."""
        k = self.kernel
        for obj in {t.obj for t in k.tasks.values()}:
            k.unstall(obj)
        self.port.fail_next.clear()
        self.port.hang_next.clear()
        self.port.kill_after = None
        self.port.race_next = None
        if FOREIGN in k.modules:
            await self.step(("foreign_off",))
        if self._lose_events:  # the overflow is noticed at the latest with the next event
            self._lose_events = 1
            self._uevent("add", "vmlinux", 0)
        while k.transition is not None or k.tasks:
            await asyncio.sleep(0.05)
        orch = self._alive()
        assert self.control is not None
        state = await self.control.wait_settled(120.0)
        if orch.picture.requested.is_set() or state.value == "converging":
            raise InvariantError(f"klpd did not settle: {state}")
        self.check(orch)
        self.overflowed = self.killed_since_check = False
        self._resyncs_at_check = orch.counters.resyncs

    # --- the invariants --------------------------------------------------------------------

    def check(self, orch: Orchestrator) -> None:
        self.fig.quiescent_checks += 1
        k, mem = self.kernel, orch.memory
        tr = k.transition
        facts = KernelFacts(
            modules=frozenset(k.modules),
            live=frozenset(m for m in k.modules if k.loaded(m)),
            enabled={m: p.enabled for m, p in k.patches.items()},
            transitions=frozenset(() if tr is None else (tr.patch,)),
            patched=frozenset(
                (m, o.name) for m, p in k.patches.items() for o in p.objects.values() if o.patched
            ),
        )
        claims = KlpdClaims(
            catalog={
                n: {pm.obj: pm.module for pm in p.modules.values()}
                for n, p in orch.catalog.patches.items()
            },
            desired=frozenset(orch.desired),
            failed=frozenset(set(mem.failures) | mem.avoided | mem.incompatible),
            pinned=frozenset(mem.pinned),
            remove_policy=orch.config.policy.on_object_removed == "remove",
            report=[
                ModuleClaim(
                    mr.module,
                    mr.obj,
                    mr.object_loaded,
                    mr.loaded,
                    mr.enabled,
                    mr.status is ModuleStatus.APPLIED,
                )
                for report in orch.reporter.snapshot().patches
                for mr in report.modules
            ],
        )
        errors, checks = violations(facts, claims)
        errors = self.violations + errors
        self.violations.clear()
        self.fig.invariant_checks += checks + 2
        replace = [m for what, m in self.port.calls if what == "modprobe" and "lprep" in m]
        if replace:
            errors.append(f"klpd loaded an atomic-replace module: {replace}")
        resynced = orch.counters.resyncs != self._resyncs_at_check
        if resynced and not self.overflowed and not self.killed_since_check:
            errors.append("a resync without an overflow")
        if errors:
            at = self.first_violation if self.first_violation < (1 << 62) else None
            raise InvariantError("; ".join(errors), at)


async def run_steps(root: Path, steps: list[Step], figures: Figures | None = None) -> Figures:
    """Run ``steps`` on a fresh world under ``root`` in virtual time; raise on a violation."""
    fig = figures or Figures()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    clock = VirtualClock()
    clock.install(asyncio.get_running_loop())
    saved = transition_mod.time  # type: ignore[attr-defined]  # its `import time`
    transition_mod.time = clock  # type: ignore[attr-defined,assignment]  # the stall timer
    world = World(root, fig)
    base = fig.steps  # figures add up over worlds; the step index is this world's
    try:
        for s in steps:
            await world.step(s)
    except InvariantError as e:
        if e.at is not None:
            e.at -= base + 1
        raise
    finally:
        transition_mod.time = saved  # type: ignore[attr-defined]  # its `import time`
        await world.stop()
    return fig


def run(root: Path, steps: list[Step], figures: Figures | None = None) -> Figures:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(run_steps(root, steps, figures))
    finally:
        loop.close()


def failure(root: Path, steps: list[Step]) -> str | None:
    try:
        run(root, steps)
    except Exception as e:  # any failure is a failure (AssertionError included)
        return f"{type(e).__name__}: {e}"
    return None


def shrink(
    root: Path, steps: list[Step], at: int | None = None, budget_s: float = 120.0
) -> list[Step]:
    """A shorter list of steps that still fails: cut after the step the violation happened
    during (``at``), then delta debugging (drop chunks, then single steps, while the run
    still fails), within ``budget_s`` seconds."""
    deadline = real_time.monotonic() + budget_s
    best = list(steps)
    if at is not None:
        cut = [*steps[: at + 1], ("quiesce",)]
        if failure(root, cut) is not None:
            best = cut
    chunk = max(1, len(best) // 2)
    while chunk >= 1 and real_time.monotonic() < deadline:
        i, shrunk = 1, False  # the first step (config) stays
        while i < len(best) and real_time.monotonic() < deadline:
            candidate = best[:i] + best[i + chunk :]
            if candidate and candidate[-1] != ("quiesce",):
                candidate.append(("quiesce",))
            if failure(root, candidate) is not None:
                best, shrunk = candidate, True
            else:
                i += chunk
        if not shrunk:
            chunk //= 2
    return best
