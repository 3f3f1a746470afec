"""The orchestrator's pieces, each on its own: memory, replace guard, retry policy,
executor and transition watcher (on the fake kernel port), reporter."""

from __future__ import annotations

import pytest
from builders import catalog, patch, state
from fakekernel import FakeKernel

from klpd.core.model import Action, ActionKind, KernelState, Reason
from klpd.core.status import Counters, Event, EventKind
from klpd.service.config import TransitionConfig
from klpd.service.executor import Executor
from klpd.service.guard import ReplaceGuard
from klpd.service.memory import Memory
from klpd.service.reporter import Picture, Reporter
from klpd.service.retry import Retry
from klpd.service.transition import Outcome, Transition, TransitionWatcher

# --- memory --------------------------------------------------------------------------------


def test_memory_verbs() -> None:
    m = Memory()
    m.record_failure("lpa__ext4", "Invalid argument")
    m.mark_incompatible({"lpb__vmlinux": "built for 5.10"})
    assert m.not_to_load() == {"lpa__ext4", "lpb__vmlinux"}
    m.retry("lpa__ext4")
    assert m.not_to_load() == {"lpb__vmlinux"}
    assert m.failures["lpa__ext4"] == "Invalid argument"  # still said, no longer avoided
    m.record_success("lpa__ext4")
    assert "lpa__ext4" not in m.failures
    m.record_failure("lpa__xfs", "x")
    m.forget(["lpa__xfs"])
    assert "lpa__xfs" not in m.failures and "lpa__xfs" not in m.avoided


def test_memory_pins_survive_a_reload_and_refusals_are_first_time_only() -> None:
    m = Memory()
    assert m.pin("lpa__ext4", "forced")
    assert not m.pin("lpa__ext4", "forced")
    m.record_failure("lpb__ext4", "y")
    m.forget_failures()
    assert m.failures == {"lpa__ext4": "forced"} and not m.avoided
    assert m.refuse("lpz", "replace")
    assert not m.refuse("lpz", "again")
    assert m.refused_patches() == {"lpz"} and m.refused["lpz"] == "replace"


# --- replace guard -----------------------------------------------------------------------

CAT = catalog(patch("lpa"), patch("lpb"), patch("lpv"))
MANAGED = CAT.by_module()


def test_guard_notices_a_wipe_and_names_the_culprit() -> None:
    g = ReplaceGuard()
    assert g.observe(state(applied=["lpa__vmlinux", "lpb__vmlinux"]), MANAGED, ()).wipe == ""
    g.applied("lpa__vmlinux")
    g.applied("lpb__vmlinux")
    after = state(applied=["lpv__vmlinux"], stale=["lpa__vmlinux", "lpb__vmlinux"])
    f = g.observe(after, MANAGED, ())
    assert "lpa__vmlinux, lpb__vmlinux were replaced" in f.wipe
    assert "(lpv__vmlinux)" in f.wipe
    assert [r.patch for r in f.refusals] == ["lpv"]
    assert g.observe(after, MANAGED, ()).wipe == ""  # said once


def test_guard_a_disable_of_ours_is_no_wipe() -> None:
    g = ReplaceGuard()
    g.observe(state(applied=["lpa__vmlinux"]), MANAGED, ())
    g.taken_away("lpa__vmlinux")
    assert g.observe(state(stale=["lpa__vmlinux"]), MANAGED, ()).wipe == ""


def test_guard_a_reverted_transition_is_no_wipe() -> None:
    # lpa__vmlinux seen enabled while its transition ran; the stall policy reverts it.
    from dataclasses import replace

    s = state(applied=["lpa__vmlinux", "lpb__vmlinux"])
    lp = s.livepatches["lpa__vmlinux"]
    s = KernelState(
        s.release, s.modules, {**s.livepatches, "lpa__vmlinux": replace(lp, transition=True)}
    )
    g = ReplaceGuard()
    g.observe(s, MANAGED, ())
    f = g.observe(state(applied=["lpb__vmlinux"], stale=["lpa__vmlinux"]), MANAGED, ())
    assert f.wipe == "" and f.refusals == ()
    # the same patch vanishing once its transition had ended is a wipe
    g.observe(state(applied=["lpa__vmlinux", "lpb__vmlinux"]), MANAGED, ())
    f = g.observe(state(applied=["lpb__vmlinux"], stale=["lpa__vmlinux"]), MANAGED, ())
    assert "lpa__vmlinux were replaced" in f.wipe


def test_guard_sysfs_replace_attribute() -> None:
    s = state(applied=["lpv__vmlinux"])
    lp = s.livepatches["lpv__vmlinux"]
    from dataclasses import replace

    s = KernelState(s.release, s.modules, {"lpv__vmlinux": replace(lp, replace=True)})
    g = ReplaceGuard()
    assert [r.patch for r in g.observe(s, MANAGED, ()).refusals] == ["lpv"]
    assert g.observe(s, MANAGED, {"lpv"}).refusals == ()
    assert g.check_loaded("lpv", "lpv__vmlinux", True) is not None
    assert g.check_loaded("lpa", "lpa__vmlinux", False) is None


# --- retry -------------------------------------------------------------------------------


def test_retry_is_a_value() -> None:
    r = Retry(attempts=3, backoff=0.2, backoff_max=0.5)
    assert not r.is_exhausted() and r.delay() == 0.2
    r2 = r.increment()
    assert r.attempt == 1 and r2.attempt == 2 and r2.delay() == 0.4
    r3 = r2.increment()
    assert r3.is_exhausted() and r3.delay() == 0.5
    with pytest.raises(ValueError, match="exhausted"):
        r3.increment()
    assert Retry(attempts=1).is_exhausted()


# --- executor and transition watcher on the fake port ------------------------------------


class Sink:
    def __init__(self) -> None:
        self.transition: Transition | None = None  # set by the watcher
        self.events: list[Event] = []
        self.errors: list[str] = []
        self.published = 0

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def publish(self) -> None:
        self.published += 1

    def set_error(self, message: str) -> None:
        self.errors.append(message)


def executor(kernel: FakeKernel, **transition: object) -> tuple[Executor, Sink, Counters]:
    sink, counters = Sink(), Counters()
    cfg = TransitionConfig.model_validate({"poll_interval": 0.001, **transition})
    ex = Executor(kernel, TransitionWatcher(kernel, sink), counters, Retry(3, 0.0, 0.0), cfg)
    ex.managed = frozenset({"lpa__vmlinux", "lpa__ext4"})
    return ex, sink, counters


def act(kind: ActionKind, module: str = "lpa__vmlinux") -> Action:
    return Action(kind, module, "lpa", module.split("__")[1], Reason.MAIN_FIRST)


async def test_executor_load_waits_for_its_transition() -> None:
    k = FakeKernel()
    ex, sink, counters = executor(k)
    step = await ex.load(act(ActionKind.LOAD))
    assert step.loaded and step.applied and not step.faults
    assert [e.kind for e in sink.events] == [
        EventKind.TRANSITION_STARTED,
        EventKind.TRANSITION_FINISHED,
    ]
    assert sink.transition is None
    assert (counters.transitions, counters.modprobe_calls) == (1, 1)


async def test_executor_ebusy_exhausted_is_one_fault() -> None:
    k = FakeKernel(busy={"lpa__vmlinux": 9})
    ex, _, counters = executor(k)
    step = await ex.load(act(ActionKind.LOAD))
    assert not step.loaded and len(step.faults) == 1
    assert "Device or resource busy" in step.faults[0].message
    assert counters.modprobe_calls == 3 and counters.transitions == 0


async def test_executor_disable_then_unload() -> None:
    k = FakeKernel()
    ex, _, counters = executor(k)
    await ex.load(act(ActionKind.LOAD))
    assert not (await ex.disable(act(ActionKind.DISABLE))).faults
    assert "lpa__vmlinux" not in k.patches
    step = await ex.unload(act(ActionKind.UNLOAD))
    assert step.retired and "lpa__vmlinux" not in k.livepatch_modules
    assert (counters.transitions, counters.rmmod_calls) == (2, 1)


async def test_executor_disable_of_a_gone_patch_is_no_fault() -> None:
    ex, _, _ = executor(FakeKernel())
    assert (await ex.disable(act(ActionKind.DISABLE))).faults == ()


async def test_executor_unload_in_use_is_retried() -> None:
    k = FakeKernel(livepatch_modules={"lpa__vmlinux": 0}, in_use={"lpa__vmlinux": 2})
    ex, _, counters = executor(k)
    assert (await ex.unload(act(ActionKind.UNLOAD))).retired
    assert counters.rmmod_calls == 3


async def test_watcher_revert_on_stall_of_a_managed_patch_only() -> None:
    k = FakeKernel(stalled={"lpa__vmlinux", "lpx__vmlinux"})
    ex, sink, _ = executor(k, stall_timeout=0.01, on_stall="revert", revert_timeout=5.0)
    step = await ex.load(act(ActionKind.LOAD))
    assert not step.applied and step.faults[0].message.endswith("; reverted")
    assert sink.errors and "stalled" in sink.errors[0]
    assert EventKind.TRANSITION_STALLED in [e.kind for e in sink.events]
    # another tool's stalled transition is reported, never reverted
    await k.modprobe("lpx__vmlinux")
    watcher = TransitionWatcher(k, sink)
    cfg = TransitionConfig(poll_interval=0.001, stall_timeout=0.01, on_stall="revert")

    def wake(event: Event) -> None:
        if event.kind is EventKind.TRANSITION_STALLED and event.module == "lpx__vmlinux":
            k.stalled.discard("lpx__vmlinux")

    sink.emit = wake  # type: ignore[method-assign]  # listen in for the stall
    outcome, _ = await watcher.wait("lpx__vmlinux", True, cfg, managed=False)
    assert outcome is Outcome.DONE
    assert ("write", "lpx__vmlinux", "enabled", "0") not in k.calls


# --- reporter ----------------------------------------------------------------------------


def test_reporter_tells_state_changes_only() -> None:
    pic = Picture(release="6.1.0-test", catalog=catalog(patch("lpa")))
    rep = Reporter(pic, Memory(), FakeKernel())
    seen: list[Event] = []
    unsubscribe = rep.subscribe(seen.append)
    rep.publish()
    rep.publish()
    assert [e.kind for e in seen] == [EventKind.STATE_CHANGED]
    assert rep.snapshot().state == "converging"  # no pass ended yet
    pic.last_reconcile = 1.0
    rep.publish()
    assert rep.snapshot().state == "converged" and len(seen) == 2
    rep.set_error("boom")
    rep.publish()
    assert rep.snapshot().last_error == "boom" and len(seen) == 3
    unsubscribe()
    rep.emit(Event(EventKind.PATCH_APPLIED))
    assert len(seen) == 3


def test_reporter_survives_a_failing_listener() -> None:
    rep = Reporter(Picture(release="r"), Memory(), FakeKernel())
    seen: list[Event] = []

    def bad(event: Event) -> None:
        raise RuntimeError("listener bug")

    rep.subscribe(bad)
    rep.subscribe(seen.append)
    rep.emit(Event(EventKind.PATCH_APPLIED, "lpa"))
    assert [e.patch for e in seen] == ["lpa"]
