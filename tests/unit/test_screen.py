"""klpd.core.screen: which inspected modules klpd refuses, and why."""

from __future__ import annotations

import pytest

from klpd.core.screen import KlpFacts, Undeterminable, screen

REFUSE, WARN = Undeterminable.REFUSE, Undeterminable.WARN


def test_split_module_passes() -> None:
    v = screen("ext4", KlpFacts(False, ("ext4",)), REFUSE)
    assert not v.refused and v.warnings == () and not v.replace


def test_replace_is_refused_whatever_the_policy() -> None:
    for policy in Undeterminable:
        v = screen("vmlinux", KlpFacts(True, ("vmlinux",)), policy)
        assert v.refused and v.replace
        assert "replace every other livepatch" in v.refusals[0]


@pytest.mark.parametrize(
    ("objects", "message"),
    [
        (("vmlinux", "ext4"), "patches 2 objects (vmlinux, ext4)"),
        (("xfs",), "patches object 'xfs', but its name says 'ext4'"),
        ((), "patches no object"),
    ],
)
def test_wrong_objects_are_refused(objects: tuple[str, ...], message: str) -> None:
    for policy in Undeterminable:
        v = screen("ext4", KlpFacts(False, objects), policy)
        assert v.refusals == (next(r for r in v.refusals if message in r),)


def test_dash_and_underscore_are_one_object() -> None:
    assert not screen("nf_tables", KlpFacts(False, ("nf-tables",)), REFUSE).refused


def test_undeterminable_refused_by_default_warned_when_configured() -> None:
    facts = KlpFacts(None, None, "no static struct klp_patch")
    refused = screen("vmlinux", facts, REFUSE)
    assert refused.refusals == (
        "cannot tell whether it is an atomic-replace patch: no static struct klp_patch",
    )
    warned = screen("vmlinux", facts, WARN)
    assert not warned.refused and warned.warnings == refused.refusals


def test_objects_unknown_but_replace_known() -> None:
    v = screen("ext4", KlpFacts(False, None, "no symbol for the array"), REFUSE)
    assert v.refusals == ("cannot tell which objects it patches: no symbol for the array",)
    assert not screen("ext4", KlpFacts(False, None, "x"), WARN).refused
