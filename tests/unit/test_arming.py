"""Softdep pre-arming and the remove policy (klpd.service.arming)."""

from __future__ import annotations

from klpd.core.model import Catalog
from klpd.service.arming import Arming


def test_a_pre_armed_module_has_its_grace_then_loses_it() -> None:
    now = [100.0]
    arming = Arming(lambda why: None, grace=10.0, clock=lambda: now[0])
    arming.note("lpa__ext4")  # no running loop here: nothing scheduled
    assert arming.now() == frozenset({"lpa__ext4"})
    now[0] += 9.9
    assert arming.now() == frozenset({"lpa__ext4"})
    now[0] += 0.2
    assert arming.now() == frozenset()


def test_only_catalog_object_modules_with_softdeps_on() -> None:
    arming = Arming(lambda why: None)
    arming.added("lpa__ext4", Catalog(patches={}), softdep=True)  # not in the catalog
    assert arming.now() == frozenset()


def test_a_module_that_loaded_after_all_is_no_failure() -> None:
    """A modprobe that timed out while the kernel still loaded the module (6.12 under TCG):
    its add uevent clears the failure, unless the module is quarantined."""
    from klpd.service.memory import Memory

    mem = Memory()
    mem.record_failure("lpa__ext4", "modprobe: timed out after 116.6s")
    mem.loaded_after_all("lpa__ext4")
    assert "lpa__ext4" not in mem.failures and "lpa__ext4" not in mem.not_to_load()
    mem.quarantine("lpb__ext4", "crashed the machine")
    mem.loaded_after_all("lpb__ext4")
    assert mem.failures["lpb__ext4"] == "crashed the machine"


def test_a_module_read_before_its_uevent_is_heard_gets_its_grace() -> None:
    """Debian's 6.12: kmod's softdep inserted lpa_v2__klpd_target, then lpb__klpd_target;
    the pass woken by the first one's uevent read the second, unarmed, with klpd_target
    absent, and disabled it. A reading that shows a new P__m with m absent arms it."""
    from builders import catalog, patch, state

    cat = catalog(patch("lpa", ["ext4"]), patch("lpb", ["ext4"]))
    now = [100.0]
    arming = Arming(lambda why: None, grace=10.0, clock=lambda: now[0])
    arming.observed(state([], ["lpa__vmlinux", "lpb__vmlinux"]), cat, softdep=True)
    assert arming.now() == frozenset()  # the first reading arms nothing
    arming.observed(state([], ["lpa__vmlinux", "lpb__vmlinux", "lpa__ext4"]), cat, softdep=True)
    assert arming.now() == frozenset({"lpa__ext4"})
    now[0] += 11.0
    # already there at the previous reading, or its object present, or softdeps off: no grace
    arming.observed(state([], ["lpa__vmlinux", "lpb__vmlinux", "lpa__ext4"]), cat, softdep=True)
    arming.observed(state(["ext4"], ["lpa__vmlinux", "lpa__ext4", "lpb__ext4"]), cat, True)
    arming.observed(state([], ["lpa__vmlinux"]), cat, softdep=False)
    arming.observed(state([], ["lpa__vmlinux", "lpb__ext4"]), cat, softdep=False)
    assert arming.now() == frozenset()
    arming.observed(state([], ["lpa__vmlinux", "lpb__vmlinux"]), cat, softdep=True)
    arming.observed(state([], ["lpa__vmlinux", "lpb__vmlinux", "lpb__ext4"]), cat, softdep=True)
    assert arming.now() == frozenset({"lpb__ext4"})


def test_a_module_udev_told_of_is_armed_at_the_reading_after() -> None:
    from builders import catalog, patch, state

    cat = catalog(patch("lpa", ["ext4"]))
    arming = Arming(lambda why: None)
    s = state([], ["lpa__vmlinux", "lpa__ext4"])
    arming.observed(s, cat, softdep=True, heard={"lpa__ext4", "ext4"})  # the first reading
    assert arming.now() == frozenset({"lpa__ext4"})
    other = Arming(lambda why: None)
    other.observed(state([], ["lpa__vmlinux"]), cat, softdep=True, heard={"lpa__ext4"})
    other.observed(s, cat, softdep=False, heard={"lpa__ext4"})
    assert other.now() == frozenset()  # gone again when read; softdeps off
