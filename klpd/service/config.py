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
import re
import string
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from klpd.core.model import RemovalPolicy
from klpd.core.names import NameError_, validate_patch_name

log = logging.getLogger(__name__)

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


# --- sections ---------------------------------------------------------------------------


class CatalogConfig(_Section):
    """Where installed livepatch modules (`<patch>__<object>.ko[.xz|.zst|.gz]`) are found."""

    directories: list[str] = Field(
        default=[],
        description=(
            "Directories searched (recursively) for livepatch modules. `{release}` is "
            "replaced by the kernel release. Empty means "
            f'["{DEFAULT_CATALOG_DIRECTORY}"].'
        ),
    )

    @field_validator("directories")
    @classmethod
    def _check_directories(cls, value: list[str]) -> list[str]:
        for d in value:
            _absolute(d, "a catalog directory")
            try:
                fields = [f for _, f, _, _ in string.Formatter().parse(d) if f is not None]
            except ValueError as e:
                raise ValueError(f"{d!r}: {e}") from None
            if any(f != "release" for f in fields):
                raise ValueError(f"{d!r}: the only placeholder allowed is {{release}}")
        return value

    def resolve(self, release: str) -> list[str]:
        """The directories to scan on kernel ``release``."""
        dirs = self.directories or [DEFAULT_CATALOG_DIRECTORY]
        return [d.replace("{release}", release) for d in dirs]


class PatchesConfig(_Section):
    """Which installed patches klpd applies."""

    desired: list[str] = Field(
        default=[],
        description=(
            "Patches to apply. Empty means every installed patch, the newest version of "
            "each cumulative series."
        ),
    )
    exclude: list[str] = Field(
        default=[],
        description="Patches never applied, even when `desired` is empty; loaded ones are retired.",
    )
    pin: dict[str, int] = Field(
        default={},
        description=(
            "Series pinned to a version (`series = version`): that version is applied "
            "instead of the newest, e.g. `{ lp_cve_2026_1234 = 2 }`."
        ),
    )

    @field_validator("desired", "exclude")
    @classmethod
    def _check_names(cls, value: list[str]) -> list[str]:
        return [_patch_name(n) for n in value]

    @field_validator("pin")
    @classmethod
    def _check_pin(cls, value: dict[str, int]) -> dict[str, int]:
        out: dict[str, int] = {}
        for series, version in value.items():
            if version < 1:
                raise ValueError(f"version of series {series!r} must be >= 1, got {version}")
            out[_patch_name(series)] = version
        return out


class PolicyConfig(_Section):
    """What klpd does when the world changes under an applied patch."""

    on_object_removed: Annotated[RemovalPolicy, Field(strict=False)] = Field(
        default=RemovalPolicy.KEEP,
        description=(
            "When module `<m>` is removed: `keep` leaves `<patch>__<m>` loaded, so the "
            "kernel patches `<m>` itself on its next load (no unpatched window; costs the "
            "module's memory); `remove` disables and unloads it (the POC's rule)."
        ),
    )


class TransitionConfig(_Section):
    """Livepatch transitions: how klpd waits for them and what it does when one stalls."""

    poll_interval: float = Field(
        default=0.1,
        gt=0,
        description="Seconds between reads of `transition` while one is in progress "
        "(never polled when idle).",
    )
    stall_timeout: float = Field(
        default=15.0,
        gt=0,
        description="Seconds a transition may run before it counts as stalled and "
        "`on_stall` applies (kpatch waits 15 s).",
    )
    on_stall: Literal["wait", "revert", "force"] = Field(
        default="revert",
        description=(
            "What to do with a stalled transition: `wait` keeps waiting (reporting the "
            "blocking tasks), `revert` reverses it, `force` writes `force` — which makes "
            "the module unremovable until reboot; only set it knowingly."
        ),
    )
    revert_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Seconds a reverting transition may take before klpd gives up on it and "
        "reports the module failed.",
    )


class RetryConfig(_Section):
    """Retries of module loads and removals."""

    ebusy_attempts: int = Field(
        default=5,
        ge=1,
        description="Attempts of a load or disable that fails with EBUSY (another "
        "transition is running) before it counts as failed.",
    )
    ebusy_backoff: float = Field(
        default=0.2,
        ge=0,
        description="Seconds before the first EBUSY retry; doubled after each attempt.",
    )
    ebusy_backoff_max: float = Field(
        default=2.0,
        ge=0,
        description="Upper bound, in seconds, of the EBUSY retry delay.",
    )
    modprobe_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Seconds a `modprobe` or `rmmod` may run before it is killed.",
    )

    @model_validator(mode="after")
    def _check_backoff(self) -> Self:
        if self.ebusy_backoff_max < self.ebusy_backoff:
            raise ValueError(
                f"ebusy_backoff_max ({self.ebusy_backoff_max}) must be >= ebusy_backoff "
                f"({self.ebusy_backoff})"
            )
        return self

    def backoff(self, attempt: int) -> float:
        """The delay after failed attempt ``attempt`` (1-based)."""
        delay: float = self.ebusy_backoff * 2.0 ** (attempt - 1)
        return min(delay, self.ebusy_backoff_max)


class KernelConfig(_Section):
    """How klpd reaches the kernel; other values are for tests and containers."""

    sysfs_root: str = Field(default="/sys", description="Where sysfs is mounted.")
    proc_root: str = Field(default="/proc", description="Where procfs is mounted.")
    release: str = Field(
        default="",
        description="Kernel release for `{release}`. Empty means read "
        "`<proc_root>/sys/kernel/osrelease`.",
    )
    modprobe: list[str] = Field(
        default=["/usr/sbin/modprobe"],
        description="Command that loads a module (the module name is appended).",
    )
    rmmod: list[str] = Field(
        default=["/usr/sbin/rmmod"],
        description="Command that removes a module (the module name is appended).",
    )

    @field_validator("sysfs_root", "proc_root")
    @classmethod
    def _check_root(cls, value: str) -> str:
        return _absolute(value, "a mount point")

    @field_validator("release")
    @classmethod
    def _check_release(cls, value: str) -> str:
        if "/" in value or value.strip() != value:
            raise ValueError(f"not a kernel release: {value!r}")
        return value

    @field_validator("modprobe", "rmmod")
    @classmethod
    def _check_command(cls, value: list[str]) -> list[str]:
        return _command(value)

    def read_release(self) -> str:
        """``release``, or the running kernel's (raises :class:`ConfigError` if unreadable)."""
        if self.release:
            return self.release
        path = Path(self.proc_root) / "sys/kernel/osrelease"
        try:
            return path.read_text().strip()
        except OSError as e:
            raise ConfigError(f"cannot read the kernel release from {path}: {e}") from e


class EventsConfig(_Section):
    """The module uevent source."""

    source: Literal["udev"] = Field(
        default="udev", description="Where module add/remove events come from."
    )
    receive_buffer: int = Field(
        default=MIB,
        ge=4096,
        description=(
            "Netlink receive buffer (SO_RCVBUF) in bytes; a burst larger than this is lost "
            "and triggers a full reconcile. Above net.core.rmem_max the kernel caps it "
            "unless klpd has CAP_NET_ADMIN, which the shipped unit does not grant."
        ),
    )


class DBusConfig(_Section):
    """The D-Bus service."""

    bus: str = Field(
        default="system",
        description='`"system"`, `"session"`, or a D-Bus address '
        '(e.g. `"unix:path=/run/klpd/bus"`).',
    )
    enabled: bool = Field(default=True, description="Offer the D-Bus API.")

    @field_validator("bus")
    @classmethod
    def _check_bus(cls, value: str) -> str:
        if value in ("system", "session"):
            return value
        if all(_DBUS_ADDRESS.fullmatch(part) for part in value.split(";") if part) and value:
            return value
        raise ValueError(
            f'expected "system", "session" or a D-Bus address like '
            f'"unix:path=/run/bus", got {value!r}'
        )


class LoggingConfig(_Section):
    """Logging."""

    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Least severe level logged."
    )
    target: Literal["auto", "journal", "stderr"] = Field(
        default="auto",
        description="`journal` (structured fields), `stderr`, or `auto`: the journal when "
        "stderr is connected to it (systemd's `JOURNAL_STREAM`).",
    )


class MetricsConfig(_Section):
    """Prometheus node_exporter textfile output."""

    textfile: str = Field(
        default="",
        description=(
            "A `.prom` file rewritten atomically on each state change, in node_exporter's "
            'textfile directory, e.g. "/var/lib/prometheus/node-exporter/klpd.prom". Empty '
            "disables it. The unit's ProtectSystem=strict needs that directory added with a "
            "drop-in: `ReadWritePaths=/var/lib/prometheus/node-exporter`."
        ),
    )

    @field_validator("textfile")
    @classmethod
    def _check_textfile(cls, value: str) -> str:
        if value:
            _absolute(value, "the metrics textfile")
            if not value.endswith(".prom"):
                raise ValueError(f"node_exporter reads only *.prom files, got {value!r}")
        return value


class SoftdepConfig(_Section):
    """modprobe.d softdeps that load `<patch>__<m>` before `<m>` (closes the unpatched
    window for loads through modprobe/libkmod)."""

    enabled: bool = Field(
        default=False,
        description="Write `softdep <m> pre: <patch>__<m>` lines for patch modules that do "
        "not depend on `<m>`'s symbols.",
    )
    path: str = Field(
        default="/run/modprobe.d/klpd.conf",
        description="The modprobe.d file klpd owns and rewrites.",
    )

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        _absolute(value, "the softdep file")
        if not value.endswith(".conf"):
            raise ValueError(f"modprobe reads only *.conf files in modprobe.d, got {value!r}")
        return value


class StateConfig(_Section):
    """Persistent state."""

    directory: str = Field(
        default="/var/lib/klpd",
        description="Where operator overrides (`klpctl disable`) are persisted.",
    )

    @field_validator("directory")
    @classmethod
    def _check_directory(cls, value: str) -> str:
        return _absolute(value, "the state directory")


class InspectConfig(_Section):
    """Reading each module's `struct klp_patch` before loading it."""

    undeterminable: Literal["refuse", "warn"] = Field(
        default="refuse",
        description="A module whose atomic-replace flag or objects cannot be read from its "
        "file: `refuse` it, or load it with a `warn`ing (an atomic-replace patch replaces "
        "every livepatch on the system).",
    )


class BootGuardConfig(_Section):
    """The boot-loop guard: a module loaded shortly before the machine went down is
    quarantined (not loaded again until `klpctl enable` clears it)."""

    enabled: bool = Field(default=True, description="Record each load; quarantine on a crash.")
    grace_period: float = Field(
        default=60.0,
        ge=0,
        description="Seconds a module must have been applied, with the machine up, before "
        "its load record is closed.",
    )


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
        return f"{source}: {loc}: unknown key"
    msg = str(err["msg"]).removeprefix("Value error, ")
    shown = "" if err["type"] == "value_error" else f" (got {err['input']!r})"
    return f"{source}: {loc}: {msg}{shown}"


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
    "DEFAULT_PATH",
    "CatalogConfig",
    "Config",
    "ConfigError",
    "DBusConfig",
    "EventsConfig",
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
