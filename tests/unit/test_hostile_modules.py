"""Issue 11, points 2 and 3: hostile and corrupt module files are one catalog problem each.

Each file here is what the review built: a corrupt ``.ko.gz``, decompression bombs
(``.ko.zst``/``.ko.xz``/``.ko.gz`` inflating to 1 GiB), a sparse ``.ko`` whose .modinfo
claims 800 MiB, a 1,100-level directory tree. Memory is measured with tracemalloc (every
buffer the decompressors and the reader allocate goes through Python's allocator).
"""

from __future__ import annotations

import gzip
import lzma
import os
import struct
import tracemalloc
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

import pytest
import zstandard
from klpd_sim.kofile import elf_relocatable, modinfo_bytes, write_ko

from klpd.kernel import modinfo
from klpd.kernel.catalog import MAX_DEPTH, scan_catalog
from klpd.kernel.modinfo import MAX_IMAGE_BYTES, ModinfoError, read_modinfo

LP = {"livepatch": "Y", "vermagic": "6.1.0-13-amd64 SMP "}
GIB = 1 << 30
_ZEROS = 16 << 20


def _compress(data: bytes, kind: str) -> bytes:
    if kind == "gz":
        return gzip.compress(data, compresslevel=1)
    if kind == "xz":
        return lzma.compress(data, preset=0)
    return zstandard.ZstdCompressor(level=1).compress(data)


@cache
def _zeros(kind: str) -> bytes:
    return _compress(b"\0" * _ZEROS, kind)


def bomb(path: Path, kind: str, inflated: int, shoff: int | None = None) -> None:
    """A module header (section headers at ``shoff``) then zeros up to ``inflated`` bytes,
    as concatenated members/streams/frames (each format reads on across them)."""
    head = bytearray(elf_relocatable(modinfo_bytes("lp__vmlinux", LP)))
    if shoff is not None:
        struct.pack_into("<Q", head, 0x28, shoff)  # e_shoff
    with open(path, "wb") as f:
        f.write(_compress(bytes(head), kind))
        for _ in range(inflated // _ZEROS):
            f.write(_zeros(kind))


def peak_bytes_of(fn: Callable[[Path], object], *args: Path) -> tuple[int, BaseException | None]:
    tracemalloc.start()
    err: BaseException | None = None
    try:
        fn(*args)
    except BaseException as e:
        err = e
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, err


def test_corrupt_gz_is_one_problem_not_a_crash(tmp_path: Path) -> None:
    write_ko(tmp_path / "lpa__vmlinux.ko", LP)
    good = gzip.compress(elf_relocatable(modinfo_bytes("lpb__vmlinux", LP)))
    corrupt = tmp_path / "lpb__vmlinux.ko.gz"
    corrupt.write_bytes(good[:10] + b"\xff" * 40 + good[50:])  # header intact, data not
    catalog = scan_catalog([tmp_path])  # raised zlib.error out of the scan
    assert list(catalog.patches) == ["lpa"]
    (problem,) = catalog.problems
    assert problem.path == str(corrupt) and "cannot read modinfo" in problem.message


@pytest.mark.parametrize("kind", ["zst", "xz", "gz"])
def test_decompression_bomb_is_refused_within_the_cap(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"lp__vmlinux.ko.{kind}"
    bomb(path, kind, GIB, shoff=GIB - 4096)  # section headers at the very end
    peak, err = peak_bytes_of(read_modinfo, path)
    assert isinstance(err, ModinfoError), err
    assert "MiB" in err.reason, err.reason
    assert peak < 2 * MAX_IMAGE_BYTES, peak  # was 8.2 GiB RSS for a 4 GiB .ko.zst


@pytest.mark.parametrize("kind", ["zst", "xz", "gz"])
def test_decompression_stops_after_modinfo(tmp_path: Path, kind: str) -> None:
    # A real module followed by 1 GiB of trailing zeros: read, and the tail never inflated.
    path = tmp_path / f"lp__vmlinux.ko.{kind}"
    bomb(path, kind, GIB)
    peak, err = peak_bytes_of(read_modinfo, path)
    assert err is None, err
    assert read_modinfo(path)["livepatch"] == ["Y"]
    assert peak < 8 << 20, peak


def test_sparse_module_with_huge_modinfo_is_refused(tmp_path: Path) -> None:
    image = bytearray(elf_relocatable(modinfo_bytes("lp__vmlinux", LP)))
    shoff = struct.unpack_from("<Q", image, 0x28)[0]
    shnum, shstrndx = struct.unpack_from("<HH", image, 0x3C)
    names_off = struct.unpack_from("<Q", image, shoff + shstrndx * 64 + 0x18)[0]
    for i in range(shnum):  # find .modinfo, claim 800 MiB for it
        sh = shoff + i * 64
        name = struct.unpack_from("<I", image, sh)[0]
        if image[names_off + name :].startswith(b".modinfo\0"):
            struct.pack_into("<Q", image, sh + 0x20, 800 << 20)  # sh_size
    path = tmp_path / "lp__vmlinux.ko"
    path.write_bytes(image)
    os.truncate(path, 900 << 20)  # sparse: 4 KB on disk
    peak, err = peak_bytes_of(read_modinfo, path)
    assert isinstance(err, ModinfoError) and "more than" in err.reason, err
    assert peak < 4 << 20, peak  # was 812 MiB


def test_too_many_sections_refused() -> None:
    image = bytearray(elf_relocatable(modinfo_bytes("lp__vmlinux", LP)))
    struct.pack_into("<H", image, 0x3C, modinfo.MAX_SECTIONS + 1)  # e_shnum
    struct.pack_into("<H", image, 0x3E, 1)  # e_shstrndx
    with pytest.raises(ValueError, match="sections, more than"):
        modinfo.modinfo_section(bytes(image))


def _remove_chain(root: Path, name: str) -> None:
    """Remove ``root/name/name/...`` without recursion (shutil.rmtree, and so pytest's own
    clean-up of old temporary directories, recurses once per level) and with O(1) open
    files (one fd per level hit EMFILE in CI): move the child up beside its parent, remove
    the now-empty parent, repeat."""
    top, spare = root / name, root / f"{name}.next"
    while top.exists():
        child = top / name
        if child.exists():
            os.rename(child, spare)
            os.rmdir(top)
            os.rename(spare, top)
        else:
            os.rmdir(top)


@pytest.fixture
def deep_tree(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/d/d/.../d``, 1,100 levels (a tree that raised RecursionError)."""
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        for _ in range(1100):
            os.mkdir("d", dir_fd=fd)
            new = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = new
    finally:
        os.close(fd)
    try:
        yield tmp_path
    finally:
        _remove_chain(tmp_path, "d")


def test_deep_directory_tree_is_one_problem(deep_tree: Path) -> None:
    write_ko(deep_tree / "lp__vmlinux.ko", LP)
    catalog = scan_catalog([deep_tree])
    assert list(catalog.patches) == ["lp"]
    (problem,) = catalog.problems
    assert problem.path == str(deep_tree / "/".join(["d"] * (MAX_DEPTH + 1)))
    assert f"deeper than {MAX_DEPTH}" in problem.message


@pytest.mark.parametrize("error", [MemoryError(), RecursionError("too deep")])
def test_any_reader_failure_is_a_modinfo_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    def explode(path: str) -> bytes:
        raise error

    monkeypatch.setattr(modinfo, "_modinfo_section_of_file", explode)
    with pytest.raises(ModinfoError) as err:
        read_modinfo(tmp_path / "lp__vmlinux.ko")
    assert err.value.path == str(tmp_path / "lp__vmlinux.ko")
