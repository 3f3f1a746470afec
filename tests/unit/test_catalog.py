"""scan_catalog on trees of fake module files (klpd_sim.kofile)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from klpd_sim.kofile import write_ko

from klpd.core import names
from klpd.core.model import Catalog, PatchModule
from klpd.kernel.catalog import ModinfoCache, scan_catalog, vermagic_matches

LP: dict[str, str | Sequence[str]] = {"livepatch": "Y", "vermagic": "6.1.0-13-amd64 SMP "}
SUFFIX = {"none": ".ko", "xz": ".ko.xz", "gz": ".ko.gz", "zst": ".ko.zst"}


def ko(
    directory: Path,
    module: str,
    info: Mapping[str, str | Sequence[str]] | None = None,
    compression: str = "none",
) -> Path:
    path = directory / f"{module}{SUFFIX[compression]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_ko(path, LP if info is None else info, compression)
    return path


def problem_for(catalog: Catalog, path: Path) -> str:
    found = [p.message for p in catalog.problems if p.path == str(path)]
    assert len(found) == 1, (path, catalog.problems)
    assert str(path) in found[0]
    return found[0]


def test_patch_with_objects(tmp_path: Path) -> None:
    ko(tmp_path, "lpa__vmlinux", {**LP, "description": "fix it", "klpd_cve": "CVE-1"})
    ko(tmp_path / "sub", "lpa__ext4", {**LP, "depends": "ext4,jbd2"})
    ko(tmp_path, "ext4")  # ordinary name: never looked at
    catalog = scan_catalog([tmp_path])
    assert catalog.problems == ()
    patch = catalog.patches["lpa"]
    assert patch.objects == ("ext4",)
    assert patch.main is not None and patch.main.description == "fix it"
    assert patch.main.cves == ("CVE-1",)
    ext4 = patch.modules["ext4"]
    assert ext4 == PatchModule(
        module="lpa__ext4",
        patch="lpa",
        obj="ext4",
        path=str(tmp_path / "sub" / "lpa__ext4.ko"),
        depends=("ext4", "jbd2"),
        vermagic="6.1.0-13-amd64 SMP ",
        series="lpa",
    )
    assert catalog.module("lpa__ext4") == ext4


@pytest.mark.parametrize("compression", list(SUFFIX))
def test_each_compression(tmp_path: Path, compression: str) -> None:
    ko(tmp_path, "lp__vmlinux", compression=compression)
    ko(tmp_path, "lp__ext4", compression=compression)
    catalog = scan_catalog([tmp_path])
    assert catalog.problems == ()
    assert catalog.patches["lp"].objects == ("ext4",)
    assert catalog.patches["lp"].modules["ext4"].path.endswith(SUFFIX[compression])


# --- names ------------------------------------------------------------------------------


def test_double_separator_longest_known_patch_wins(tmp_path: Path) -> None:
    ko(tmp_path, "a__vmlinux")
    ko(tmp_path, "a__b__vmlinux")
    ko(tmp_path, "a__b__c")  # patch a__b, object c (not patch a, object b__c)
    ko(tmp_path, "a__snd__hda")  # patch a, object snd__hda
    catalog = scan_catalog([tmp_path])
    assert catalog.problems == ()
    assert catalog.patches["a__b"].objects == ("c",)
    assert catalog.patches["a"].objects == ("snd__hda",)


def test_dash_and_underscore_are_the_same_module(tmp_path: Path) -> None:
    ko(tmp_path, "lp-x__vmlinux")
    ko(tmp_path, "lp_x__snd-hda")
    catalog = scan_catalog([tmp_path])
    assert catalog.problems == ()
    assert catalog.patches["lp_x"].objects == ("snd_hda",)
    assert catalog.patches["lp_x"].modules["snd_hda"].module == "lp_x__snd_hda"


def test_dash_and_underscore_spellings_are_duplicates(tmp_path: Path) -> None:
    ko(tmp_path, "lp__vmlinux")
    first = ko(tmp_path, "lp__snd-hda")
    second = ko(tmp_path, "lp__snd_hda")
    catalog = scan_catalog([tmp_path])
    assert "lp" not in catalog.patches  # modprobe could load either: refused
    assert f"also as {first}" in problem_for(catalog, second)


def test_55_byte_limit(tmp_path: Path) -> None:
    patch = "p" * (names.MODULE_NAME_MAX - len("__vmlinux"))
    ko(tmp_path, f"{patch}__vmlinux")  # exactly 55 bytes
    long_obj = ko(tmp_path, f"{patch}__x")  # 48 + ... fits
    too_long = ko(tmp_path, "q" * 47 + "__vmlinux")  # 56 bytes
    catalog = scan_catalog([tmp_path])
    assert list(catalog.patches) == [patch]
    assert str(long_obj) not in {p.path for p in catalog.problems}
    assert "56 bytes" in problem_for(catalog, too_long)


def test_bad_characters(tmp_path: Path) -> None:
    bad = ko(tmp_path, "lp.x__vmlinux")
    assert "letters, digits" in problem_for(scan_catalog([tmp_path]), bad)


def test_unresolvable_livepatch_is_a_problem(tmp_path: Path) -> None:
    orphan = ko(tmp_path, "a__b__c")
    message = problem_for(scan_catalog([tmp_path]), orphan)
    assert "a__b__vmlinux" in message and "a__vmlinux" in message


def test_unresolvable_ordinary_module_is_ignored(tmp_path: Path) -> None:
    ko(tmp_path, "snd__hda", {"description": "not a livepatch"})
    ko(tmp_path, "junk__x.ko.d/readme")  # directories with module-like names are walked
    catalog = scan_catalog([tmp_path])
    assert catalog.patches == {}
    assert [p for p in catalog.problems if "snd__hda" in p.path] == []


# --- problems ---------------------------------------------------------------------------


def test_object_that_is_not_a_livepatch(tmp_path: Path) -> None:
    ko(tmp_path, "lp__vmlinux")
    ko(tmp_path, "lp__ext4")
    plain = ko(tmp_path, "lp__xfs", {"description": "ordinary"})
    catalog = scan_catalog([tmp_path])
    assert "not a livepatch module" in problem_for(catalog, plain)
    assert catalog.patches["lp"].objects == ("ext4",)


def test_main_that_is_not_a_livepatch_takes_its_patch_down(tmp_path: Path) -> None:
    main = ko(tmp_path, "lp__vmlinux", {})
    obj = ko(tmp_path, "lp__ext4")
    catalog = scan_catalog([tmp_path])
    assert catalog.patches == {}
    assert "not a livepatch module" in problem_for(catalog, main)
    assert "main module lp__vmlinux is unusable" in problem_for(catalog, obj)


def test_unreadable_modinfo(tmp_path: Path) -> None:
    ko(tmp_path, "lp__vmlinux")
    broken = tmp_path / "lp__ext4.ko.xz"
    broken.write_bytes(b"garbage")
    catalog = scan_catalog([tmp_path])
    assert "cannot read modinfo" in problem_for(catalog, broken)
    assert catalog.patches["lp"].objects == ()


def test_duplicate_refuses_the_patch(tmp_path: Path) -> None:
    # issue 11, point 8: klpd vetted extra/P__vmlinux.ko (plain) while modprobe loads
    # updates/P__vmlinux.ko (atomic replace). A patch installed twice is refused.
    plain = ko(tmp_path / "extra", "lp__vmlinux")
    replace = ko(tmp_path / "updates", "lp__vmlinux", {**LP, "klpd_replace": "Y"}, "xz")
    other = ko(tmp_path / "extra", "lp__ext4")
    catalog = scan_catalog([tmp_path])
    assert "lp" not in catalog.patches
    message = problem_for(catalog, replace)
    assert str(plain) in message and "refused" in message
    assert "installed twice" in problem_for(catalog, plain)
    assert "lp__vmlinux" in problem_for(catalog, other)


def test_same_file_reached_twice_is_not_a_duplicate(tmp_path: Path) -> None:
    ko(tmp_path / "updates", "lp__vmlinux")
    (tmp_path / "weak-updates").mkdir()
    (tmp_path / "weak-updates" / "lp__vmlinux.ko").symlink_to(tmp_path / "updates/lp__vmlinux.ko")
    catalog = scan_catalog([tmp_path / "updates", tmp_path])  # overlapping directories
    assert catalog.problems == () and list(catalog.patches) == ["lp"]


def test_duplicate_of_an_ordinary_module_is_silent(tmp_path: Path) -> None:
    ko(tmp_path / "a", "snd__hda", {})
    ko(tmp_path / "b", "snd__hda", {})
    assert scan_catalog([tmp_path]).problems == ()


def test_inconsistent_series_skips_the_patch(tmp_path: Path) -> None:
    ko(tmp_path, "lp__vmlinux", {**LP, "klpd_series": "s", "klpd_version": "2"})
    ko(tmp_path, "lp__ext4", {**LP, "klpd_series": "s", "klpd_version": "2"})
    odd = ko(tmp_path, "lp__xfs", {**LP, "klpd_series": "s", "klpd_version": "3"})
    catalog = scan_catalog([tmp_path])
    assert catalog.patches == {}
    message = problem_for(catalog, odd)
    assert "(s, 3)" in message and "(s, 2)" in message and "lp__vmlinux.ko" in message


def test_bad_version(tmp_path: Path) -> None:
    bad = ko(tmp_path, "lp__vmlinux", {**LP, "klpd_version": "two"})
    assert "not an integer" in problem_for(scan_catalog([tmp_path]), bad)


def test_bad_patch_name(tmp_path: Path) -> None:
    bad = ko(tmp_path, "_lp__vmlinux")
    assert "must not start or end" in problem_for(scan_catalog([tmp_path]), bad)


def test_missing_directory_is_not_a_problem(tmp_path: Path) -> None:
    ko(tmp_path, "lp__vmlinux")
    catalog = scan_catalog([tmp_path / "absent", tmp_path])
    assert catalog.problems == () and list(catalog.patches) == ["lp"]


def test_symlinked_directories_are_not_followed(tmp_path: Path) -> None:
    ko(tmp_path / "real", "lp__vmlinux")
    (tmp_path / "real" / "loop").symlink_to(tmp_path)
    catalog = scan_catalog([tmp_path])
    assert catalog.problems == () and list(catalog.patches) == ["lp"]


# --- modinfo facts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "info", "expected"),
    [
        ("lp", {}, ("lp", 1)),
        ("lp_cve_1_v3", {}, ("lp_cve_1", 3)),
        ("lp_v1_v2", {}, ("lp_v1", 2)),
        ("lp_vx", {}, ("lp_vx", 1)),
        ("lp_v3", {"klpd_series": "other", "klpd_version": "7"}, ("other", 7)),
        ("lp_v3", {"klpd_version": "7"}, ("lp_v3", 7)),  # modinfo wins over the name
        ("lp_v3", {"klpd_series": "other"}, ("other", 1)),
    ],
)
def test_series_and_version(
    tmp_path: Path, patch: str, info: dict[str, str], expected: tuple[str, int]
) -> None:
    ko(tmp_path, f"{patch}__vmlinux", {**LP, **info})
    ko(tmp_path, f"{patch}__ext4", {**LP, **info})
    p = scan_catalog([tmp_path]).patches[patch]
    assert (p.series, p.version) == expected
    assert {(m.series, m.version) for m in p.modules.values()} == {expected}


def test_cves_repeat_and_comma_separated(tmp_path: Path) -> None:
    ko(tmp_path, "lp__vmlinux", {**LP, "klpd_cve": ["CVE-1, CVE-2", "CVE-3", "CVE-1"]})
    main = scan_catalog([tmp_path]).patches["lp"].main
    assert main is not None and main.cves == ("CVE-1", "CVE-2", "CVE-3")


def test_replace_flag(tmp_path: Path) -> None:
    ko(tmp_path, "lp__vmlinux", {**LP, "klpd_replace": "Y"})
    ko(tmp_path, "lq__vmlinux", {**LP, "klpd_replace": "N"})
    catalog = scan_catalog([tmp_path])
    assert catalog.patches["lp"].replace and not catalog.patches["lq"].replace


def test_vermagic_matches() -> None:
    m = PatchModule("lp__vmlinux", "lp", "vmlinux", "/x", vermagic="6.1.0-13-amd64 SMP ")
    assert vermagic_matches(m, "6.1.0-13-amd64")
    assert not vermagic_matches(m, "6.1.0-13")
    assert not vermagic_matches(PatchModule("lp__vmlinux", "lp", "vmlinux", "/x"), "")


# --- rescans ----------------------------------------------------------------------------


def test_cache_reads_nothing_unchanged(tmp_path: Path) -> None:
    ko(tmp_path, "lp__vmlinux")
    obj = ko(tmp_path, "lp__ext4")
    (tmp_path / "lp__xfs.ko").write_bytes(b"broken")
    ko(tmp_path, "ext4")
    cache = ModinfoCache()
    first = scan_catalog([tmp_path], cache=cache)
    assert cache.reads == 3  # the three "__" files; never ext4.ko

    second = scan_catalog([tmp_path], previous=first, cache=cache)
    assert cache.reads == 3 and cache.hits == 3
    assert second == first
    assert second.patches["lp"] is first.patches["lp"]  # unchanged: the same object

    write_ko(obj, {**LP, "description": "rebuilt"})
    st = obj.stat()
    os.utime(obj, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    third = scan_catalog([tmp_path], previous=second, cache=cache)
    assert cache.reads == 4
    assert third.patches["lp"].modules["ext4"].description == "rebuilt"
    assert third.patches["lp"] is not second.patches["lp"]

    obj.unlink()
    scan_catalog([tmp_path], cache=cache)
    assert cache.reads == 4 and len(cache) == 2


# --- properties -------------------------------------------------------------------------

# A tiny alphabet so that names collide and "__" ambiguities are common.
_segment = st.sampled_from(["a", "b", "a_b", "c1"])
_name = st.lists(_segment, min_size=1, max_size=3).map("__".join)
_patches = st.dictionaries(
    _name, st.sets(_name.filter(lambda o: o != "vmlinux"), max_size=3), min_size=1, max_size=4
)


def _write_tree(root: Path, patches: Mapping[str, set[str]]) -> list[str]:
    written: list[str] = []
    for patch, objs in patches.items():
        for obj in {"vmlinux", *objs}:
            module = f"{patch}__{obj}"
            if module not in written:
                write_ko(root / f"{module}.ko", LP)
                written.append(module)
    return written


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(_patches)
def test_unambiguous_trees_are_catalogued_exactly(patches: dict[str, set[str]]) -> None:
    known = set(patches)
    for patch, objs in patches.items():
        for obj in objs:
            assume(names.split_known(f"{patch}__{obj}", known) == names.SplitName(patch, obj))
    with tempfile.TemporaryDirectory() as tmp:
        _write_tree(Path(tmp), patches)
        catalog = scan_catalog([Path(tmp)])
    assert catalog.problems == ()
    assert {p: set(c.objects) for p, c in catalog.patches.items()} == patches


@settings(max_examples=60, deadline=None)
@given(_patches)
def test_every_file_is_catalogued_or_reported(patches: dict[str, set[str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        written = _write_tree(Path(tmp), patches)
        catalog = scan_catalog([Path(tmp)])
    by_module = catalog.by_module()
    reported = {Path(p.path).name.removesuffix(".ko") for p in catalog.problems}
    assert set(written) == set(by_module) | reported
    for module, m in by_module.items():
        assert module == f"{m.patch}__{m.obj}" and m.patch in catalog.patches
        assert catalog.patches[m.patch].modules[m.obj] is m
        # The longest patch that exists wins.
        longer = [p for p in patches if len(p) > len(m.patch) and module.startswith(p + "__")]
        assert longer == []
