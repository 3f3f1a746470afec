"""The ground the configuration sections stand on: the strict base model, the error type
and the small validators the sections share (:mod:`klpd.service.config`)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from klpd.core.names import NameError_, validate_patch_name

DEFAULT_PATH = Path("/etc/klpd/klpd.toml")
DEFAULT_CATALOG_DIRECTORY = "/lib/modules/{release}"
MIB = 1024 * 1024


class ConfigError(Exception):
    """A configuration klpd will not run with; the message names file, key and expectation."""


class _Section(BaseModel):
    # strict: TOML already has types, so a string where a number belongs is a mistake to
    # report, not to coerce.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


# --- small validators -------------------------------------------------------------------


def _absolute(value: str, what: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"{what} must be an absolute path, got {value!r}")
    return value


def _command(argv: list[str]) -> list[str]:
    if not argv or not argv[0]:
        raise ValueError('expected a non-empty command, e.g. ["/usr/sbin/modprobe"]')
    if "/" in argv[0] and not argv[0].startswith("/"):
        raise ValueError(f"the program {argv[0]!r} must be an absolute path or a bare command name")
    if any(not a for a in argv):
        raise ValueError("command arguments must not be empty strings")
    return argv


def _patch_name(name: str) -> str:
    try:
        return validate_patch_name(name)
    except NameError_ as e:
        raise ValueError(str(e)) from None


# One D-Bus address: "transport:key=value,key=value"; several may be joined with ";".
_DBUS_ADDRESS = re.compile(r"[A-Za-z0-9_-]+:([^,;=]+=[^,;=]*(,[^,;=]+=[^,;=]*)*)?")
