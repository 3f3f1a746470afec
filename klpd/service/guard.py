"""The replace guard: an atomic-replace livepatch wipes every other livepatch on the system
(DOMAIN.md, measured on 6.1 and 6.12), so klpd refuses them and notices when one got loaded
anyway.

Ways to notice: sysfs ``replace=1`` (6.11+); the module file's own ``struct klp_patch``
(inspection, for the patches klpd manages); or, on any kernel, patches klpd saw applied
that vanished without klpd disabling them (:func:`klpd.core.observe.wiped_by_replace`). The
guard remembers what was applied and what this process loaded itself; it decides, the
orchestrator acts (refuse the culprit, replan: the planner restores the wiped patches).

Naming the culprit of a wipe: an atomic-replace patch is one of the patches still enabled
after it. Known replace patches first (sysfs, inspection); then what is enabled and not
loaded by klpd; and when klpd loaded every one of them, klpd's most recent load (the wipe
happens when the replace patch's transition ends, and klpd loads one module at a time and
looks after each). A replace patch stays reported (the state is DEGRADED) while it is
applied.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
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
    replace_applied: frozenset[str] = frozenset()  # atomic-replace livepatches enabled now


class ReplaceGuard:
    __slots__ = ("_looked", "applied_seen", "loaded_by_us", "replace_seen")

    def __init__(self) -> None:
        self.applied_seen: set[str] = set()  # enabled, out of transition, at the last look
        # this process's own loads, still applied, oldest first (a dict: an ordered set)
        self.loaded_by_us: dict[str, None] = {}
        self.replace_seen: set[str] = set()  # known atomic-replace patches, enabled
        # the last state looked at, and its enabled, settled and replace=1 livepatches
        self._looked: tuple[KernelState, set[str], set[str], set[str]] | None = None

    def observe(
        self,
        state: KernelState,
        managed: Mapping[str, PatchModule],
        refused: Collection[str],
        replace_known: Collection[str] = (),
    ) -> Findings:
        """Look at a fresh kernel state: which managed patches to refuse, and whether an
        atomic-replace patch wiped the others since the last look. ``replace_known``: enabled
        livepatches whose module file says atomic-replace."""
        refusals: list[Refusal] = []
        enabled, settled, replace_attr = self._sorted_out(state)
        known = (replace_attr | (set(replace_known) | self.replace_seen)) & enabled
        for name in replace_attr:
            pm = managed.get(name)
            if pm is not None and pm.patch not in refused:
                refusals.append(Refusal(pm.patch, f"sysfs shows {name} replace=1"))
        wipe = wiped_by_replace(
            state,
            applied_seen=self.applied_seen,
            loaded_by_us=self.loaded_by_us,
            disabling=(),  # a disable runs to its end inside one step: never seen half-way
            managed=managed,
            applied=enabled,
        )
        message = ""
        if wipe is not None:
            culprits = sorted(known) or list(wipe.culprits) or self._latest_ours(enabled)
            known |= set(culprits)
            message = (
                f"livepatches {', '.join(sorted(wipe.gone))} were replaced by an atomic-replace "
                f"patch ({', '.join(culprits) or 'unknown'}); restoring them"
            )
            refusals += [Refusal(managed[c].patch, message) for c in culprits if c in managed]
        for name in sorted(known):
            pm = managed.get(name)
            if pm is not None and pm.patch not in refused:
                refusals.append(Refusal(pm.patch, f"{name} is an applied atomic-replace patch"))
        # Only patches whose transition has ended: an atomic-replace patch wipes those, and
        # a patch still in transition may be reverted (a stall policy: ours or an admin's)
        # — it then vanishes with no replace patch anywhere (the soak found this).
        self.applied_seen = set(settled)  # (applied() and taken_away() change it)
        self.replace_seen = known
        return Findings(_unique(refusals), message, frozenset(known))

    def _sorted_out(self, state: KernelState) -> tuple[set[str], set[str], set[str]]:
        """The livepatches enabled, enabled and out of transition, and showing replace=1;
        from the last look's where the kernel view says what it read again since."""
        looked = self._looked
        reread = state.reread_since(looked[0]) if looked is not None else None
        if looked is None or reread is None:
            enabled, settled, replace = _enabled_settled_replace(state)
        else:
            enabled, settled, replace = looked[1], looked[2], looked[3]
            for name in reread:
                enabled.discard(name)
                settled.discard(name)
                replace.discard(name)
                lp = state.livepatches.get(name)
                if lp is not None and lp.replace:
                    replace.add(name)
                if lp is not None and lp.enabled:
                    enabled.add(name)
                    if not lp.transition:
                        settled.add(name)
        self._looked = (state, enabled, settled, replace)
        return enabled, settled, replace

    def _latest_ours(self, enabled: Collection[str]) -> list[str]:
        ours = [m for m in self.loaded_by_us if m in enabled]
        return ours[-1:]

    def check_loaded(self, patch: str, module: str, replace: bool) -> Refusal | None:
        """A module klpd just loaded turned out to be an atomic-replace patch."""
        if replace:
            return Refusal(patch, f"{module} is an atomic-replace patch")
        return None

    def applied(self, module: str) -> None:
        """klpd loaded ``module`` and its transition completed."""
        self.applied_seen.add(module)
        self.loaded_by_us.pop(module, None)
        self.loaded_by_us[module] = None

    def taken_away(self, module: str) -> None:
        """klpd disabled ``module``: its vanishing is no wipe."""
        self.applied_seen.discard(module)
        self.loaded_by_us.pop(module, None)


def _enabled_settled_replace(state: KernelState) -> tuple[set[str], set[str], set[str]]:
    """The livepatches enabled, enabled and out of transition, and showing ``replace=1``:
    one pass over every livepatch (this runs after every action)."""
    enabled: set[str] = set()
    settled: set[str] = set()
    replace: set[str] = set()
    for name, lp in state.livepatches.items():
        if lp.replace:
            replace.add(name)
        if lp.enabled:
            enabled.add(name)
            if not lp.transition:
                settled.add(name)
    return enabled, settled, replace


def _unique(refusals: Sequence[Refusal]) -> tuple[Refusal, ...]:
    """One refusal per patch, the first given."""
    seen: dict[str, Refusal] = {}
    for r in refusals:
        seen.setdefault(r.patch, r)
    return tuple(seen.values())
