"""What the kernel did that klpd did not plan, read from two kernel states. Pure.

- a module that is coming (before 5.11 the ``add`` uevent precedes init);
- a disabled patch the kernel is still freeing (its sysfs directory, then its module
  reference, go in a work item after the transition: no uevent says when);
- patches wiped by an atomic-replace patch somebody else loaded.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from klpd.core.model import KernelState, PatchModule


def objects_coming(state: KernelState, wanted: Collection[str]) -> bool:
    """A wanted object is loaded but its init has not finished (``initstate`` coming)."""
    return any(m.initstate == "coming" for n, m in state.modules.items() if n in wanted)


def unsettled(
    state: KernelState, managed: Mapping[str, PatchModule], pinned: Collection[str]
) -> list[str]:
    """Managed modules the kernel is still freeing after a disable: the sysfs directory goes
    first, then the module reference (klp_free_patch_finish). One still referenced for good
    is pinned — a forced unpatching — and no longer waited for."""
    out = [
        name
        for name, lp in state.livepatches.items()
        if not lp.enabled and not lp.transition and name in managed
    ]
    out += [
        name
        for name, m in state.modules.items()
        if name in managed
        and name not in state.livepatches
        and name not in pinned
        and m.live
        and (m.refcnt or 0) > 0
    ]
    return out


@dataclass(frozen=True, slots=True)
class Wipe:
    gone: frozenset[str]  # managed patches seen applied that vanished, still loaded
    culprits: tuple[str, ...]  # the replace patch (what is still enabled and not ours)


def wiped_by_replace(
    state: KernelState,
    *,
    applied_seen: Collection[str],
    loaded_by_us: Collection[str],
    disabling: Collection[str],
    managed: Mapping[str, PatchModule],
    applied: AbstractSet[str] | None = None,
) -> Wipe | None:
    """Patches that vanished without klpd disabling them: an atomic-replace patch wipes
    every patch enabled before it, so what is still enabled is the culprit — or was loaded
    after it, which only klpd itself would have done (``loaded_by_us``). ``applied``: the
    enabled livepatches of ``state``, when the caller has them already."""
    now_applied = (
        applied if applied is not None else {n for n, lp in state.livepatches.items() if lp.enabled}
    )
    gone = frozenset(
        n
        for n in set(applied_seen) - now_applied - set(disabling)
        if n in state.modules and n in managed
    )
    if not gone:
        return None
    return Wipe(gone=gone, culprits=tuple(sorted(now_applied - set(loaded_by_us))))
