"""The planner: a pure function from (catalog, kernel state, desired patches) to actions.

Rules (see DOMAIN.md):
- ``P__vmlinux`` before any ``P__<obj>``: an object module is planned only after its main
  module, and the orchestrator stops a plan at the first failure.
- only objects that are loaded and ``live`` get their ``P__<obj>``; nothing is loaded twice.
- a module whose livepatch vanished while it stayed loaded (disabled, or wiped by an
  atomic-replace patch) is *stale*: it is unloaded, and loaded again if still wanted.
- a cumulative upgrade never leaves a loaded object unpatched: a retired patch is taken away
  only once its series' successor is applied (or planned to be) on every live object.
- atomic-replace modules are never loaded; one found applied is disabled and removed.
- what becomes of ``P__<m>`` when ``<m>`` goes is :class:`RemovalPolicy`.

The orchestrator applies the first action, reads the kernel again and plans again, so a plan
is always computed from the truth and a crash at any point is harmless.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from klpd.core.model import (
    Action,
    ActionKind,
    Catalog,
    KernelState,
    Patch,
    PatchModule,
    Reason,
    RemovalPolicy,
)
from klpd.core.names import VMLINUX


class Unwanted(StrEnum):
    """Why an installed patch is not desired."""

    SUPERSEDED = "superseded"  # a newer (or pinned) version of its series is
    REPLACE = "atomic-replace"  # declared atomic-replace (modinfo): would wipe every patch
    REFUSED = "refused"  # refused at run time (sysfs replace=1, a wipe, a pre-load hook)
    DISABLED = "disabled"  # an operator's ``klpctl disable``
    EXCLUDED = "excluded"  # ``patches.exclude``
    NOT_LISTED = "not-listed"  # ``patches.desired`` is set and does not name it

    @property
    def refusal(self) -> bool:
        return self in (Unwanted.REPLACE, Unwanted.REFUSED)


@dataclass(frozen=True, slots=True)
class NotDesired:
    reason: Unwanted
    detail: str = ""  # the successor's name, the refusal's why

    def __str__(self) -> str:
        match self.reason:
            case Unwanted.SUPERSEDED:
                return f"superseded by {self.detail}"
            case Unwanted.REPLACE:
                return "refused: atomic-replace patch (would replace every livepatch)"
            case Unwanted.REFUSED:
                return f"refused: {self.detail}"
            case Unwanted.DISABLED:
                return "disabled by an operator"
            case Unwanted.EXCLUDED:
                return "excluded by configuration"
            case Unwanted.NOT_LISTED:
                return "not in patches.desired"


@dataclass(frozen=True, slots=True)
class Selection:
    """Which patches are desired, and why the others are not."""

    desired: frozenset[str]
    notes: Mapping[str, NotDesired] = field(default_factory=dict)  # patch -> why not


def select_desired(
    catalog: Catalog,
    *,
    explicit: Sequence[str] = (),
    exclude: Iterable[str] = (),
    pin: Mapping[str, int] | None = None,
    disabled: Iterable[str] = (),
    refused: Mapping[str, str] | None = None,
) -> Selection:
    """By default every installed patch, the newest of each cumulative series winning.

    ``explicit`` replaces the default set; ``pin`` chooses a series' version instead of the
    newest; ``exclude`` and operator-``disabled`` patches are never desired; atomic-replace
    patches, and ``refused`` ones (patch -> why), are refused whatever the configuration says.
    """
    pin = pin or {}
    refused_now = dict(refused or {})
    notes: dict[str, NotDesired] = {}
    excluded, off = set(exclude), set(disabled) | set(refused_now)
    chosen: set[str] = set()
    if explicit:
        for name in explicit:
            if name in catalog.patches:
                chosen.add(name)
    else:
        best: dict[str, Patch] = {}
        for p in catalog.patches.values():
            if p.name in excluded or p.name in off or p.replace:
                continue
            want = pin.get(p.series)
            if want is not None and p.version != want:
                continue
            cur = best.get(p.series)
            if cur is None or (p.version, p.name) > (cur.version, cur.name):
                best[p.series] = p
        chosen = {p.name for p in best.values()}
        for p in catalog.patches.values():
            if p.name not in chosen and p.series in best and best[p.series].name != p.name:
                notes[p.name] = NotDesired(Unwanted.SUPERSEDED, best[p.series].name)
    for p in catalog.patches.values():
        if p.replace:
            notes[p.name] = NotDesired(Unwanted.REPLACE)
        elif p.name in refused_now:
            notes[p.name] = NotDesired(Unwanted.REFUSED, refused_now[p.name])
        elif p.name in off:
            notes[p.name] = NotDesired(Unwanted.DISABLED)
        elif p.name in excluded:
            notes[p.name] = NotDesired(Unwanted.EXCLUDED)
        elif explicit and p.name not in chosen:
            notes[p.name] = NotDesired(Unwanted.NOT_LISTED)
    never = excluded | off | {p.name for p in catalog.patches.values() if p.replace}
    desired = frozenset(chosen - never)
    return Selection(desired=desired, notes=notes)


def _loaded(state: KernelState, module: str) -> bool:
    return module in state.modules


def _applied(state: KernelState, module: str) -> bool:
    lp = state.livepatches.get(module)
    return lp is not None and lp.enabled


def _stale(state: KernelState, module: str) -> bool:
    """Loaded and live, but its livepatch is gone: only rmmod and a fresh load revive it.

    A module with a non-zero refcnt here was forced and can never be removed: leave it.
    """
    m = state.modules.get(module)
    if m is None or not m.live or module in state.livepatches:
        return False
    return m.refcnt in (None, 0)


def _act(kind: ActionKind, pm: PatchModule, reason: Reason) -> Action:
    return Action(kind=kind, module=pm.module, patch=pm.patch, obj=pm.obj, reason=reason)


def _ensure_loaded(
    out: list[Action],
    state: KernelState,
    pm: PatchModule,
    reason: Reason,
    avoid: frozenset[str],
) -> bool:
    """Plan what makes ``pm`` applied; True when it is (or will be, if the plan runs).

    A module in ``avoid`` (its last load failed) is not loaded again; a stale copy of it is
    still taken away, so what is left loaded is always a working livepatch.
    """
    if _applied(state, pm.module):
        return True
    if _stale(state, pm.module):
        out.append(_act(ActionKind.UNLOAD, pm, Reason.STALE))
        if pm.module in avoid:
            return False
        out.append(_act(ActionKind.LOAD, pm, Reason.RELOAD))
        return True
    if not _loaded(state, pm.module):
        if pm.module in avoid:
            return False
        out.append(_act(ActionKind.LOAD, pm, reason))
        return True
    # Loaded but not applied and not stale: coming, or being disabled. Wait for it.
    return False


def _take_away(out: list[Action], state: KernelState, pm: PatchModule, reason: Reason) -> None:
    if _applied(state, pm.module):
        out.append(_act(ActionKind.DISABLE, pm, reason))
        out.append(_act(ActionKind.UNLOAD, pm, reason))
    elif _stale(state, pm.module):
        out.append(_act(ActionKind.UNLOAD, pm, Reason.STALE))


def _plan_patch(
    out: list[Action],
    patch: Patch,
    state: KernelState,
    policy: RemovalPolicy,
    avoid: frozenset[str],
    arming: frozenset[str] = frozenset(),
) -> bool:
    """Plan one desired patch; True when, after the plan, every live object is covered.
    ``arming``: object modules just loaded by someone else while their object is absent
    (kmod's softdep pre-arming loads ``P__m`` right before ``m``): not taken away yet."""
    main = patch.main
    if main is None or not _ensure_loaded(out, state, main, Reason.MAIN_FIRST, avoid):
        return False
    complete = True
    loaded, livepatches = state.modules, state.livepatches
    for obj in patch.objects:
        pm = patch.modules[obj]
        target = loaded.get(obj)
        if target is not None and target.live:  # state.object_live(obj), inlined: per module
            lp = livepatches.get(pm.module)
            if lp is not None and lp.enabled:
                continue  # applied: the common case, once a patch is in
            if not _ensure_loaded(out, state, pm, Reason.OBJECT_LOADED, avoid):
                complete = False
        elif target is None:
            if policy is RemovalPolicy.REMOVE and pm.module in arming:
                complete = False  # its object is about to come
            elif policy is RemovalPolicy.REMOVE:
                _take_away(out, state, pm, Reason.OBJECT_GONE)
            elif _stale(state, pm.module):
                # Kept armed only while it is a working livepatch; a dead one goes.
                out.append(_act(ActionKind.UNLOAD, pm, Reason.STALE))
        else:
            complete = False  # object is coming or going: wait for it to settle
    return complete


def plan(
    catalog: Catalog,
    state: KernelState,
    desired: frozenset[str],
    policy: RemovalPolicy = RemovalPolicy.KEEP,
    avoid: frozenset[str] = frozenset(),
    refused: frozenset[str] = frozenset(),
    arming: frozenset[str] = frozenset(),
    memo: PatchMemo | None = None,
) -> list[Action]:
    """Every action that brings ``state`` to the desired one, in the order to run them.

    ``arming`` holds object modules that appeared while their object is absent, loaded by
    someone else a moment ago (softdep pre-arming: kmod loads ``P__m`` just before ``m``):
    the removal policy leaves them alone until the orchestrator drops them from the set.

    ``avoid`` holds modules whose last load failed: they are not tried again until the
    orchestrator clears them (their object reloaded, an operator's reload). ``refused``
    holds patches seen to be atomic-replace at run time (sysfs ``replace``, or other
    patches vanishing when they loaded): treated like a declared replace patch.

    ``memo``: the same plan, with each desired patch's part taken from the last plan where
    none of its modules and objects was read again since (:class:`PatchMemo`).
    """
    out: list[Action] = []
    if memo is not None:
        memo.begin(state, policy, avoid, arming)

    # 1. An atomic-replace patch of ours that got loaded anyway goes first; the patches it
    #    wiped are stale and get restored below.
    for patch in sorted(catalog.patches.values(), key=lambda p: p.name):
        if patch.replace or patch.name in refused:
            for pm in _objects_then_main(patch):
                _take_away(out, state, pm, Reason.REPLACE)

    # 2. Desired patches, older series versions first so an upgrade stacks on top.
    complete: dict[str, bool] = {}
    for patch in sorted(
        (
            catalog.patches[n]
            for n in desired
            if n in catalog.patches and n not in refused and not catalog.patches[n].replace
        ),
        key=lambda p: (p.series, p.version, p.name),
    ):
        if memo is None:
            complete[patch.name] = _plan_patch(out, patch, state, policy, avoid, arming)
        else:
            actions, complete[patch.name] = memo.patch(patch, state, policy, avoid, arming)
            out += actions

    # 3. Retire what is not desired, once its series successor covers every live object.
    for patch in sorted(catalog.patches.values(), key=lambda p: p.name):
        if (patch.name in desired and patch.name not in refused) or patch.replace:
            continue
        if patch.name in refused:
            continue
        successors = [
            n for n in desired if n in catalog.patches and catalog.patches[n].series == patch.series
        ]
        if any(not complete.get(n, False) for n in successors):
            continue
        for pm in _objects_then_main(patch):
            _take_away(out, state, pm, Reason.RETIRED)
    return out


class PatchMemo:
    """Each desired patch's part of the last plan (its actions, and whether it covers every
    live object), kept while nothing it is planned from changed: its modules and objects in
    the kernel state (as the state says what was read again since the last one:
    :meth:`KernelState.reread_since`), the removal policy, avoided and arming modules.
    After one action at 1,000 applied modules this is one patch planned again, not all."""

    __slots__ = ("_inputs", "_parts", "_state")

    def __init__(self) -> None:
        self._state: KernelState | None = None
        self._inputs: tuple[RemovalPolicy, frozenset[str], frozenset[str]] | None = None
        # patch name -> (the patch, its module and object names, its actions, complete)
        self._parts: dict[str, tuple[Patch, frozenset[str], tuple[Action, ...], bool]] = {}

    def begin(
        self,
        state: KernelState,
        policy: RemovalPolicy,
        avoid: frozenset[str],
        arming: frozenset[str],
    ) -> None:
        reread = state.reread_since(self._state) if self._state is not None else None
        inputs = (policy, avoid, arming)
        if reread is None or inputs != self._inputs:
            self._parts.clear()
        elif reread:
            stale = [n for n, part in self._parts.items() if not part[1].isdisjoint(reread)]
            for name in stale:
                del self._parts[name]
        self._state, self._inputs = state, inputs

    def patch(
        self,
        patch: Patch,
        state: KernelState,
        policy: RemovalPolicy,
        avoid: frozenset[str],
        arming: frozenset[str],
    ) -> tuple[tuple[Action, ...], bool]:
        part = self._parts.get(patch.name)
        if part is not None and part[0] is patch:
            return part[2], part[3]
        out: list[Action] = []
        complete = _plan_patch(out, patch, state, policy, avoid, arming)
        names = frozenset(m.module for m in patch.modules.values()) | frozenset(patch.modules)
        self._parts[patch.name] = (patch, names, tuple(out), complete)
        return tuple(out), complete


def _objects_then_main(patch: Patch) -> list[PatchModule]:
    mods = [patch.modules[o] for o in patch.objects]
    if patch.main is not None:
        mods.append(patch.main)
    return mods


__all__ = [
    "VMLINUX",
    "NotDesired",
    "PatchMemo",
    "Selection",
    "Unwanted",
    "plan",
    "select_desired",
]
