"""The one atomic writer, and the state directory check (issue 11, point 9)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from klpd.service import atomicfile
from klpd.service.atomicfile import UnsafeDirectory, check_private_directory, write_atomic
from klpd.service.overrides import Overrides

NOBODY = 65534


def test_planted_symlink_at_the_old_temporary_name_is_not_followed(tmp_path: Path) -> None:
    # The old writer wrote overrides.tmp with open(..., "w"): a symlink there was followed.
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "overrides.tmp").symlink_to(victim)
    overrides = Overrides(tmp_path / "overrides.json")
    overrides.disable("lpa")
    assert victim.read_text() == "precious\n"
    assert json.loads((tmp_path / "overrides.json").read_text()) == {"disabled": ["lpa"]}


def test_temporary_file_is_created_exclusively(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = iter([".f.aaaa.tmp", ".f.aaaa.tmp", ".f.bbbb.tmp"])
    monkeypatch.setattr(atomicfile, "_temporary_name", lambda _name: next(names))
    (tmp_path / ".f.aaaa.tmp").symlink_to(tmp_path / "elsewhere")  # taken: skipped
    write_atomic(tmp_path / "f", "x")
    assert (tmp_path / "f").read_text() == "x"
    assert not (tmp_path / "elsewhere").exists()
    assert sorted(os.listdir(tmp_path)) == [".f.aaaa.tmp", "f"]


def test_data_and_directory_are_fsynced_before_and_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        steps.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def rename(src: str, dst: str, *, src_dir_fd: int, dst_dir_fd: int) -> None:
        steps.append("rename")
        real_rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    write_atomic(tmp_path / "f", "data")
    assert steps == ["fsync-file", "rename", "fsync-dir"]


def test_mode_is_set_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "f.prom", "x", mode=0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.prom").stat().st_mode) == 0o644


def test_failure_keeps_the_old_file_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_atomic(tmp_path / "f", "old")

    def broken(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="No space"):
        write_atomic(tmp_path / "f", "new")
    assert (tmp_path / "f").read_text() == "old"
    assert os.listdir(tmp_path) == ["f"]


@pytest.mark.parametrize(
    ("owner", "mode", "why"),
    [(NOBODY, 0o755, "owned by uid 65534"), (0, 0o775, "writable"), (0, 0o757, "writable")],
)
def test_state_directory_refused_unless_private(
    tmp_path: Path, owner: int, mode: int, why: str
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, owner, owner)
    state.chmod(mode)
    with pytest.raises(UnsafeDirectory, match=why):
        Overrides(state / "overrides.json")


def test_private_state_directory_is_accepted(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    check_private_directory(state)
    Overrides(state / "overrides.json").disable("lpa")
    assert stat.S_IMODE((state / "overrides.json").stat().st_mode) == 0o600
