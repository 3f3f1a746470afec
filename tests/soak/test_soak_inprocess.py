"""The in-process soak: at least 10,000 random steps against the orchestrator on the
simulated kernel's model. ``KLPD_SOAK_SEED`` replays a seed, ``KLPD_SOAK_STEPS`` makes a
longer run (e.g. 1000000), ``KLPD_SOAK_REPLAY`` runs a list of steps printed by a failure."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

from soakworld import Figures, InvariantError, failure, generate, run, shrink

STEPS = int(os.environ.get("KLPD_SOAK_STEPS", "10000"))
RUN = 500  # steps per world: a fresh machine (and klpd) every RUN steps


def test_inprocess_soak(tmp_path: Path) -> None:
    replay = os.environ.get("KLPD_SOAK_REPLAY")
    if replay:
        steps = [tuple(s) for s in json.loads(replay)]
        assert failure(tmp_path / "replay", steps) is None
        return
    seed = int(os.environ.get("KLPD_SOAK_SEED", random.randrange(2**32)))
    print(f"in-process soak: KLPD_SOAK_SEED={seed} KLPD_SOAK_STEPS={STEPS}")
    fig = Figures()
    started = time.monotonic()
    for world in range(-(-STEPS // RUN)):
        steps = generate(seed + world, RUN)
        try:
            run(tmp_path / "w", steps, fig)
        except AssertionError as e:
            at = e.at if isinstance(e, InvariantError) else None
            small = shrink(tmp_path / "shrink", steps, at)
            raise AssertionError(
                f"seed {seed + world} (world {world}): {e}\n"
                f"shrunk to {len(small)} steps, replay with KLPD_SOAK_REPLAY='{json.dumps(small)}'"
            ) from None
    elapsed = time.monotonic() - started
    print(
        f"in-process soak: {fig.steps} steps in {elapsed:.1f} s, {fig.quiescent_checks} "
        f"quiescent points, {fig.invariant_checks} invariant checks, {fig.upgrade_samples} "
        f"upgrade samples, {fig.restarts} restarts, faults {dict(sorted(fig.faults.items()))}"
    )
    assert fig.steps >= STEPS and fig.quiescent_checks >= STEPS // 50
