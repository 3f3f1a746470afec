"""klpd.kernel.modinfo against files from klpd_sim.kofile, pyelftools and kmod's own modinfo."""

from __future__ import annotations

import glob
import gzip
import io
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from klpd_sim.kofile import elf_relocatable, modinfo_bytes, write_ko

from klpd.kernel.modinfo import ModinfoError, modinfo_section, parse_modinfo, read_modinfo

SUFFIX = {"none": ".ko", "xz": ".ko.xz", "gz": ".ko.gz", "zst": ".ko.zst"}
FIELDS: dict[str, str | list[str]] = {
    "livepatch": "Y",
    "depends": "ext4,jbd2",
    "vermagic": "6.1.0-13-amd64 SMP preempt mod_unload modversions ",
    "description": "fix = the bug, with an '=' inside",
    "alias": ["fs-foo", "foo-alias"],
    "klpd_cve": ["CVE-2026-1234,CVE-2026-5678", "CVE-2026-9999"],
}
EXPECTED = {
    "name": ["lp__ext4"],
    "livepatch": ["Y"],
    "depends": ["ext4,jbd2"],
    "vermagic": ["6.1.0-13-amd64 SMP preempt mod_unload modversions "],
    "description": ["fix = the bug, with an '=' inside"],
    "alias": ["fs-foo", "foo-alias"],
    "klpd_cve": ["CVE-2026-1234,CVE-2026-5678", "CVE-2026-9999"],
    "license": ["GPL"],
}
REAL_MODULES = sorted(glob.glob("/usr/lib/modules/*/kernel/**/*.ko*", recursive=True))


def kmod_supports(compression: str) -> bool:
    if compression == "none":
        return True
    if shutil.which("kmod") is None:
        return False
    version = subprocess.run(["kmod", "--version"], capture_output=True, text=True).stdout
    flag = {"xz": "+XZ", "gz": "+ZLIB", "zst": "+ZSTD"}[compression]
    return flag in version.split()


def kmod_field(path: Path | str, key: str) -> list[str]:
    out = subprocess.run(
        ["modinfo", "-F", key, str(path)], capture_output=True, text=True, check=True
    ).stdout
    return out.splitlines()


@pytest.mark.parametrize("compression", list(SUFFIX))
def test_round_trip(tmp_path: Path, compression: str) -> None:
    path = tmp_path / f"lp__ext4{SUFFIX[compression]}"
    write_ko(path, FIELDS, compression)
    assert read_modinfo(path) == EXPECTED
    assert list(read_modinfo(path)) == list(EXPECTED)  # file order


@pytest.mark.parametrize("compression", list(SUFFIX))
def test_kmod_modinfo_agrees_on_generated_files(tmp_path: Path, compression: str) -> None:
    path = tmp_path / f"lp__ext4{SUFFIX[compression]}"
    write_ko(path, FIELDS, compression)
    ours = read_modinfo(path)
    if not kmod_supports(compression):
        # Debian 12's kmod is built without zlib: kmod reads the decompressed image instead
        # (the decompression is the standard library's; the ELF parsing is what is compared).
        assert compression == "gz", f"kmod unexpectedly lacks {compression} support"
        path = tmp_path / "lp__ext4.ko"
        path.write_bytes(gzip.decompress((tmp_path / "lp__ext4.ko.gz").read_bytes()))
    for key in [*ours, "missing_key"]:
        # kmod prints one line per value; trailing blanks in vermagic survive.
        assert kmod_field(path, key) == ours.get(key, []), key


def test_kmod_modinfo_agrees_on_real_modules() -> None:
    # linux-image-amd64 is installed by scripts/setup.sh: no modules is a broken setup.
    assert REAL_MODULES, "no kernel modules under /usr/lib/modules"
    for path in REAL_MODULES[:: max(1, len(REAL_MODULES) // 15)]:
        ours = read_modinfo(path)
        for key in ("name", "depends", "vermagic", "alias", "license"):
            assert kmod_field(path, key) == ours.get(key, []), (path, key)


def test_section_reader_agrees_with_pyelftools(tmp_path: Path) -> None:
    images = [elf_relocatable(modinfo_bytes("lp__x", FIELDS))]
    for path in REAL_MODULES[:: max(1, len(REAL_MODULES) // 25)]:
        if path.endswith(".ko"):
            images.append(Path(path).read_bytes())
    for image in images:
        section = ELFFile(io.BytesIO(image)).get_section_by_name(".modinfo")
        assert section is not None
        assert modinfo_section(image) == section.data()


def test_parse_modinfo_skips_padding_and_keeps_repeats() -> None:
    payload = b"\0\0a=1\0b=x=y\0a=2\0flag\0\0\0\0"
    assert parse_modinfo(payload) == {"a": ["1", "2"], "b": ["x=y"], "flag": [""]}


def _elf_without_modinfo() -> bytes:
    image = bytearray(elf_relocatable(b"name=x\0"))
    at = image.index(b".modinfo\0")
    image[at : at + 8] = b".notinfo"
    return bytes(image)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty__x.ko", b"", "empty file"),
        ("text__x.ko", b"#!/bin/sh\necho not a module\n", "not an ELF file"),
        ("short__x.ko", b"\x7fELF\x02\x01\x01", "not an ELF file"),
        ("trunc__x.ko", elf_relocatable(b"name=x\0")[:100], "past the end of the file"),
        ("class__x.ko", b"\x7fELF\x07\x01" + b"\0" * 100, "unsupported ELF class"),
        ("nomod__x.ko", _elf_without_modinfo(), "no .modinfo section"),
        ("badxz__x.ko.xz", b"not xz at all", "Input format not supported"),
        ("badzst__x.ko.zst", b"not zstd at all", ""),
        ("badgz__x.ko.gz", b"not gzip at all", ""),
    ],
)
def test_errors_name_the_file(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ModinfoError) as err:
        read_modinfo(path)
    assert err.value.path == str(path)
    assert str(err.value).startswith(f"{path}: ")
    assert reason in err.value.reason


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModinfoError, match="No such file"):
        read_modinfo(tmp_path / "gone__x.ko")


def test_extended_section_numbering() -> None:
    # e_shnum = 0 and e_shstrndx = SHN_XINDEX: the real values live in section header 0.
    image = bytearray(elf_relocatable(b"name=x\0k=v\0"))
    shoff, shnum, shstrndx = struct.unpack_from("<Q", image, 0x28)[0], image[0x3C], image[0x3E]
    struct.pack_into("<HH", image, 0x3C, 0, 0xFFFF)
    struct.pack_into("<Q", image, shoff + 0x20, shnum)  # sh_size
    struct.pack_into("<I", image, shoff + 0x28, shstrndx)  # sh_link
    assert parse_modinfo(modinfo_section(bytes(image))) == {"name": ["x"], "k": ["v"]}
