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
