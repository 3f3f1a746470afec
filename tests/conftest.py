from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from klpd.sim.harness import SimKernel
from klpd_harness import KlpdProcess


@pytest.fixture
def sim() -> Iterator[SimKernel]:
    with SimKernel(transition_ms=100) as s:
        yield s


@pytest.fixture
def make_klpd(sim: SimKernel, tmp_path: Path) -> Iterator[type[KlpdProcess]]:
    made: list[KlpdProcess] = []

    def make(overrides=None, env=None):  # type: ignore[no-untyped-def]
        k = KlpdProcess(sim, tmp_path, overrides, env)
        made.append(k)
        return k

    yield make  # type: ignore[misc]
    for k in made:
        k.close()
