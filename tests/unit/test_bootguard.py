"""The boot-loop guard across (simulated) reboots: a state directory and boot ids."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from klpd.service.bootguard import FILE_NAME, BootGuard, read_boot_id


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guard(tmp_path: Path, boot: str, clock: Clock, grace: float = 60.0) -> BootGuard:
    return BootGuard(tmp_path, boot, grace_period=grace, clock=clock)


def test_record_is_on_disk_before_the_load(tmp_path: Path) -> None:
    clock = Clock()
    g = guard(tmp_path, "boot-1", clock)
    g.opening("lpa__vmlinux")
    data = json.loads((tmp_path / FILE_NAME).read_text())
    assert data["open"] == [
        {"module": "lpa__vmlinux", "boot_id": "boot-1", "started_at": 1000.0, "applied_at": None}
    ]


def test_closed_after_grace_period(tmp_path: Path) -> None:
    clock = Clock()
    g = guard(tmp_path, "boot-1", clock, grace=60)
    g.opening("lpa__vmlinux")
    assert g.settle() is None  # not applied yet: no timer
    clock.now += 2
    g.applied("lpa__vmlinux")
    clock.now += 59
    assert g.settle() == pytest.approx(1.0)
    assert g.open_modules == ("lpa__vmlinux",)
    clock.now += 1
    assert g.settle() is None
    assert not g.open_modules
    # a reboot now quarantines nothing
    assert guard(tmp_path, "boot-2", clock).quarantined == {}


def test_crash_within_grace_quarantines_in_the_next_boot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    g = guard(tmp_path, "boot-1", clock)
    g.opening("lpa__vmlinux")
    clock.now += 1
    g.applied("lpa__vmlinux")
    clock.now += 5
    g.opening("lpcrash__vmlinux")
    clock.now += 1
    g.applied("lpcrash__vmlinux")
    # the machine goes down; a new boot
    clock.now += 30
    with caplog.at_level(logging.ERROR):
        after = guard(tmp_path, "boot-2", clock)
    assert list(after.quarantined) == ["lpcrash__vmlinux"]
    q = after.quarantined["lpcrash__vmlinux"]
    assert (q.boot_id, q.detected_boot_id, q.started_at) == ("boot-1", "boot-2", 1006.0)
    assert "after it was applied" in q.reason
    assert "`klpctl enable` of its patch clears it" in q.reason
    log = caplog.text
    assert "boot-1" in log and "boot-2" in log and "lpa__vmlinux (1000.000)" in log
    assert after.open_modules == ()
    # the quarantine outlives further boots until cleared
    again = guard(tmp_path, "boot-3", clock)
    assert list(again.quarantined) == ["lpcrash__vmlinux"]
    assert again.clear("lpcrash__vmlinux") is True
    assert again.clear("lpcrash__vmlinux") is False
    assert guard(tmp_path, "boot-4", clock).quarantined == {}


def test_crash_while_loading(tmp_path: Path) -> None:
    clock = Clock()
    guard(tmp_path, "boot-1", clock).opening("lpx__ext4")
    q = guard(tmp_path, "boot-2", clock).quarantined["lpx__ext4"]
    assert "while it was loading" in q.reason


def test_restart_in_the_same_boot_is_not_a_crash(tmp_path: Path) -> None:
    clock = Clock()
    g = guard(tmp_path, "boot-1", clock)
    g.opening("lpa__vmlinux")
    g.applied("lpa__vmlinux")
    again = guard(tmp_path, "boot-1", clock)  # klpd restarted (SIGKILL, upgrade)
    assert again.quarantined == {}
    assert again.open_modules == ("lpa__vmlinux",)
    clock.now += 61
    assert again.settle() is None and not again.open_modules


def test_clean_failure_closes_the_record(tmp_path: Path) -> None:
    clock = Clock()
    g = guard(tmp_path, "boot-1", clock)
    g.opening("lpbad__vmlinux")
    g.failed("lpbad__vmlinux")
    assert guard(tmp_path, "boot-2", clock).quarantined == {}


def test_unknown_boot_id_never_quarantines(tmp_path: Path) -> None:
    clock = Clock()
    guard(tmp_path, "", clock).opening("lpa__vmlinux")
    assert guard(tmp_path, "", clock).quarantined == {}


@pytest.mark.parametrize(
    "content", ["{not json", "[]", '{"open": [{"bogus": 1}, 3]}', '{"open": 5, "quarantined": [7]}']
)
def test_unreadable_state_is_ignored_with_a_message(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / FILE_NAME).write_text(content)
    g = guard(tmp_path, "boot-2", Clock())
    assert g.quarantined == {} and g.open_modules == ()


def test_read_boot_id(tmp_path: Path) -> None:
    assert read_boot_id(tmp_path) == ""
    (tmp_path / "sys/kernel/random").mkdir(parents=True)
    (tmp_path / "sys/kernel/random/boot_id").write_text("abc-123\n")
    assert read_boot_id(tmp_path) == "abc-123"


def test_unwritable_state_directory_is_logged_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with caplog.at_level(logging.ERROR):
        g = guard(blocker / "state", "boot-1", Clock())  # a file where a directory should be
        g.opening("lpa__vmlinux")
    assert "cannot write" in caplog.text and "loads are not guarded" in caplog.text
    assert g.open_modules == ("lpa__vmlinux",)
