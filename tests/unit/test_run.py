"""The subprocess helper and the modprobe wrapper, against the real kmod tools."""

from __future__ import annotations

import shutil

import pytest

from klpd.core.names import NameError_
from klpd.kernel.modprobe import Failure, classify, modprobe, rmmod
from klpd.kernel.run import RunResult, run

MODPROBE = shutil.which("modprobe") or "/usr/sbin/modprobe"
RMMOD = shutil.which("rmmod") or "/usr/sbin/rmmod"


async def test_real_modprobe_of_missing_module_is_not_found(tmp_path: object) -> None:
    res = await modprobe([MODPROBE, "-d", str(tmp_path)], "klpd_no_such_mod", timeout=30)
    assert not res.ok
    assert res.failure is Failure.NOT_FOUND, res.describe()
    assert "klpd_no_such_mod" in res.describe()


async def test_real_rmmod_of_absent_module_counts_as_done() -> None:
    res = await rmmod([RMMOD], "klpd_no_such_mod", timeout=30)
    assert res.failure is Failure.NOT_LOADED, res.describe()
    assert res.ok


async def test_names_are_validated_before_any_command_runs() -> None:
    for bad in ("-v", "a b", "x;reboot", "", "a" * 56):
        with pytest.raises(NameError_):
            await modprobe(["/bin/false"], bad, timeout=5)


async def test_dashdash_separates_the_name() -> None:
    res = await run(["/bin/echo", "--", "lpa__ext4"], timeout=5)
    assert res.ok and res.stdout == "-- lpa__ext4\n"


async def test_not_found_timeout_and_signal_are_named() -> None:
    res = await run(["/nonexistent/klpd-cmd"], timeout=5)
    assert res.returncode == 127 and res.describe().endswith("command not found")
    res = await run(["/bin/sleep", "5"], timeout=0.2)
    assert res.returncode == 124 and "timed out" in res.describe()
    res = await run(["/bin/sh", "-c", "kill -9 $$"], timeout=5)
    assert res.describe().endswith("killed by signal SIGKILL")


async def test_a_timeout_kills_the_children_too_and_returns() -> None:
    """Found by the daemon soak: an rmmod wrapper that exited just as its timeout ran out
    made kill() raise ProcessLookupError, and the whole reconcile pass failed. Its twin,
    here: the shell is gone at once while its child holds the pipes past the timeout; a kill
    of the shell alone left communicate() waiting 30 s for the child."""
    res = await run(["/bin/sh", "-c", "/bin/sleep 30 & exit 0"], timeout=0.5)
    assert res.returncode == 124 and "timed out" in res.describe()
    assert res.seconds < 10


def test_classify_kmod_messages() -> None:
    def r(err: str) -> RunResult:
        return RunResult(("modprobe",), 1, "", err, 0.0)

    busy = "modprobe: ERROR: could not insert 'lpa__ext4': Device or resource busy\n"
    assert classify(r(busy)) is Failure.BUSY
    assert classify(r("rmmod: ERROR: Module lpa__ext4 is in use\n")) is Failure.IN_USE
    assert classify(r("modprobe: ERROR: could not insert 'x': Invalid argument")) is Failure.OTHER
