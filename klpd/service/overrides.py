"""Operator overrides (``klpctl disable P``): the patches an operator vetoed, persisted in
``state.directory/overrides.json`` so the veto outlives restarts and reboots.

Written with :func:`klpd.service.atomicfile.write_atomic` (a crash never leaves an empty
file that would silently lift a veto), in a directory that must be klpd's own and
writable by nobody else (:class:`UnsafeDirectory` otherwise: klpd refuses to start).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from klpd.service.atomicfile import check_private_directory, make_private_directory, write_atomic

log = logging.getLogger(__name__)


def load_disabled(path: Path) -> set[str]:
    """The vetoed patches; an unreadable file is said and ignored (klpd still starts).

    Raises :class:`klpd.service.atomicfile.UnsafeDirectory` for a directory that others
    could write."""
    check_private_directory(path.parent)
    try:
        data = json.loads(path.read_text())
        return {str(n) for n in data.get("disabled", [])}
    except FileNotFoundError:
        return set()
    except (OSError, ValueError, AttributeError) as e:
        log.error("ignoring unreadable %s: %s", path, e)
        return set()


def save_disabled(path: Path, disabled: set[str]) -> None:
    make_private_directory(path.parent)
    write_atomic(path, json.dumps({"disabled": sorted(disabled)}) + "\n", mode=0o600)


class Overrides:
    """The operator's vetoes, saved on every change."""

    __slots__ = ("disabled", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.disabled = load_disabled(path)

    def disable(self, patch: str) -> None:
        if patch not in self.disabled:
            self.disabled.add(patch)
            save_disabled(self.path, self.disabled)

    def enable(self, patch: str) -> None:
        if patch in self.disabled:
            self.disabled.discard(patch)
            save_disabled(self.path, self.disabled)
