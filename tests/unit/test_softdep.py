"""modprobe.d softdep rendering and the atomic write."""

from __future__ import annotations

import os
from pathlib import Path

from klpd.core.model import Catalog, Patch, PatchModule
from klpd.kernel.softdep import HEADER, remove_softdeps, render_softdeps, write_softdeps


def module(
    patch: str,
    obj: str,
    *,
    depends: tuple[str, ...] = (),
    livepatch: bool = True,
    replace: bool = False,
) -> PatchModule:
    return PatchModule(
        module=f"{patch}__{obj}",
        patch=patch,
        obj=obj,
        path=f"/lib/modules/6.1/livepatch/{patch}__{obj}.ko",
        depends=depends,
        livepatch=livepatch,
        replace=replace,
    )


def catalog(*modules: PatchModule) -> Catalog:
    patches: dict[str, dict[str, PatchModule]] = {}
    for m in modules:
        patches.setdefault(m.patch, {})[m.obj] = m
    return Catalog(
        patches={
            name: Patch(name=name, modules=mods, series=name, version=1)
            for name, mods in patches.items()
        }
    )


def rules(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if not ln.startswith("#")]


def test_header_and_rules() -> None:
    text = render_softdeps(
        catalog(
            module("lpb", "vmlinux"),
            module("lpb", "ext4"),
            module("lpa", "vmlinux"),
            module("lpa", "xfs"),
            module("lpa", "ext4"),
        )
    )
    assert text.startswith(HEADER)
    assert text.endswith("\n")
    # sorted by target; one line per target, since libkmod uses only the first match
    assert rules(text) == ["softdep ext4 pre: lpa__ext4 lpb__ext4", "softdep xfs pre: lpa__xfs"]


def test_modules_that_need_their_target_are_left_out_and_named() -> None:
    text = render_softdeps(
        catalog(
            module("lpa", "vmlinux"),
            module("lpa", "ext4", depends=("ext4", "jbd2")),
            module("lpa", "nf_tables", depends=("nfnetlink",)),
            module("lpa", "snd_hda_intel", depends=("snd-hda-intel",)),  # '-' is '_'
        )
    )
    assert rules(text) == ["softdep nf_tables pre: lpa__nf_tables"]
    assert "#   lpa__ext4 (depends on ext4)" in text
    assert "#   lpa__snd_hda_intel (depends on snd_hda_intel)" in text


def test_vmlinux_replace_and_non_livepatch_modules_are_never_preloaded() -> None:
    text = render_softdeps(
        catalog(
            module("lpa", "vmlinux"),
            module("lpr", "ext4", replace=True),
            module("lpn", "ext4", livepatch=False),
        )
    )
    assert rules(text) == []
    assert "vmlinux" not in text.replace(HEADER, "")


def test_restricted_to_applied_patches() -> None:
    cat = catalog(module("lpa", "ext4"), module("lpold", "ext4"), module("lpx", "xfs"))
    assert rules(render_softdeps(cat, {"lpa", "lpx"})) == [
        "softdep ext4 pre: lpa__ext4",
        "softdep xfs pre: lpx__xfs",
    ]
    assert rules(render_softdeps(cat, ())) == []


def test_empty_catalog() -> None:
    assert render_softdeps(Catalog()) == HEADER


def test_output_is_deterministic() -> None:
    a = catalog(module("lpa", "xfs"), module("lpb", "ext4"), module("lpa", "ext4"))
    b = catalog(module("lpa", "ext4"), module("lpb", "ext4"), module("lpa", "xfs"))
    assert render_softdeps(a) == render_softdeps(b)


def test_write_creates_directory_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "run/modprobe.d/klpd.conf"
    write_softdeps(path, "softdep a pre: p__a\n")
    write_softdeps(path, "softdep b pre: p__b\n")
    assert path.read_text() == "softdep b pre: p__b\n"
    assert os.listdir(path.parent) == ["klpd.conf"]
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert remove_softdeps(path) is True
    assert remove_softdeps(path) is False
    assert not path.exists()
