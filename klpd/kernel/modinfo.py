"""Read the ``.modinfo`` section of a kernel module file, as kmod's ``modinfo`` does.

Handles ``.ko``, ``.ko.xz``, ``.ko.gz`` and ``.ko.zst`` (chosen by suffix, as
``modules_install`` names them). Compressed files are decompressed as a stream, only as far
as the section headers and ``.modinfo`` reach, and never past ``MAX_IMAGE_BYTES``; section
counts and sizes are capped too (the numbers and the measured worst case are in
``docs/security.md``). The ELF section lookup is a small reader of its own
rather than pyelftools: on Debian's 6.1 modules pyelftools took ~1.5 ms per file to find
``.modinfo`` and this reader ~0.035 ms (40x), and the catalog scan does little else. The
tests check both agree.
"""

from __future__ import annotations

import gzip
import lzma
import os
import struct
from collections.abc import Callable
from typing import BinaryIO, Protocol

import zstandard

# (class, data) -> (Elf_Ehdr, Elf_Shdr). Fields used: e_shoff, e_shentsize, e_shnum,
# e_shstrndx; sh_name, sh_type, sh_offset, sh_size, sh_link.
_LAYOUTS: dict[tuple[int, int], tuple[struct.Struct, struct.Struct]] = {
    (cls, data): (
        struct.Struct(order + ("16sHHIIIIIHHHHHH" if cls == 1 else "16sHHIQQQIHHHHHH")),
        struct.Struct(order + ("IIIIIIIIII" if cls == 1 else "IIQQQQIIQQ")),
    )
    for cls in (1, 2)
    for data, order in ((1, "<"), (2, ">"))
}
# Caps against hostile files (issue 11). Debian 12's 4,023 modules: at most 93 sections,
# 19.5 MB (amdgpu.ko) uncompressed, .modinfo and the section names a few KB.
MAX_IMAGE_BYTES = 16 << 20  # decompressed bytes read from one compressed file, at most
MAX_SECTIONS = 16384
MAX_SECTION_BYTES = 1 << 20  # the section name table and .modinfo, each
_CHUNK = 1 << 20
_SHT_NOBITS = 8
_SHN_XINDEX = 0xFFFF
_MODINFO = b".modinfo"


class ModinfoError(Exception):
    """A module file whose modinfo cannot be read; ``str()`` names the file."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def read_modinfo(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """``key -> values`` from the module at ``path``, in file order (keys may repeat).

    Whatever is wrong with the file — corrupt, truncated, hostile, too big — is a
    :class:`ModinfoError` naming it, never another exception: one bad file is one catalog
    problem (issue 11).
    """
    name = os.fspath(path)
    try:
        return parse_modinfo(_modinfo_section_of_file(name))
    except ModinfoError:
        raise
    except OSError as e:
        raise ModinfoError(name, e.strerror or str(e)) from e
    except MemoryError:
        raise ModinfoError(name, "out of memory reading it") from None
    except Exception as e:  # zlib.error, LZMAError, ZstdError, EOFError, ValueError, ...
        raise ModinfoError(name, str(e) or type(e).__name__) from e


def parse_modinfo(payload: bytes) -> dict[str, list[str]]:
    """Split ``key=value\\0`` strings; padding NULs are skipped, as kmod does."""
    out: dict[str, list[str]] = {}
    for raw in payload.split(b"\0"):
        if not raw:
            continue
        key, _, value = raw.decode("utf-8", errors="replace").partition("=")
        out.setdefault(key, []).append(value)
    return out


def modinfo_section(image: bytes) -> bytes:
    """The ``.modinfo`` section's bytes of an ELF image; ValueError saying what is wrong."""
    return _find_modinfo(lambda offset, size: image[offset : offset + size], len(image))


class _Stream(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


def _decompressing_reader(path: str, raw: BinaryIO) -> _Stream:
    """A file object that decompresses ``raw`` as it is read (by the suffix of ``path``)."""
    if path.endswith(".xz"):
        return lzma.LZMAFile(raw)
    if path.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw)
    # read_across_frames: zstd frames need not record their size, and there may be several
    return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)


class _Inflated:
    """The start of a compressed module's image, decompressed only as far as it is asked for
    and never past :data:`MAX_IMAGE_BYTES`: a 132 KB ``.ko.zst`` that inflates to 4 GiB
    costs ``MAX_IMAGE_BYTES`` of memory and time, then is refused."""

    def __init__(self, stream: _Stream) -> None:
        self._stream = stream
        self._data = bytearray()
        self._eof = False

    def size_at_least(self, end: int) -> bool:
        """Decompress until ``end`` bytes are there (False: the image is shorter)."""
        if end > MAX_IMAGE_BYTES:
            raise ValueError(
                f"points {end} bytes into its image, past the {MAX_IMAGE_BYTES >> 20} MiB "
                "klpd decompresses"
            )
        while len(self._data) < end and not self._eof:
            if len(self._data) >= MAX_IMAGE_BYTES:
                raise ValueError(
                    f"decompresses to more than {MAX_IMAGE_BYTES >> 20} MiB before its "
                    "section headers and .modinfo end; not read further"
                )
            want = min(max(end - len(self._data), _CHUNK), MAX_IMAGE_BYTES - len(self._data))
            chunk = self._stream.read(want)
            if not chunk:
                self._eof = True
            self._data += chunk
        return len(self._data) >= end

    def read_at(self, offset: int, size: int) -> bytes:
        return bytes(self._data[offset : offset + size])


def module_image(path: str) -> bytes:
    """The whole uncompressed ELF image of the module file at ``path`` (by its suffix),
    streamed and refused (ValueError) past :data:`MAX_IMAGE_BYTES`."""
    with open(path, "rb") as raw:
        if not path.endswith((".xz", ".gz", ".zst")):
            data = raw.read(MAX_IMAGE_BYTES + 1)
        else:
            stream = _decompressing_reader(path, raw)
            try:
                image = _Inflated(stream)
                image.size_at_least(MAX_IMAGE_BYTES)
                data = image.read_at(0, MAX_IMAGE_BYTES) + stream.read(1)
            finally:
                stream.close()
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"larger than the {MAX_IMAGE_BYTES >> 20} MiB klpd reads of a module")
    return data


def _modinfo_section_of_file(path: str) -> bytes:
    if path.endswith((".xz", ".gz", ".zst")):
        with open(path, "rb") as raw:
            stream = _decompressing_reader(path, raw)
            try:
                image = _Inflated(stream)
                if not image.size_at_least(1):
                    raise ValueError("empty file")
                return _find_modinfo(image.read_at, image.size_at_least)
            finally:
                stream.close()
    # Uncompressed: read only the headers and .modinfo (real modules with debug info are
    # megabytes). pread beat mmap (~35 vs ~75 us per file here).
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        return _find_modinfo(lambda offset, n: os.pread(fd, n, offset), lambda end: end <= size)
    finally:
        os.close(fd)


def _find_modinfo(read_at: Callable[[int, int], bytes], has: Callable[[int], bool] | int) -> bytes:
    """The .modinfo bytes. ``has(end)``: whether the image is at least ``end`` bytes long
    (an int: the image's length)."""
    if isinstance(has, int):
        length = has
        has = lambda end: end <= length  # noqa: E731

    def read(offset: int, size: int, what: str, cap: int = MAX_SECTION_BYTES) -> bytes:
        if size > cap:
            raise ValueError(f"{what} is {size} bytes, more than the {cap} klpd reads")
        if not has(offset + size):
            raise ValueError(f"{what} lies past the end of the file")
        return read_at(offset, size)

    if not has(1):
        raise ValueError("empty file")
    ident = read(0, 16, "ELF identification") if has(16) else b""
    if ident[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    layout = _LAYOUTS.get((ident[4], ident[5]))
    if layout is None:
        raise ValueError(f"unsupported ELF class/data ({ident[4]}, {ident[5]})")
    ehdr, shdr = layout
    *_, shoff, _flags, _ehsize, _phentsize, _phnum, shentsize, shnum, shstrndx = ehdr.unpack(
        read(0, ehdr.size, "ELF header")
    )
    if shoff == 0 or shentsize < shdr.size:
        raise ValueError("no section headers")
    if shnum == 0 or shstrndx == _SHN_XINDEX:  # extended numbering: values in section 0
        first = shdr.unpack(read(shoff, shdr.size, "section header 0"))
        shnum = shnum or first[5]
        shstrndx = first[6] if shstrndx == _SHN_XINDEX else shstrndx
    if shstrndx >= shnum:
        raise ValueError("no section name table")
    if shnum > MAX_SECTIONS:
        raise ValueError(f"{shnum} sections, more than the {MAX_SECTIONS} klpd reads")
    table = read(shoff, shnum * shentsize, "section header table", shnum * max(shdr.size, 64))
    headers = [shdr.unpack_from(table, i * shentsize) for i in range(shnum)]
    names_sh = headers[shstrndx]
    names = read(names_sh[4], names_sh[5], "section name table")
    for sh in headers[1:]:
        if names[sh[0] : sh[0] + len(_MODINFO) + 1] == _MODINFO + b"\0":
            if sh[1] == _SHT_NOBITS:
                raise ValueError(".modinfo section has no contents")
            return read(sh[4], sh[5], ".modinfo section")
    raise ValueError("no .modinfo section")
