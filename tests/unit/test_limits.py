"""Slots: the per-uid/per-connection bounds and the reserve for root and polkit."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from klpd.dbus.errors import Busy
from klpd.dbus.limits import WAIT_BOUNDS, Bounds, Slots, Throttle


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
