"""Operator overrides (``klpctl disable P``): the patches an operator vetoed, persisted in
``state.directory/overrides.json`` so the veto outlives restarts and reboots."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def load_disabled(path: Path) -> set[str]:
    """The vetoed patches; an unreadable file is said and ignored (klpd still starts)."""
    try:
        data = json.loads(path.read_text())
        return {str(n) for n in data.get("disabled", [])}
    except FileNotFoundError:
        return set()
    except (OSError, ValueError, AttributeError) as e:
        log.error("ignoring unreadable %s: %s", path, e)
        return set()


def save_disabled(path: Path, disabled: set[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"disabled": sorted(disabled)}) + "\n")
    os.replace(tmp, path)


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
