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
