"""klpd.kernel.klpinspect on module files the tests build (klpd_sim.kofile), checked against
pyelftools' reading of the same relocations; truncated, corrupt and non-livepatch files."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection
from klpd_sim.kofile import (
    COMPRESSIONS,
    KlpSpec,
    compress,
    elf_relocatable,
    modinfo_bytes,
    write_ko,
)

from klpd.kernel.btf import BTFError, struct_layouts
from klpd.kernel.elfrel import ElfError, RelocatableElf
from klpd.kernel.klpinspect import (
    DEFAULT_LAYOUT,
    InspectError,
    KlpFunc,
    KlpObject,
    inspect_image,
    inspect_module,
    layout_from_btf,
)

SUFFIX = {"none": ".ko", "xz": ".ko.xz", "gz": ".ko.gz", "zst": ".ko.zst"}
LP = {"livepatch": "Y"}


def image(spec: KlpSpec | None, name: str = "lp__vmlinux") -> bytes:
    return elf_relocatable(modinfo_bytes(name, LP), b"\x90" * 64, spec)


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("replace", [False, True])
def test_replace_flag_and_object_every_compression(
    tmp_path: Path, compression: str, replace: bool
) -> None:
    path = tmp_path / f"lpa__ext4{SUFFIX[compression]}"
    write_ko(path, {**LP, **({"klpd_sim_replace": "Y"} if replace else {})}, compression)
    got = inspect_module(path)
    assert got.replace is replace
    assert got.objects == (KlpObject("ext4", (KlpFunc("ext4_klpd_sim_func"),)),)
    assert got.why_unknown == ""


def test_vmlinux_object_is_the_null_name() -> None:
    spec = KlpSpec(((None, ("cmdline_proc_show", ("dup_func", 2))),))
    got = inspect_image(image(spec))
    assert got.objects == (
        KlpObject("vmlinux", (KlpFunc("cmdline_proc_show"), KlpFunc("dup_func", 2))),
    )
    assert got.replace is False


def test_two_objects_and_many_functions() -> None:
    funcs = tuple(f"f{i}" for i in range(7))
    spec = KlpSpec(((None, funcs), ("ext4", ("ext4_x",))), replace=True)
    got = inspect_image(image(spec))
    assert got.object_names == ("vmlinux", "ext4")
    assert [f.old_name for f in got.objects[0].funcs] == list(funcs)
    assert got.replace is True


@pytest.mark.parametrize(("object_size", "func_size"), [(168, 152), (104, 88), (232, 216)])
def test_strides_inferred_from_symbols_for_any_config(object_size: int, func_size: int) -> None:
    # sizeof(klp_object/klp_func) depends on the kernel config (they embed a kobject).
    spec = KlpSpec(
        ((None, ("a", "b", "c")), ("m1", ("d",)), ("m2", ("e", "f"))),
        object_size=object_size,
        func_size=func_size,
    )
    got = inspect_image(image(spec))
    assert [(o.name, [f.old_name for f in o.funcs]) for o in got.objects] == [
        ("vmlinux", ["a", "b", "c"]),
        ("m1", ["d"]),
        ("m2", ["e", "f"]),
    ]


def test_without_symbols_objects_need_btf() -> None:
    spec = KlpSpec((("ext4", ("x",)),), replace=True, symbols=False)
    got = inspect_image(image(spec))
    assert got.replace is True  # the flag needs no stride
    assert got.objects == ()
    assert "sizeof(struct klp_object)" in got.why_unknown
    layout = layout_from_btf(btf_blob(object_size=168, func_size=152), "test BTF")
    with_btf = inspect_image(image(spec), layout)
    assert with_btf.object_names == ("ext4",)
    assert with_btf.layout == "BTF of test BTF"


def test_klp_patch_built_at_run_time_is_undeterminable() -> None:
    got = inspect_image(image(KlpSpec(((None, ("x",)),), static=False)))
    assert got.replace is None
    assert "run time" in got.why_unknown


def test_module_that_is_not_a_livepatch() -> None:
    with pytest.raises(ElfError, match="THIS_MODULE"):
        inspect_image(elf_relocatable(modinfo_bytes("ext4", {})))


def test_relocations_agree_with_pyelftools(tmp_path: Path) -> None:
    spec = KlpSpec(((None, ("a", "b")), ("m", ("c",))), replace=True)
    path = tmp_path / "lp__vmlinux.ko"
    path.write_bytes(image(spec))
    ours = RelocatableElf(path.read_bytes())
    with path.open("rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        assert isinstance(symtab, SymbolTableSection)
        theirs = {}
        for sec in elf.iter_sections():
            if isinstance(sec, RelocationSection):
                for r in sec.iter_relocations():
                    sym = symtab.get_symbol(r["r_info_sym"])
                    theirs[(sec["sh_info"], r["r_offset"])] = (
                        sym.name or elf.get_section(sym["st_shndx"]).name,
                        sym["st_value"] + r["r_addend"],
                    )
    mine = {
        (s, o): (t.symbol, t.offset)
        for s, relocs in ours._index().items()
        for o, t in relocs.items()
    }
    assert mine == theirs


# --- bad input: a clear error, never a traceback ------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not an ELF file"),
        (b"MZ\x90\x00" * 40, "not an ELF file"),
        (b"\x7fELF" + bytes([1, 1, 1]) + bytes(80), "32-bit"),
    ],
)
def test_not_elf(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "bad__vmlinux.ko"
    path.write_bytes(data)
    with pytest.raises(InspectError, match=message) as e:
        inspect_module(path)
    assert str(e.value).startswith(str(path))


def test_executable_is_not_a_module() -> None:
    data = bytearray(image(KlpSpec(((None, ("x",)),))))
    struct.pack_into("<H", data, 16, 2)  # ET_EXEC
    with pytest.raises(ElfError, match="ET_REL"):
        inspect_image(bytes(data))


def test_every_truncation_is_a_clear_error(tmp_path: Path) -> None:
    data = image(KlpSpec(((None, ("a",)), ("m", ("b",))), replace=True))
    path = tmp_path / "lp__vmlinux.ko"
    for size in range(0, len(data), 7):
        path.write_bytes(data[:size])
        with pytest.raises(InspectError):
            inspect_module(path)


@pytest.mark.parametrize("compression", ["xz", "gz", "zst"])
def test_truncated_and_corrupt_compressed_files(tmp_path: Path, compression: str) -> None:
    packed = compress(image(KlpSpec(((None, ("a",)),))), compression)
    path = tmp_path / f"lp__vmlinux{SUFFIX[compression]}"
    for data in (packed[: len(packed) // 2], packed[:8] + bytes(len(packed) - 8)):
        path.write_bytes(data)
        with pytest.raises(InspectError):
            inspect_module(path)


def test_random_corruption_never_escapes() -> None:
    """Flip bytes anywhere: the result is an Inspection or an ElfError, nothing else."""
    data = image(KlpSpec(((None, ("a", "b")), ("m", ("c",))), replace=True))
    rng = random.Random(12)
    outcomes = set()
    for _ in range(1500):
        bad = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            bad[rng.randrange(len(bad))] = rng.randrange(256)
        try:
            inspect_image(bytes(bad))
            outcomes.add("read")
        except ElfError:
            outcomes.add("error")
    assert outcomes == {"read", "error"}


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InspectError, match="No such file"):
        inspect_module(tmp_path / "nope__vmlinux.ko")


# --- BTF ------------------------------------------------------------------------------------


def btf_blob(*, object_size: int, func_size: int, patch_size: int = 200) -> bytes:
    """A little-endian BTF blob with the three livepatch structs (members' types: id 1)."""
    strings = bytearray(b"\0")

    def s(text: str) -> int:
        strings.extend(text.encode() + b"\0")
        return len(strings) - len(text) - 1

    types = bytearray()
    types += struct.pack("<IIII", s("long"), 1 << 24, 8, 64)  # INT, id 1
    structs = {
        "klp_func": (func_size, [("old_name", 0), ("new_func", 8), ("old_sympos", 16)]),
        "klp_object": (object_size, [("name", 0), ("funcs", 8), ("callbacks", 16)]),
        "klp_patch": (patch_size, [("mod", 0), ("objs", 8), ("states", 16), ("replace", 24)]),
    }
    for name, (size, members) in structs.items():
        types += struct.pack("<III", s(name), 4 << 24 | len(members), size)
        for m, off in members:
            types += struct.pack("<III", s(m), 1, off * 8)
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + bytes(types) + bytes(strings)


def test_btf_layout() -> None:
    layout = layout_from_btf(btf_blob(object_size=168, func_size=152), "t")
    assert (layout.object_size, layout.func_size, layout.patch_replace) == (168, 152, 24)
    found = struct_layouts(btf_blob(object_size=1, func_size=2), ["klp_patch", "absent"])
    assert list(found) == ["klp_patch"]
    assert found["klp_patch"].members["replace"] == 24


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b[:10], "too short"),
        (lambda b: b"\0\0" + b[2:], "bad magic"),
        (lambda b: b[:40], "past the end"),
    ],
)
def test_bad_btf(mangle: object, message: str) -> None:
    blob = btf_blob(object_size=168, func_size=152)
    assert callable(mangle)
    with pytest.raises(BTFError, match=message):
        struct_layouts(mangle(blob), ["klp_patch"])


def test_btf_without_livepatch_structs_is_an_error() -> None:
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 0, 0, 1)
    with pytest.raises(BTFError, match="CONFIG_LIVEPATCH"):
        layout_from_btf(header + b"\0", "x")


def test_default_layout_is_the_external_members_since_5_5() -> None:
    assert (DEFAULT_LAYOUT.patch_objs, DEFAULT_LAYOUT.patch_replace) == (8, 24)
    assert DEFAULT_LAYOUT.object_size is None and DEFAULT_LAYOUT.func_size is None
