"""The replace guard: an atomic-replace livepatch wipes every other livepatch on the system
(DOMAIN.md, measured on 6.1 and 6.12), so klpd refuses them and notices when one got loaded
anyway.

Two ways to notice: sysfs ``replace=1`` (6.11+), or, on any kernel, patches klpd saw applied
that vanished without klpd disabling them (:func:`klpd.core.observe.wiped_by_replace`). The
guard remembers what was applied and what this process loaded itself; it decides, the
orchestrator acts (refuse the culprit, replan: the planner restores the wiped patches).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from klpd.core.model import KernelState, PatchModule
from klpd.core.observe import wiped_by_replace


@dataclass(frozen=True, slots=True)
class Refusal:
    patch: str
    why: str
    what: str = "atomic-replace"  # what kind of refusal, for logs and events


@dataclass(frozen=True, slots=True)
class Findings:
    refusals: tuple[Refusal, ...] = ()
    wipe: str = ""  # what to say loudly when patches were wiped ("" when none were)


class ReplaceGuard:
    __slots__ = ("applied_seen", "loaded_by_us")

    def __init__(self) -> None:
        self.applied_seen: set[str] = set()  # enabled at the last look
        self.loaded_by_us: set[str] = set()  # this process's own loads, still applied

    def observe(
        self,
        state: KernelState,
        managed: Mapping[str, PatchModule],
        refused: Collection[str],
    ) -> Findings:
        """Look at a fresh kernel state: which managed patches to refuse, and whether an
        atomic-replace patch wiped the others since the last look."""
        refusals: list[Refusal] = []
        for name, lp in state.livepatches.items():
            pm = managed.get(name)
            if lp.replace and pm is not None and pm.patch not in refused:
                refusals.append(Refusal(pm.patch, f"sysfs shows {name} replace=1"))
        wipe = wiped_by_replace(
            state,
            applied_seen=self.applied_seen,
            loaded_by_us=self.loaded_by_us,
            disabling=(),  # a disable runs to its end inside one step: never seen half-way
            managed=managed,
        )
        message = ""
        if wipe is not None:
            message = (
                f"livepatches {', '.join(sorted(wipe.gone))} were replaced by an atomic-replace "
                f"patch ({', '.join(wipe.culprits) or 'unknown'}); restoring them"
            )
            refusals += [Refusal(managed[c].patch, message) for c in wipe.culprits if c in managed]
        self.applied_seen = {n for n, lp in state.livepatches.items() if lp.enabled}
        return Findings(tuple(refusals), message)

    def check_loaded(self, patch: str, module: str, replace: bool) -> Refusal | None:
        """A module klpd just loaded turned out to be an atomic-replace patch."""
        if replace:
            return Refusal(patch, f"{module} is an atomic-replace patch")
        return None

    def applied(self, module: str) -> None:
        """klpd loaded ``module`` and its transition completed."""
        self.applied_seen.add(module)
        self.loaded_by_us.add(module)

    def taken_away(self, module: str) -> None:
        """klpd disabled ``module``: its vanishing is no wipe."""
        self.applied_seen.discard(module)
        self.loaded_by_us.discard(module)
