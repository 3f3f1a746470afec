"""What crosses the D-Bus boundary: klpd's data as wire types, and the callers' arguments
validated before anything else sees them (a bad one is :class:`InvalidArgument`, never a
traceback). The interface (:mod:`klpd.dbus.service`) uses these and nothing else converts.
"""

# No "from __future__ import annotations": see klpd.dbus.signatures.

import math
from typing import Any

from dbus_fast import Variant

from klpd.core.names import NameError_, validate_patch_name
from klpd.core.status import PatchReport, Snapshot
from klpd.dbus import names
from klpd.dbus.errors import InvalidArgument

ModuleWire = tuple[str, str, str, bool, bool, str]
PatchWire = tuple[str, str, bool, str, int, str, list[ModuleWire]]
BlockingWire = tuple[int, str, int, str]
_PLAN_OPTIONS = {"rescan": "b", "enable": "as", "disable": "as"}


def patch_to_wire(p: PatchReport) -> PatchWire:
    modules = [
        (m.module, m.obj, m.status.value, m.object_loaded, m.loaded, m.error) for m in p.modules
    ]
    return (p.name, p.status.value, p.desired, p.series, p.version, p.description, modules)


def properties_of(snap: Snapshot) -> dict[str, Any]:
    """The D-Bus property values of a snapshot (what PropertiesChanged compares)."""
    t = snap.transition
    return {
        "State": snap.state.value,
        "KernelRelease": snap.kernel_release,
        "Transition": t.module if t else "",
        "TransitionTarget": t.target if t else "",
        "Stalled": bool(t and t.stalled),
        "LastError": snap.last_error,
        "LastReconcile": float(snap.last_reconcile),
    }


def valid_patch(name: str) -> str:
    try:
        return validate_patch_name(name)
    except NameError_ as e:
        raise InvalidArgument(str(e)) from None


def plan_options(options: dict[str, Variant]) -> tuple[bool, list[str], list[str]]:
    """Plan()'s options: ``rescan`` (b), ``enable`` and ``disable`` (as); nothing else."""
    unknown = set(options) - set(_PLAN_OPTIONS)
    if unknown:
        raise InvalidArgument(f"unknown Plan() options: {', '.join(sorted(unknown))}")
    for key, value in options.items():
        if value.signature != _PLAN_OPTIONS[key]:
            raise InvalidArgument(
                f"Plan() option {key!r} must be of type {_PLAN_OPTIONS[key]!r}, "
                f"not {value.signature!r}"
            )
    rescan = bool(options["rescan"].value) if "rescan" in options else False
    enable = [valid_patch(n) for n in options["enable"].value] if "enable" in options else []
    disable = [valid_patch(n) for n in options["disable"].value] if "disable" in options else []
    return rescan, enable, disable


def valid_timeout(timeout: float) -> float:
    if not math.isfinite(timeout) or not 0.0 <= timeout <= names.WAIT_MAX_SECONDS:
        raise InvalidArgument(
            f"timeout must be between 0 and {names.WAIT_MAX_SECONDS:.0f} seconds, not {timeout!r}"
        )
    return timeout
