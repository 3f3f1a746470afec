"""klpd's own cost per action: the kernel-state read plus the plan it makes after every
action, with 10, 100, 1,000 and 2,000 applied patch modules and 300 live targets, against
one ``modprobe`` spawn measured in the same run.

The orchestrator does one action and then reads the kernel and plans again, so what klpd
adds to every action on top of the action itself is: read what the action can have changed
and notice wiped patches (``Orchestrator.look``), plan, and publish the snapshot — before
the action, and when its transition starts and ends (the transition watcher). The
orchestrator is built as the daemon builds it, with module inspection and the boot guard
(``host_guards``).

The sysfs tree is the simulated kernel's own rendering of a kernel that loaded the
targets and then every patch module (the sim's model run in-process, no daemon): the same
files, attributes and directories ``klpd-sim run`` shows. The catalog is the matching
``.ko`` files, scanned once (a rescan is not per action). Baselines, measured in the same
run: one spawn of kmod's ``modprobe --version`` (the cheapest a modprobe can be: no
module, no kernel work) through klpd's own ``run()``.

    python bench/action_cost.py [--sizes 10,100,1000,2000] [--targets 300] [--passes 30]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import _common as c
from klpd_sim.kernel import Kernel
from klpd_sim.modfile import ModFile
from klpd_sim.render import render
from klpd_sim.spec import Spec, init_root
from klpd_sim.tree import TreeWriter

from klpd.kernel.modinfo import read_modinfo
from klpd.kernel.run import run
from klpd.service.config import Config
from klpd.service.orchestrator import Orchestrator
from klpd.service.screening import host_guards
from klpd.service.transition import Transition

RELEASE = "6.1.0-bench"


def layout(n_modules: int, n_targets: int) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Targets ``t000``…, and patches ``pNN`` with ``pNN__vmlinux`` plus one module per
    target, as many patches as it takes to make ``n_modules`` patch modules."""
    targets = [f"t{i:04d}" for i in range(n_targets)]
    modules: dict[str, dict[str, str]] = {
        t: {"description": "bench target", "license": "GPL", "depends": "", "intree": "Y"}
        for t in targets
    }
    n_patches = max(1, math.ceil(n_modules / (n_targets + 1)))
    per_patch = n_modules // n_patches
    for p in range(n_patches):
        count = per_patch + (1 if p < n_modules % n_patches else 0)
        for obj in ["vmlinux", *targets][:count]:
            modules[f"p{p:02d}__{obj}"] = {
                "license": "GPL",
                "livepatch": "Y",
                "depends": "",
                "klpd_sim_object": obj,
                "klpd_sim_funcs": f"{obj}_fix_a,{obj}_fix_b",
            }
    return targets, modules


async def load_everything(root: Path, spec: Spec, targets: list[str]) -> None:
    """Run the sim's kernel model in-process: every target, then every patch module
    (vmlinux first), one transition at a time; then render sysfs once."""
    loop = asyncio.get_running_loop()
    logging.getLogger("klpd_sim").setLevel(logging.ERROR)
    kernel = Kernel(RELEASE, 0.0, loop, lambda *_: None, lambda: None)
    extra = root / "lib/modules" / RELEASE / "extra"
    patches = [m for m in spec.modules if "__" in m]
    patches.sort(key=lambda m: (m.split("__")[0], not m.endswith("__vmlinux")))
    for name in [*targets, *patches]:
        path = extra / f"{name}.ko"
        err = kernel.init_module(ModFile(name, path, read_modinfo(path)))
        if err:
            raise RuntimeError(f"{name}: {os.strerror(err)}")
        while kernel.transition is not None:
            await asyncio.sleep(0)
    TreeWriter(root).apply(render(kernel))


def orchestrator(root: Path, state_dir: Path) -> Orchestrator:
    config = Config().with_overrides(
        {
            "kernel": {
                "sysfs_root": str(root / "sys"),
                "proc_root": str(root / "proc"),
                "modprobe": ["/bin/false"],
                "rmmod": ["/bin/false"],
            },
            "catalog": {"directories": [str(root / "lib/modules" / RELEASE)]},
            "state": {"directory": str(state_dir)},
            "dbus": {"enabled": False},
        }
    )
    inspector, bootguard = host_guards(config)  # as the daemon guards every load
    return Orchestrator(config, inspector=inspector, bootguard=bootguard)


async def measure(orch: Orchestrator, passes: int) -> dict[str, float]:
    """Median ns of: a whole idle reconcile pass (it starts with a full read), the full
    read, the plan, and klpd's own work around one action — read what can have changed,
    plan, publish before the action and as its transition starts and ends."""
    rows: dict[str, list[float]] = {k: [] for k in ("pass", "read", "plan", "action", "cpu")}
    pic, reporter = orch.picture, orch.reporter
    touched = next(iter(orch.read_state().livepatches))
    for _ in range(passes):
        t0 = time.perf_counter_ns()
        await orch.reconcile()
        t1 = time.perf_counter_ns()
        state = orch.look()  # the full read a pass starts with
        t2 = time.perf_counter_ns()
        actions = orch.plan_now(state)
        t3 = time.perf_counter_ns()
        if actions:
            raise RuntimeError(f"not converged: {actions[:3]}")
        pic.state, pic.pending = state, actions
        reporter.publish()  # as the loop does after its full read, before the first action
        t4, cpu4 = time.perf_counter_ns(), time.thread_time_ns()
        state = orch.look([touched])  # what the loop does after an action
        pic.state, pic.pending = state, orch.plan_now(state)
        reporter.publish()  # before the next action
        reporter.transition = Transition(touched, "", True, time.time())
        reporter.publish()  # the transition watcher: started
        reporter.transition = None
        reporter.publish()  # and ended
        t5, cpu5 = time.perf_counter_ns(), time.thread_time_ns()
        rows["pass"].append(t1 - t0)
        rows["read"].append(t2 - t1)
        rows["plan"].append(t3 - t2)
        rows["action"].append(t5 - t4)
        rows["cpu"].append(cpu5 - cpu4)
    return {k: c.median(v) for k, v in rows.items()}


async def spawn_cost(argv: list[str], n: int) -> float:
    times = []
    for _ in range(n):
        res = await run(argv, timeout=30)
        if not res.ok:
            raise RuntimeError(res.describe())
        times.append(res.seconds * 1e9)
    return c.median(times)


async def amain(args: argparse.Namespace) -> None:
    c.bench_env()
    sizes = [int(s) for s in args.sizes.split(",")]
    # sysfs lives in memory: lay the tree out on tmpfs where there is one
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = Path(tempfile.mkdtemp(prefix="klpd-bench-action-", dir=shm))
    results: list[tuple[int, int, int, float, dict[str, float]]] = []
    try:
        modprobe = shutil.which("modprobe") or "/usr/sbin/modprobe"
        kmod_ns = await spawn_cost([modprobe, "--version"], args.spawns)
        for n in sizes:
            root = work / f"n{n}"
            targets, modules = layout(n, args.targets)
            spec = Spec(release=RELEASE, modules=modules)
            init_root(root, spec)
            await load_everything(root, spec, targets)
            orch = orchestrator(root, work / f"state{n}")
            t = time.perf_counter()
            orch.rescan()
            scan_s = time.perf_counter() - t
            applied = sum(1 for lp in orch.read_state().livepatches.values() if lp.enabled)
            row = await measure(orch, args.passes)
            results.append((n, applied, len(orch.desired), scan_s, row))
            shutil.rmtree(root, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(results, kmod_ns, args)


def report(
    results: list[tuple[int, int, int, float, dict[str, float]]],
    kmod_ns: float,
    args: argparse.Namespace,
) -> None:
    print(
        f"action_cost: klpd's own cost per action, {args.targets} live targets,"
        f" median of {args.passes}"
    )
    print(c.NOISE_NOTE.format(os.cpu_count()))
    print(
        f"baseline: one kmod `modprobe --version` spawn through klpd's run():"
        f" {c.ms(kmod_ns):.2f} ms"
    )
    print(
        f"{'modules':>8} {'applied':>8} {'patches':>8} {'action ms':>10} {'action/kmod':>12}"
        f" {'action cpu ms':>14} {'pass ms':>8} {'full read ms':>13} {'plan ms':>8} {'scan s':>7}"
    )
    for n, applied, patches, scan_s, r in results:
        print(
            f"{n:8d} {applied:8d} {patches:8d} {c.ms(r['action']):10.2f}"
            f" {r['action'] / kmod_ns:12.2f} {c.ms(r['cpu']):14.2f} {c.ms(r['pass']):8.2f}"
            f" {c.ms(r['read']):13.2f} {c.ms(r['plan']):8.2f} {scan_s:7.2f}"
        )
    print(
        "action = klpd's own work around each action (read what can have changed, notice"
        " wipes, plan, publish x3); pass = an idle reconcile pass, which starts with a full"
        " read (once per event or request, not per action); action cpu = the same, in CPU time"
        " of klpd's thread (what other processes' load does not inflate). goal: action <= 2 ms"
        " at 1,000 applied modules"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10,100,1000,2000")
    ap.add_argument("--targets", type=int, default=300)
    ap.add_argument("--passes", type=int, default=30)
    ap.add_argument("--spawns", type=int, default=30)
    asyncio.run(amain(ap.parse_args()))


if __name__ == "__main__":
    main()
