"""Keep a directory tree equal to a rendered picture, with no reader seeing half a change.

The sim renders the kernel's state into *units*: directories that appear and vanish as a
whole (``sys/module/<m>``, ``sys/kernel/livepatch/<patch>``, ``proc/<pid>``), each a map of
relative file paths to contents plus empty directories. :class:`TreeWriter` applies the
difference to the last picture it wrote:

- a new unit is built in a staging directory and renamed into place (appears at once);
- a unit that is gone is renamed out to a trash directory and deleted there;
- a changed file is written to a temporary file and renamed over the old one.

Staging and trash live under ``<root>/.sim`` on the same filesystem, so the renames are
atomic and no temporary name ever shows up in a directory a reader lists.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Unit:
    """One directory's wanted content: files (path → (content, mode)), symlinks (path →
    target) and empty dirs."""

    files: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    dirs: frozenset[str] = frozenset()
    links: Mapping[str, str] = field(default_factory=dict)

    def all_dirs(self) -> set[str]:
        out = set()
        for p in [*self.files, *self.dirs, *self.links]:
            parts = p.split("/")
            limit = len(parts) if p in self.dirs else len(parts) - 1
            for i in range(1, limit + 1):
                out.add("/".join(parts[:i]))
        return out


class TreeWriter:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._scratch = root / ".sim"
        self._scratch.mkdir(exist_ok=True)
        self._counter = itertools.count()
        self._units: dict[str, Unit] = {}
        self._stale: set[tuple[str, str]] = set()

    def _tmp(self) -> Path:
        return self._scratch / f"tmp.{os.getpid()}.{next(self._counter)}"

    def _write_file(self, path: Path, content: str, mode: int) -> None:
        tmp = self._tmp()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.write(fd, content.encode())
        finally:
            os.close(fd)
        os.chmod(tmp, mode)  # the umask must not change what the kernel would show
        os.rename(tmp, path)

    def _discard(self, path: Path) -> None:
        if not path.exists() and not path.is_symlink():
            return
        trash = self._tmp()
        os.rename(path, trash)
        if trash.is_dir() and not trash.is_symlink():
            shutil.rmtree(trash, ignore_errors=True)
        else:
            trash.unlink(missing_ok=True)

    def invalidate(self, unit: str, relpath: str) -> None:
        """Someone else wrote ``unit/relpath``: rewrite it on the next :meth:`apply`."""
        self._stale.add((unit, relpath))

    def apply(
        self,
        units: Mapping[str, Unit],
        before_publish: Callable[[str, Path], None] | None = None,
    ) -> tuple[set[str], set[str]]:
        """Make the tree match ``units``; return the units (created, removed).

        ``before_publish(name, staged_dir)`` runs for each new unit while it is still in
        staging, so that e.g. an inotify watch is on it before anyone can write there.
        """
        created = set(units) - set(self._units)
        removed = set(self._units) - set(units)
        for name in sorted(removed, reverse=True):
            self._discard(self.root / name)
            del self._units[name]
        for name in sorted(created):
            self._create(name, units[name], before_publish)
        for name in sorted(set(units) - created):
            self._update(name, self._units[name], units[name])
        self._units = dict(units)
        self._stale.clear()
        return created, removed

    def _create(
        self, name: str, unit: Unit, before_publish: Callable[[str, Path], None] | None
    ) -> None:
        stage = self._tmp()
        stage.mkdir()
        for d in sorted(unit.all_dirs()):
            (stage / d).mkdir(exist_ok=True)
        for rel, (content, mode) in unit.files.items():
            self._write_file(stage / rel, content, mode)
        for rel, dest in unit.links.items():
            os.symlink(dest, stage / rel)
        if before_publish is not None:
            before_publish(name, stage)
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        self._discard(target)  # a leftover from a crashed run
        os.rename(stage, target)

    def _update(self, name: str, old: Unit, new: Unit) -> None:
        base = self.root / name
        old_dirs, new_dirs = old.all_dirs(), new.all_dirs()
        for d in sorted(new_dirs - old_dirs):
            (base / d).mkdir(parents=True, exist_ok=True)
        for rel, (content, mode) in new.files.items():
            if old.files.get(rel) != (content, mode) or (name, rel) in self._stale:
                self._write_file(base / rel, content, mode)
        for rel, dest in new.links.items():
            if old.links.get(rel) != dest:
                tmp = self._tmp()
                os.symlink(dest, tmp)
                os.rename(tmp, base / rel)
        for rel in (set(old.files) - set(new.files)) | (set(old.links) - set(new.links)):
            if not any(rel.startswith(d + "/") for d in old_dirs - new_dirs):
                (base / rel).unlink(missing_ok=True)
        for d in sorted(old_dirs - new_dirs):
            if not any(d.startswith(p + "/") for p in old_dirs - new_dirs):
                self._discard(base / d)
