"""klpd's sysfs writes failing with the kernel's errno, in-process on the simulated kernel's
model (its ``enabled_store``/``force_store``): EBUSY when another tool's transition starts
between klpd's wait for a quiet kernel and its write (retried, never reported), no write at
all while a transition runs (the wait for quiet), ENOENT when the patch went meanwhile
(nothing to do), EINVAL when it is already disabled (reported)."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from pathlib import Path

import pytest
from soakspec import FOREIGN
from soakworld import Figures, World, run_steps

from klpd.core.status import Event, EventKind


async def _world(tmp_path: Path) -> World:
    """lpa v1 applied on vmlinux and ext4; lpa_v2 installed (not yet scanned)."""
    fig = Figures()
    await run_steps(tmp_path / "w", [], fig)  # installs the virtual clock, then stops
    world = World(tmp_path / "world", fig)
    for s in [("config", "keep", "revert"), ("load", "ext4"), ("install", "lpa"), ("reload",)]:
        await world.step(s)
    await world.quiesce()
    assert {"lpa__vmlinux", "lpa__ext4"} <= set(world.kernel.patches)
    return world


async def settle(world: World, done: Callable[[], bool]) -> None:
    """Let klpd work (virtual time) until ``done``, at most 100 virtual seconds."""
    for _ in range(2000):
        if done():
            return
        await world.step(("wait", 0.05))
    raise AssertionError("klpd did not get there in 100 virtual seconds")


@pytest.fixture
def world_dir(tmp_path: Path) -> Path:
    (tmp_path / "world").mkdir()
    return tmp_path


async def test_ebusy_on_disable_is_retried_and_never_reported(world_dir: Path) -> None:
    world = await _world(world_dir)
    port = world.port
    port.race_next = world.foreign_load  # another tool's load wins the race with klpd's write
    await world.step(("install", "lpa_v2"))
    await world.step(("reload",))
    await settle(world, lambda: "lpa__ext4" not in world.kernel.modules)
    await world.quiesce()
    disables = [w for w in port.writes if w[1] == "enabled" and w[2] == "0"]
    assert disables[0] == ("lpa__ext4", "enabled", "0", errno.EBUSY), port.writes
    assert ("lpa__ext4", "enabled", "0", 0) in disables  # retried once the kernel was quiet
    assert "lpa__ext4" not in world.kernel.modules  # retired after all
    assert world.orch is not None and not world.orch.memory.failures
    await world.stop()


async def test_no_write_while_another_transition_runs(world_dir: Path) -> None:
    world = await _world(world_dir)
    world.foreign_load()  # another tool's transition is running when klpd wants to disable
    assert world.kernel.transition is not None
    await world.step(("disable", "lpa"))
    await world.quiesce()
    assert [w for w in world.port.writes if w[3]] == [], world.port.writes  # no EBUSY write
    assert not any(m.startswith("lpa__") for m in world.kernel.modules)
    await world.stop()


async def test_enoent_when_the_patch_went_meanwhile(world_dir: Path) -> None:
    world = await _world(world_dir)
    k = world.kernel

    def gone() -> None:  # someone else disabled it and it was freed already
        k.write_enabled("lpa__ext4", "0")
        k._complete_transition()

    world.port.race_next = gone
    await world.step(("disable", "lpa"))
    await settle(world, lambda: "lpa__ext4" not in world.kernel.modules)
    await world.quiesce()
    assert ("lpa__ext4", "enabled", "0", errno.ENOENT) in world.port.writes
    assert not any(m.startswith("lpa__") for m in k.modules)
    assert world.orch is not None and not world.orch.memory.failures
    await world.stop()


async def test_einval_is_reported_with_the_kernels_words(world_dir: Path) -> None:
    world = await _world(world_dir)
    k = world.kernel

    def disabled() -> None:  # someone else disabled it; it is not freed yet
        k.write_enabled("lpa__ext4", "0")

    world.port.race_next = disabled
    events: list[Event] = []
    assert world.orch is not None
    world.orch.reporter.subscribe(events.append)
    await world.step(("disable", "lpa"))
    await settle(world, lambda: any(e.kind is EventKind.PATCH_FAILED for e in events))
    assert ("lpa__ext4", "enabled", "0", errno.EINVAL) in world.port.writes
    failed = [e for e in events if e.kind is EventKind.PATCH_FAILED]
    assert failed and "Invalid argument" in failed[0].detail, events
    assert FOREIGN not in k.modules
    await world.stop()


async def test_a_long_transition_racing_the_disable_is_waited_out(world_dir: Path) -> None:
    """Another tool's transition starts just before klpd's write and stalls (a task
    sleeps in a function it patches) for longer than every EBUSY retry together: klpd
    waits for the kernel to be quiet again instead of retrying into a failure."""
    world = await _world(world_dir)
    k = world.kernel

    def race() -> None:
        world.foreign_load()
        k.stall("vmlinux", "sleeper", "other_fix")
        asyncio.get_running_loop().call_later(30.0, k.unstall, "vmlinux")

    world.port.race_next = race
    await world.step(("disable", "lpa"))
    await settle(world, lambda: "lpa__ext4" not in k.modules)
    assert world.orch is not None and not world.orch.memory.failures
    ebusy = [w for w in world.port.writes if w[3] == errno.EBUSY]
    assert len(ebusy) == 1, world.port.writes  # the one that lost the race, then a wait
    await world.quiesce()
    await world.stop()


async def test_a_disable_planned_before_the_object_came_back_is_not_done(
    world_dir: Path,
) -> None:
    """Found by the soak: policy ``remove``, ext4 goes, klpd plans to disable lpa__ext4;
    another tool's transition wins the race for the write (EBUSY); while klpd waits for it,
    ext4 comes back — and the kernel patches it with lpa__ext4 as it comes. klpd must plan
    again rather than finish the old plan and unpatch a live ext4."""
    world = await _world(world_dir)
    await world.stop()
    world.configure("remove", "revert")
    world.start()
    await world.quiesce()
    k = world.kernel

    def race() -> None:
        world.foreign_load()
        k.stall("vmlinux", "sleeper", "other_fix")

    world.port.race_next = race
    await world.step(("unload", "ext4"))
    await settle(world, lambda: any(w[3] == errno.EBUSY for w in world.port.writes))
    await world.step(("load", "ext4"))  # patched by lpa__ext4 as it comes
    k.unstall("vmlinux")
    await world.quiesce()  # raises if ext4 was ever seen unpatched by the lpa series
    assert k.patches["lpa__ext4"].enabled
    assert [w for w in world.port.writes if w[0] == "lpa__ext4"] == [
        ("lpa__ext4", "enabled", "0", errno.EBUSY)
    ]
    await world.stop()
