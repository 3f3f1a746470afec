"""klpd's one way to write a file: readers see the old file or the new one, never a part,
and a crash leaves one of the two complete.

Used for the operator overrides, the metrics textfile, the softdep file and the boot
guard's record. Steps, each for a reason:

- the directory is opened once and every step is relative to that descriptor, so a
  directory renamed or swapped for a symlink halfway cannot redirect the write;
- the temporary file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` under a random name
  starting with a dot (collectors that glob ``*.prom``/``*.conf`` skip it): never an
  existing file or a planted symlink (the old fixed ``overrides.tmp`` followed either);
- ``fsync`` of the data before the rename: without it a crash after the rename can leave
  an empty file (an empty ``overrides.json`` silently lifted ``klpctl disable``);
- ``rename`` within the directory (atomic on one file system), then ``fsync`` of the
  directory so the rename itself survives a crash.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path


class UnsafeDirectory(Exception):
    """A directory klpd will not keep its state in; ``str()`` says why."""


def write_atomic(path: str | os.PathLike[str], data: str | bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` (text is UTF-8), file mode ``mode`` whatever the umask."""
    target = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    dfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        tmp = _create_exclusive(dfd, target.name, mode)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=dfd)
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view) :]
                os.fchmod(fd, mode)  # the umask (UMask=0077 in the unit) must not narrow it
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, target.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _create_exclusive(dfd: int, name: str, mode: int) -> str:
    for _ in range(100):
        tmp = _temporary_name(name)
        try:
            fd = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                mode & 0o600,  # not readable by others until complete
                dir_fd=dfd,
            )
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name for {name}")


def _temporary_name(name: str) -> str:
    return f".{name}.{secrets.token_hex(8)}.tmp"


def check_private_directory(path: str | os.PathLike[str]) -> None:
    """Refuse a directory for klpd's state unless it is owned by klpd's user (root under
    the unit) and writable by nobody else: whoever can write there can lift an operator's
    ``klpctl disable`` or plant one. A missing directory is fine (it is created 0755)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirectory(f"the state directory {path} is not a directory")
    if st.st_uid != os.geteuid():
        raise UnsafeDirectory(
            f"the state directory {path} is owned by uid {st.st_uid}, not {os.geteuid()}; "
            "refused (whoever owns it could lift or plant an operator's disable)"
        )
    if st.st_mode & 0o022:
        raise UnsafeDirectory(
            f"the state directory {path} is writable by its group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); refused"
        )


def make_private_directory(path: str | os.PathLike[str]) -> None:
    """Create ``path`` (0755, parents too) if missing, then :func:`check_private_directory`."""
    Path(path).mkdir(mode=0o755, parents=True, exist_ok=True)
    check_private_directory(path)


__all__ = ["UnsafeDirectory", "check_private_directory", "make_private_directory", "write_atomic"]
