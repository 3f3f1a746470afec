"""Slots: the per-uid/per-connection bounds and the reserve for root and polkit; the bound
on a call's arguments."""

from __future__ import annotations

from contextlib import ExitStack

import pytest
from dbus_fast import Message, MessageFlag, Variant

from klpd.core.names import NameError_, shown, validate_patch_name
from klpd.dbus import names
from klpd.dbus.calls import MAX_ARGUMENTS_SIZE, arguments_size, refuse_oversized
from klpd.dbus.errors import Busy
from klpd.dbus.limits import WAIT_BOUNDS, Bounds, RefusalLog, Slots, Throttle


def test_many_unprivileged_users_cannot_take_the_reserve() -> None:
    slots = Slots("WaitConverged", WAIT_BOUNDS)
    with ExitStack() as held:
        # 48 users x 4 connections x 1 call: the unprivileged share fills up
        for uid in range(1000, 1048):
            for conn in range(4):
                held.enter_context(slots.hold(f":1.{uid}.{conn}", uid, privileged=False))
        assert slots.unprivileged == WAIT_BOUNDS.total - WAIT_BOUNDS.reserve
        with pytest.raises(Busy, match="kept for root"):
            held.enter_context(slots.hold(":1.9", 2000, privileged=False))
        for n in range(WAIT_BOUNDS.reserve):  # root (or polkit) gets every reserved slot
            held.enter_context(slots.hold(f":1.root{n}", 0, privileged=True))
        with pytest.raises(Busy, match="all 256"):
            held.enter_context(slots.hold(":1.root", 0, privileged=True))
    assert slots.held == slots.unprivileged == 0


def test_per_uid_and_per_connection() -> None:
    slots = Slots("x", Bounds(total=100, reserve=10, per_uid=3, per_connection=2))
    with ExitStack() as held:
        held.enter_context(slots.hold(":1.1", 7, False))
        held.enter_context(slots.hold(":1.1", 7, False))
        with pytest.raises(Busy, match=r":1\.1 already holds 2"):
            held.enter_context(slots.hold(":1.1", 7, False))
        held.enter_context(slots.hold(":1.2", 7, False))
        with pytest.raises(Busy, match="uid 7 already holds 3"):
            held.enter_context(slots.hold(":1.3", 7, False))
        held.enter_context(slots.hold(":1.3", 8, False))  # another user is not affected
    assert slots.refusal(":1.1", 7, False) is None  # all released


def test_bounds_need_a_reserve_below_the_total() -> None:
    with pytest.raises(ValueError, match="reserve"):
        Bounds(total=4, reserve=4, per_uid=1, per_connection=1)


def test_throttle() -> None:
    t = Throttle(3600.0)
    assert t.ready() and not t.ready()


# --- arguments far larger than any call takes (klpd.dbus.calls) -----------------------------


def test_arguments_size_counts_strings_and_items_and_stops_past_the_limit() -> None:
    assert arguments_size([]) == 0
    assert arguments_size(["lpa", 1.5]) == 4
    assert arguments_size([{"enable": Variant("as", ["lpa", "lpb"])}]) == 1 + 6 + 1 + 2 + 6
    assert arguments_size([[("a", [b"xy"])]]) == 1 + 2 + 1 + 1 + 2
    huge = [["x"] * 10_000_000]
    assert MAX_ARGUMENTS_SIZE < arguments_size(huge) <= 10_000_000


def test_oversized_call_is_answered_invalid_argument_before_dispatch() -> None:
    def describe_patch(name: str, flags: MessageFlag = MessageFlag.NONE) -> Message:
        return Message(
            destination=names.BUS_NAME,
            path=names.OBJECT_PATH,
            interface=names.INTERFACE,
            member="DescribePatch",
            signature="s",
            body=[name],
            flags=flags,
            serial=7,
        )

    assert refuse_oversized(describe_patch("x" * MAX_ARGUMENTS_SIZE)) is False
    error = refuse_oversized(describe_patch("\x01" * 9_000_000))
    assert isinstance(error, Message) and error.error_name == names.ERROR_INVALID_ARGUMENT
    assert error.reply_serial == 7 and len(error.body[0]) < 200
    # nothing to answer, nothing dispatched
    assert refuse_oversized(describe_patch("x" * 70_000, MessageFlag.NO_REPLY_EXPECTED)) is True


def test_names_quote_at_most_the_start_of_a_refused_name() -> None:
    with pytest.raises(NameError_) as refused:
        validate_patch_name("\x01" * 1_000_000)
    assert len(str(refused.value)) < 400 and "(1000000 characters)" in str(refused.value)
    assert shown("lpa") == "'lpa'"


def test_refusals_are_logged_once_per_uid_and_interval(caplog: pytest.LogCaptureFixture) -> None:
    refusals = RefusalLog(interval=3600.0)
    for n in range(1000):
        refusals.refused(65534, f":1.{n}", "EnablePatch", "polkit is unreachable")
    refusals.refused(1000, ":1.9", "Reload", "uid 1000 has neither")
    assert [r.getMessage() for r in caplog.records] == [
        "refused EnablePatch from uid 65534 (:1.0): polkit is unreachable",
        "refused Reload from uid 1000 (:1.9): uid 1000 has neither",
    ]
    refusals.interval = 0.0  # the next one is logged, with the count of those swallowed
    refusals.refused(65534, ":1.5", "EnablePatch", "polkit is unreachable")
    assert caplog.records[-1].getMessage().endswith("(and 999 more since the last warning)")
