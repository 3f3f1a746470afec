"""End to end: the real klpd process on the simulated kernel."""

from __future__ import annotations

from klpd_harness import applied, loaded, wait_for

LPA = {"patches": {"desired": ["lpa"]}}
MAIN = {"lpa__vmlinux"}


def test_start_with_targets_already_loaded(sim, make_klpd) -> None:  # type: ignore[no-untyped-def]
    sim.modprobe("ext4")
    sim.modprobe("klpd_target")
    k = make_klpd(LPA).start()
    k.wait_state("converged")
    assert applied(sim) == {"lpa__vmlinux", "lpa__ext4", "lpa__klpd_target"}
    assert any(s.startswith("converged: 1 patches, 3 objects") for s in k.statuses())


def test_target_loaded_later_is_patched(sim, make_klpd) -> None:  # type: ignore[no-untyped-def]
    k = make_klpd(LPA).start()
    k.wait_state("converged")
    assert applied(sim) == MAIN
    sim.modprobe("ext4")
    wait_for(lambda: "lpa__ext4" in applied(sim), 30, "lpa__ext4 applied")
    k.wait_state("converged")
    assert applied(sim) == {"lpa__vmlinux", "lpa__ext4"}
