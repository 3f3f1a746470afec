from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
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


def pytest_collection_finish(session: pytest.Session) -> None:
    """Real-kernel tests collected: start their kernel lines' builds (chroot, image, test
    modules; minutes each on a clean clone) now, two at a time, so that they overlap the
    tests that run before them. Each test still waits for, and fails with, its build."""
    if session.config.option.collectonly:
        return
    here = Path(__file__).resolve().parent
    if any(here / "system" in item.path.parents for item in session.items):
        _system_guest().run_soon()  # the .deb, the Debian 13 guest's disk and its boots
    realkernel = here / "realkernel"
    files = {Path(str(item.path)).name for item in session.items if realkernel in item.path.parents}
    if not files:
        return
    sys.path.insert(0, str(realkernel))
    import lines  # tests/realkernel/lines.py: the builds, shared with the tests that use them

    wanted = os.environ.get("KLPD_LINES", " ".join(x.name for x in lines.LINES)).split()
    if "test_inspect_modules.py" in files:
        wanted = [x.name for x in lines.LINES]
    if "test_inspect_guard.py" in files:
        wanted.append("6.1")
    # 6.1 first (the boot-guard guest needs it first), then the longest guest (6.12)
    for name in sorted(set(wanted), key=lambda n: ("6.1", "6.12", "5.10", "7.x").index(n)):
        lines.prepare_soon(lines.BY_NAME[name])


def _system_guest() -> ModuleType:
    """tests/system/guest.py, under the name tests/system/test_system.py loads it by."""
    name = "klpd_system_guest"
    if name not in sys.modules:
        path = Path(__file__).resolve().parent / "system" / "guest.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A skipped test is not a passing test: the suite fails if anything was skipped."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter:
            reporter.write_line(f"FAILED: {skipped} test(s) skipped; a skip counts as a failure")
