"""Which patch's version of each patched function runs, as kpatch's ``list`` shows it on 6.13+.

Livepatches stack per function: the ftrace handler runs the newest enabled patch that has the
function (the top of its ``func_stack``). Since 6.13 the kernel shows each patch's position
as ``stack_order`` (1 = the first patch, counted when read); before it the order is not in
sysfs and nothing is claimed here. A patch in transition is split: tasks that switched run
the transition's target version, the others still run the previous one.

Pure: from a :class:`~klpd.core.model.KernelState` to plain data.
"""

from __future__ import annotations

from dataclasses import dataclass

from klpd.core.model import KernelState, LivePatchState

ORIGINAL = ""  # the unpatched function


@dataclass(frozen=True, slots=True)
class FunctionVersion:
    """One patched function (``name,sympos`` as sysfs shows it) of one object."""

    obj: str
    function: str
    live: str  # livepatch module whose version runs (once the transition ends); "" original
    stack: tuple[str, ...]  # every enabled-or-transitioning patch with it, top first
    previous: str | None = None  # during a transition: what tasks not yet switched run


def _on_stack(lp: LivePatchState, obj: str) -> bool:
    """The patch's version of ``obj``'s functions is on their ftrace stacks: the object is
    patched (loaded), and the patch is enabled or still in its unpatching transition."""
    o = lp.objects.get(obj)
    return o is not None and o.patched is not False and (lp.enabled or lp.transition)


def live_functions(state: KernelState) -> tuple[FunctionVersion, ...]:
    """Per patched function, the live version; empty where the kernel has no stack_order."""
    if not state.livepatches or any(lp.stack_order is None for lp in state.livepatches.values()):
        return ()  # (before 6.13 the first livepatch says so: this runs at every publish)
    ordered = list(state.livepatches.values())
    ordered.sort(key=lambda lp: lp.stack_order or 0, reverse=True)  # top first
    stacks: dict[tuple[str, str], list[LivePatchState]] = {}
    for lp in ordered:
        for obj, o in lp.objects.items():
            if not _on_stack(lp, obj):
                continue
            for func in o.functions:
                stacks.setdefault((obj, func), []).append(lp)
    out: list[FunctionVersion] = []
    for (obj, func), stack in sorted(stacks.items()):
        top, below = stack[0], (stack[1].name if len(stack) > 1 else ORIGINAL)
        live, previous = top.name, None
        if not top.enabled:  # unpatching: tasks go back to the version below
            live, previous = below, top.name
        elif top.transition:  # patching: tasks not switched yet run the version below
            previous = below
        out.append(FunctionVersion(obj, func, live, tuple(lp.name for lp in stack), previous))
    return tuple(out)
