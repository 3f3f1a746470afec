"""What the orchestrator's look works out after every action, from a state that says what
the kernel view read again (klpd.core.model.KernelState.reread_since), equals what it
works out from the whole state: the replace guard's enabled / settled / replace=1 sets and
the livepatches whose module file is atomic-replace."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from klpd.core.model import KernelState, LivePatchState
from klpd.service.guard import ReplaceGuard, _enabled_settled_replace

NAMES = [f"lp{i}__vmlinux" for i in range(6)]
KINDS = ["absent", "applied", "patching", "unpatching", "replace"]


def livepatch(name: str, kind: str) -> LivePatchState | None:
    if kind == "absent":
        return None
    enabled = kind != "unpatching"
    return LivePatchState(name, enabled, kind in ("patching", "unpatching"), kind == "replace")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(KINDS)), max_size=30), st.data())
def test_the_guard_sorts_livepatches_out_as_from_the_whole_state(
    changes: list[tuple[str, str]], data: st.DataObject
) -> None:
    guard, lps = ReplaceGuard(), dict[str, LivePatchState]()
    last = KernelState("6.1.0-test").stamped(1, 0, None)
    for number, (name, kind) in enumerate(changes, start=2):
        lp = livepatch(name, kind)
        lps.pop(name, None)
        if lp is not None:
            lps[name] = lp
        state = KernelState("6.1.0-test", livepatches=dict(lps))
        stamp = data.draw(st.booleans())  # a view's state, or one read afresh
        reread = frozenset({name}) if stamp else None
        last = state.stamped(number, last.generation if stamp else 0, reread)
        assert guard._sorted_out(state) == _enabled_settled_replace(state)
