"""A dry run: what a reconcile would do now, or after a rescan or an operator change. Pure.

``Plan()`` on D-Bus and ``klpctl plan`` serve it: a fleet agent's check mode (Ansible's
``--check``) asks before it changes anything. The answer is the planner's whole list for
the kernel as it is now; the orchestrator runs the same list one action at a time, reading
the kernel again after each, so the real run can only differ where the kernel changes
under it (a module loaded meanwhile, a load that fails).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from klpd.core.model import Action, Catalog, KernelState, RemovalPolicy
from klpd.core.planner import NotDesired, Unwanted, plan, select_desired

PLAN_SCHEMA_VERSION = 1


class UnknownPatches(ValueError):
    """Patches named in a dry run that the (rescanned) catalog does not have."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__(f"no installed patch named {', '.join(repr(n) for n in names)}")
        self.names = tuple(names)


@dataclass(frozen=True, slots=True)
class Selection:
    """The configuration's choice of patches (``[patches]``)."""

    explicit: Sequence[str] = ()
    exclude: Iterable[str] = ()
    pin: Mapping[str, int] | None = None


@dataclass(frozen=True, slots=True)
class PlanPreview:
    rescan: bool
    actions: tuple[Action, ...]
    desired: frozenset[str]
    notes: Mapping[str, NotDesired]
    catalog: Catalog
    transition: str  # a transition running now: the real run waits for it first

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": PLAN_SCHEMA_VERSION,
            "rescan": self.rescan,
            "transition": self.transition or None,
            "actions": [
                {
                    "kind": str(a.kind),
                    "module": a.module,
                    "patch": a.patch,
                    "object": a.obj,
                    "reason": str(a.reason),
                    "text": str(a),
                }
                for a in self.actions
            ],
            "patches": [
                {
                    "name": p.name,
                    "series": p.series,
                    "version": p.version,
                    "desired": p.name in self.desired,
                    "note": str(self.notes.get(p.name, "")),
                    "disabled": _reason(self.notes, p.name) is Unwanted.DISABLED,
                }
                for p in sorted(self.catalog.patches.values(), key=lambda p: p.name)
            ],
        }


def _reason(notes: Mapping[str, NotDesired], patch: str) -> Unwanted | None:
    note = notes.get(patch)
    return None if note is None else note.reason


def preview(
    catalog: Catalog,
    state: KernelState,
    *,
    selection: Selection,
    disabled: frozenset[str],
    refused: Mapping[str, str],
    avoid: frozenset[str],
    policy: RemovalPolicy,
    rescan: bool = False,
    enable: Sequence[str] = (),
    disable: Sequence[str] = (),
) -> PlanPreview:
    """The plan for ``catalog`` (already rescanned when ``rescan``) after ``enable`` /
    ``disable``. ``avoid`` is what the real run would not retry: a reload forgets failures,
    an enable forgets its patch's, so the caller passes what is left after those."""
    unknown = [n for n in (*enable, *disable) if n not in catalog.patches]
    if unknown:
        raise UnknownPatches(unknown)
    off = (disabled - set(enable)) | set(disable)
    chosen = select_desired(
        catalog,
        explicit=selection.explicit,
        exclude=selection.exclude,
        pin=selection.pin,
        disabled=off,
        refused=refused,
    )
    forgiven = {pm.module for n in enable for pm in catalog.patches[n].modules.values()}
    actions = plan(catalog, state, chosen.desired, policy, avoid - forgiven, frozenset(refused))
    return PlanPreview(
        rescan=rescan,
        actions=tuple(actions),
        desired=chosen.desired,
        notes=chosen.notes,
        catalog=catalog,
        transition=state.transition.name if state.transition else "",
    )


__all__ = ["PLAN_SCHEMA_VERSION", "PlanPreview", "Selection", "UnknownPatches", "preview"]
