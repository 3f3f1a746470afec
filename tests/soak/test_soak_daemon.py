"""The real-daemon soak: at least 1,000 random steps against the ``klpd`` process on the
simulated kernel, with real SIGKILLs, netlink overflows and dbus-daemon restarts
(:mod:`soakdaemon`). ``KLPD_SOAK_SEED`` replays a seed, ``KLPD_DAEMON_SOAK_STEPS`` makes a
longer run, ``KLPD_DAEMON_SOAK_REPLAY`` runs a list of steps printed by a failure (real time
and real processes: a replay takes the same path, not always the same timing)."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

from klpd_sim.harness import SimKernel
from soakdaemon import DaemonWorld, Figures, generate
from soakspec import Step, soak_spec

STEPS = int(os.environ.get("KLPD_DAEMON_SOAK_STEPS", "1000"))


def run(tmp_path: Path, steps: list[Step], fig: Figures, what: str) -> None:
    """Run ``steps``; on a violation, fail with the steps up to it, ready to replay."""
    with SimKernel(spec=soak_spec(), transition_ms=20) as sim:
        world = DaemonWorld(sim, tmp_path, fig)
        try:
            last_check = 0
            for i, s in enumerate(steps):
                try:
                    world.step(s)
                except AssertionError as e:
                    cut = [*steps[: i + 1], *([] if s == ("quiesce",) else [("quiesce",)])]
                    raise AssertionError(
                        f"{what}, step {i} {s}: {e}\n"
                        f"steps since the last good quiescent point: {steps[last_check : i + 1]}\n"
                        f"replay with KLPD_DAEMON_SOAK_REPLAY='{json.dumps(cut)}'\n"
                        f"klpd's log (tail):\n{world.klpd.log()[-4000:]}"
                    ) from None
                if s == ("quiesce",):
                    last_check = i + 1
        finally:
            world.close()


def test_daemon_soak(tmp_path: Path) -> None:
    replay = os.environ.get("KLPD_DAEMON_SOAK_REPLAY")
    fig = Figures()
    if replay:
        run(tmp_path, [tuple(s) for s in json.loads(replay)], fig, "replay")
        assert fig.quiescent_checks >= 1
        return
    seed = int(os.environ.get("KLPD_SOAK_SEED", random.randrange(2**32)))
    print(f"daemon soak: KLPD_SOAK_SEED={seed} KLPD_DAEMON_SOAK_STEPS={STEPS}")
    started = time.monotonic()
    run(tmp_path, generate(seed, STEPS), fig, f"seed {seed}")
    elapsed = time.monotonic() - started
    slowest = {k: round(v, 1) for k, v in sorted(fig.seconds.items(), key=lambda kv: -kv[1])[:6]}
    print(
        f"daemon soak: {fig.steps} steps in {elapsed:.1f} s, {fig.quiescent_checks} quiescent "
        f"points, {fig.invariant_checks} invariant checks, {fig.kills} SIGKILL + restart "
        f"({fig.kills_armed} right after a modprobe/rmmod/sysfs write), "
        f"{fig.bus_restarts} dbus-daemon restarts, {fig.klpctl_calls} klpctl calls, "
        f"{fig.transitions} transitions, klpd peak "
        f"RSS {fig.peak_rss_kb / 1024:.1f} MiB, faults {dict(sorted(fig.faults.items()))}; "
        f"seconds by step kind {slowest}"
    )
    assert fig.steps >= STEPS and fig.quiescent_checks >= STEPS // 50
    assert fig.kills > 0 and fig.bus_restarts > 0 and fig.faults["netlink-overflow"] > 0
