"""The sections that say where klpd runs: the kernel's roots and tools, events, D-Bus,
logging, metrics, softdep pre-arming and its state directory."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from klpd.service.config_base import (
    _DBUS_ADDRESS,
    MIB,
    ConfigError,
    _absolute,
    _command,
    _Section,
)


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
            "A `.prom` file rewritten atomically (mode 0644) on each state change. Under the "
            "shipped unit, either Debian's node_exporter textfile directory "
            '("/var/lib/prometheus/node-exporter/klpd.prom") with the drop-in '
            "`ReadWritePaths=/var/lib/prometheus/node-exporter` (README: Metrics), or "
            '"/run/klpd/metrics/klpd.prom", writable as shipped, with node_exporter\'s '
            "`--collector.textfile.directory` pointed there. klpd has no CAP_DAC_OVERRIDE: "
            "the directory must be root's, not the prometheus user's. Empty disables it."
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
        default="/run/klpd/softdep.conf",
        description="The softdep file klpd owns and rewrites; modprobe reads it through the "
        "symlink /run/modprobe.d/klpd.conf that klpd's tmpfiles.d line makes (so the unit "
        "never needs /run/modprobe.d writable). Without that link, point it into a "
        "modprobe.d directory.",
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
