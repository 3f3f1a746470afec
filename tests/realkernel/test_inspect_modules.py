"""klpd's module inspection on livepatch modules built by each kernel line's own toolchain.

On the host, no VM: for every kernel line the real-kernel suite builds, every test module is
inspected (plain and xz/gz/zst-compressed) with the struct layout taken two ways — the BTF
of that line's own kernel image (extracted from its vmlinuz), and without BTF (sizes from
the module's symbols) — and compared with what its C source says (tests/realkernel/modules).
"""

from __future__ import annotations

import importlib.util
import lzma
import re
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import zstandard
from elftools.elf.elffile import ELFFile
from klpd_sim.kofile import compress

from klpd.kernel.klpinspect import (
    DEFAULT_LAYOUT,
    Inspection,
    KlpLayout,
    inspect_module,
    layout_from_btf,
)

pytestmark = [pytest.mark.realkernel, pytest.mark.timeout(3600)]

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "modules"
BTF_CACHE = HERE.parent.parent / "build" / "realkernel" / "btf"
# Modules whose facts are not in the KLPD_* defines of klpd_testpatch.h.
STANDALONE: dict[str, tuple[bool, list[tuple[str, list[tuple[str, int]]]]]] = {
    "lptwo__vmlinux": (
        False,
        [("vmlinux", [("cmdline_proc_show", 1)]), ("klpd_target", [("klpd_target_value", 0)])],
    ),
}


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"klpd_realkernel_{name}", HERE / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _builds() -> list[Any]:
    """Every kernel line the suite prepares (tests/realkernel/lines.py), or, before there
    were lines, the one build.sh makes."""
    if (HERE / "lines.py").exists():
        vm = _load("vm")  # vm imports lines as "lines": the builds shared with the other tests
        futures = [vm.prepare_soon(line) for line in vm.LINES]
        return [f.result() for f in futures]
    return [_load("vm").build_modules()]


@pytest.fixture(scope="module")
def builds() -> list[Any]:
    return _builds()


def expected(module: str) -> tuple[bool, list[tuple[str, list[tuple[str, int]]]]]:
    if module in STANDALONE:
        return STANDALONE[module]
    src = (SOURCES / f"{module}.c").read_text()
    defines = dict(re.findall(r"#define (KLPD_\w+) (.+)", src))
    obj = defines["KLPD_OBJECT"].strip('"')
    return (
        defines["KLPD_REPLACE"] == "true",
        [("vmlinux" if obj == "NULL" else obj, [(defines["KLPD_OLD_FUNC"].strip('"'), 0)])],
    )


def facts(i: Inspection) -> tuple[bool | None, list[tuple[str, list[tuple[str, int]]]]]:
    return i.replace, [(o.name, [(f.old_name, f.old_sympos) for f in o.funcs]) for o in i.objects]


def vmlinux_btf(vmlinuz: Path) -> bytes:
    """The .BTF section of the vmlinux inside a bzImage (its payload is xz, zstd or gzip
    compressed; found by magic, as scripts/extract-vmlinux does). Cached under build/."""
    cached = BTF_CACHE / f"{vmlinuz.name}.btf"
    if cached.exists():
        return cached.read_bytes()
    data = vmlinuz.read_bytes()

    def unxz(b: bytes) -> bytes:
        return lzma.LZMADecompressor().decompress(b)

    def unzstd(b: bytes) -> bytes:
        out: bytes = zstandard.ZstdDecompressor().decompressobj().decompress(b)
        return out

    def gunzip(b: bytes) -> bytes:
        return zlib.decompressobj(31).decompress(b)

    decoders: dict[bytes, Callable[[bytes], bytes]] = {
        b"\xfd7zXZ\x00": unxz,
        b"\x28\xb5\x2f\xfd": unzstd,
        b"\x1f\x8b\x08": gunzip,
    }
    for magic, decode in decoders.items():
        at = data.find(magic)
        while at >= 0:
            try:
                image = decode(data[at:])
            except (lzma.LZMAError, zstandard.ZstdError, zlib.error):
                image = b""
            if image[:4] == b"\x7fELF":
                from io import BytesIO

                section = ELFFile(BytesIO(image)).get_section_by_name(".BTF")
                assert section is not None, f"{vmlinuz}: vmlinux without .BTF"
                btf: bytes = section.data()
                BTF_CACHE.mkdir(parents=True, exist_ok=True)
                cached.write_bytes(btf)
                return btf
            at = data.find(magic, at + 1)
    raise AssertionError(f"{vmlinuz}: no compressed vmlinux found")


def livepatch_modules(ko_dir: Path) -> list[Path]:
    found = sorted(p for p in ko_dir.glob("*__*.ko"))
    assert found, f"no livepatch modules in {ko_dir}"
    return found


def test_every_line_inspected_as_its_sources_say(builds: list[Any], tmp_path: Path) -> None:
    checked: dict[str, int] = {}
    for build in builds:
        btf_layout = layout_from_btf(vmlinux_btf(Path(build.kernel)), str(build.kernel))
        # The external members sit where the built-in offsets say, on every line.
        for field in ("patch_objs", "patch_replace", "object_name", "object_funcs"):
            assert getattr(btf_layout, field) == getattr(DEFAULT_LAYOUT, field), build.kver
        layouts: list[KlpLayout] = [btf_layout, DEFAULT_LAYOUT]
        for ko in livepatch_modules(Path(build.ko_dir)):
            module = ko.name.removesuffix(".ko")
            want = expected(module)
            variants = [ko]
            for compression in ("xz", "gz", "zst"):
                packed = tmp_path / f"{module}.ko.{compression}"
                packed.write_bytes(compress(ko.read_bytes(), compression))
                variants.append(packed)
            for path in variants:
                for layout in layouts:
                    got = inspect_module(path, layout)
                    assert facts(got) == want, f"{build.kver} {path.name} ({layout.source})"
                    assert got.why_unknown == ""
            checked[build.kver] = checked.get(build.kver, 0) + 1
    # replace true and false, one and two objects, vmlinux and module objects: all covered.
    kinds = {expected(m)[0] for m in ("lprep__vmlinux", "lpa__vmlinux")}
    assert kinds == {True, False}
    assert len(checked) == len(builds) and all(n >= 14 for n in checked.values()), checked


def test_target_module_is_not_a_livepatch(builds: list[Any]) -> None:
    from klpd.kernel.klpinspect import InspectError

    for build in builds:
        got = None
        try:
            got = inspect_module(Path(build.ko_dir) / "klpd_target.ko")
        except InspectError as e:
            assert "THIS_MODULE" in e.reason
        if got is not None:  # it has a THIS_MODULE reference (file_operations.owner)
            assert got.replace is None and "no static struct klp_patch" in got.why_unknown
