"""klpd's configuration: one frozen pydantic model per TOML section.

Every setting is declared exactly once, here: its type, default, constraints and the
description that :func:`klpd.service.configdoc.render_default_toml` (the shipped
``etc/klpd/klpd.toml``) and
:func:`klpd.service.configdoc.config_docs` (``docs/config.md``) are generated from.

Validation is strict: ``"5"`` is not a number and ``1`` is not a boolean. A bad file is a
:class:`ConfigError` naming the file, the dotted key and what was expected; klpd refuses to
start rather than guess, and a reload keeps the running configuration
(:func:`reload_config`).
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from klpd.service.config_base import (
    DEFAULT_CATALOG_DIRECTORY,
    DEFAULT_PATH,
    MIB,
    ConfigError,
    _Section,
)
from klpd.service.config_host import (
    DBusConfig,
    EventsConfig,
    KernelConfig,
    LoggingConfig,
    MetricsConfig,
    SoftdepConfig,
    StateConfig,
)
from klpd.service.config_policy import (
    BootGuardConfig,
    CatalogConfig,
    InspectConfig,
    PatchesConfig,
    PolicyConfig,
    RetryConfig,
    TransitionConfig,
)

log = logging.getLogger(__name__)


class Config(_Section):
    """The whole file; every section is optional."""

    catalog: CatalogConfig = CatalogConfig()
    patches: PatchesConfig = PatchesConfig()
    policy: PolicyConfig = PolicyConfig()
    transition: TransitionConfig = TransitionConfig()
    retry: RetryConfig = RetryConfig()
    kernel: KernelConfig = KernelConfig()
    events: EventsConfig = EventsConfig()
    dbus: DBusConfig = DBusConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    softdep: SoftdepConfig = SoftdepConfig()
    state: StateConfig = StateConfig()
    inspect: InspectConfig = InspectConfig()
    boot_guard: BootGuardConfig = BootGuardConfig()

    def with_overrides(self, overrides: Mapping[str, Mapping[str, Any]]) -> Config:
        """A copy with ``{"section": {"key": value}}`` applied and validated."""
        data = self.model_dump()
        for section, values in overrides.items():
            data.setdefault(section, {}).update(values)
        return _validate(data, "<overrides>")


# --- loading ----------------------------------------------------------------------------


def _format_error(source: str, err: Mapping[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"] if p != "[key]") or "(top level)"
    if err["type"] == "extra_forbidden":
        return _printable(f"{source}: {loc}: unknown key")
    msg = str(err["msg"]).removeprefix("Value error, ")
    shown = "" if err["type"] == "value_error" else f" (got {err['input']!r})"
    return _printable(f"{source}: {loc}: {msg}{shown}")


def _printable(line: str) -> str:
    """One line, escapes for control characters: a key such as "\\r" in a file must neither
    split the error nor reach a terminal or the journal raw (found by the config fuzz)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)


def _validate(data: Mapping[str, Any], source: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError("\n".join(_format_error(source, err) for err in e.errors())) from None


def parse_config(text: str, source: str = "<string>") -> Config:
    """Validate TOML ``text``; ``source`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: invalid TOML: {e}") from None
    config = _validate(data, source)
    if config.transition.on_stall == "force":
        log.warning(
            '%s: transition.on_stall = "force": a stalled transition will be forced, which '
            "makes its module unremovable until reboot",
            source,
        )
    return config


def load_config(path: Path | None) -> Config:
    """The configuration in ``path``.

    ``None`` reads :data:`DEFAULT_PATH` if it exists and gives the defaults otherwise; a
    ``path`` given explicitly must exist.
    """
    if path is None:
        if not DEFAULT_PATH.exists():
            return Config()
        path = DEFAULT_PATH
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    return parse_config(text, str(path))


def reload_config(path: Path | None, current: Config) -> tuple[Config, str | None]:
    """The new configuration and None, or ``current`` and the reason the file was refused."""
    try:
        return load_config(path), None
    except ConfigError as e:
        return current, str(e)


# --- the generated file and docs --------------------------------------------------------


__all__ = [
    "DEFAULT_CATALOG_DIRECTORY",
    "DEFAULT_PATH",
    "MIB",
    "BootGuardConfig",
    "CatalogConfig",
    "Config",
    "ConfigError",
    "DBusConfig",
    "EventsConfig",
    "InspectConfig",
    "KernelConfig",
    "LoggingConfig",
    "MetricsConfig",
    "PatchesConfig",
    "PolicyConfig",
    "RetryConfig",
    "SoftdepConfig",
    "StateConfig",
    "TransitionConfig",
    "load_config",
    "parse_config",
    "reload_config",
]
