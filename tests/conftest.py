from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from klpd_harness import KlpdProcess, MakeKlpd
from klpd_sim.harness import SimKernel

# The private dbus-daemon (``dbus_address``) and the service over a FakeController
# (``served``) are fixtures every D-Bus test file uses.
pytest_plugins = ["dbus_helpers"]


@pytest.fixture
def sim() -> Iterator[SimKernel]:
    with SimKernel(transition_ms=100) as s:
        yield s


@pytest.fixture
def make_klpd(sim: SimKernel, tmp_path: Path) -> Iterator[MakeKlpd]:
    made: list[KlpdProcess] = []

    def make(
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> KlpdProcess:
        k = KlpdProcess(sim, tmp_path, overrides, env)
        made.append(k)
        return k

    yield make
    for k in made:
        k.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A skipped test is not a passing test: the suite fails if anything was skipped."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter:
            reporter.write_line(f"FAILED: {skipped} test(s) skipped; a skip counts as a failure")
