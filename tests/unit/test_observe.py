"""Pure reading of what the kernel did that klpd did not plan."""

from __future__ import annotations

from dataclasses import replace

from builders import catalog, patch, state

from klpd.core.model import LivePatchState, LoadedModule
from klpd.core.observe import objects_coming, unsettled, wiped_by_replace

CAT = catalog(patch("lpa", ["ext4"]), patch("lprep", []))
MANAGED = CAT.by_module()


def test_objects_coming_only_for_wanted_objects() -> None:
    s = state(coming=["ext4"])
    assert objects_coming(s, {"ext4"})
    assert not objects_coming(s, {"xfs"})


def test_unsettled_disabled_dir_and_dropping_reference() -> None:
    s = state(["ext4"], ["lpa__vmlinux"])
    lps = dict(s.livepatches)
    lps["lpa__ext4"] = LivePatchState("lpa__ext4", enabled=False, transition=False)
    mods = dict(s.modules)
    mods["lpa__ext4"] = LoadedModule("lpa__ext4", "live", 1)
    assert unsettled(replace(s, livepatches=lps, modules=mods), MANAGED, ()) == ["lpa__ext4"]
    # directory gone, reference still held: still being freed ... or pinned for good
    s2 = state(["ext4"], ["lpa__vmlinux"], forced_stale=["lpa__ext4"])
    assert unsettled(s2, MANAGED, ()) == ["lpa__ext4"]
    assert unsettled(s2, MANAGED, {"lpa__ext4"}) == []
    # foreign patches are not ours to wait for
    s3 = state([], ["kpatch_x__vmlinux"], forced_stale=["other__vmlinux"])
    assert unsettled(s3, MANAGED, ()) == []


def test_wipe_names_what_is_still_enabled_and_not_ours() -> None:
    # klpd loaded lpa; someone loaded lprep (replace): lpa's livepatches vanished
    after = state(["ext4"], ["lprep__vmlinux"], stale=["lpa__vmlinux", "lpa__ext4"])
    wipe = wiped_by_replace(
        after,
        applied_seen={"lpa__vmlinux", "lpa__ext4", "lprep__vmlinux"},  # lprep seen mid-way
        loaded_by_us={"lpa__vmlinux", "lpa__ext4"},
        disabling=(),
        managed=MANAGED,
    )
    assert wipe is not None
    assert wipe.gone == {"lpa__vmlinux", "lpa__ext4"}
    assert wipe.culprits == ("lprep__vmlinux",)


def test_own_disable_is_not_a_wipe() -> None:
    after = state(["ext4"], ["lpa__vmlinux"], stale=["lpa__ext4"])
    assert (
        wiped_by_replace(
            after,
            applied_seen={"lpa__vmlinux", "lpa__ext4"},
            loaded_by_us={"lpa__vmlinux", "lpa__ext4"},
            disabling={"lpa__ext4"},
            managed=MANAGED,
        )
        is None
    )
