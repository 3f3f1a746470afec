"""The sections that say what klpd does: which patches, what to do when the world changes,
transitions and retries, inspection and the boot-loop guard."""

from __future__ import annotations

import string
from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator

from klpd.core.model import RemovalPolicy
from klpd.service.config_base import (
    DEFAULT_CATALOG_DIRECTORY,
    _absolute,
    _patch_name,
    _Section,
)


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
    ready_timeout: float = Field(
        default=60.0,
        ge=0,
        description=(
            "Seconds klpd waits at start-up for its first reconcile to settle before it "
            "reports READY=1, so that what is ordered after klpd (`network-pre.target`) "
            "starts with the patches applied; after that READY=1 is sent anyway (still "
            "converging). 0 reports ready as soon as the bus name is owned."
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
