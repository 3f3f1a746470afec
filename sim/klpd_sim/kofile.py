"""Minimal kernel module files for tests and benchmarks, built without a compiler.

:func:`write_ko` writes an ELF64 little-endian x86-64 relocatable object (``ET_REL``) with
just what kmod's ``modinfo`` and ``depmod`` read: a ``.modinfo`` section of
``key=value\\0`` strings, an empty ``.gnu.linkonce.this_module`` (the section that makes an
object a module), an empty symbol table and the section name table. Nothing here can be
loaded by a kernel; it only has to look like a module to userspace.
"""

from __future__ import annotations

import gzip
import lzma
import random
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import zstandard

from klpd.core.names import module_name_from_path, normalise

COMPRESSIONS = ("none", "xz", "gz", "zst")

_ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr, 64 bytes
_SECTION_HEADER = struct.Struct("<IIQQQQIIQQ")  # Elf64_Shdr, 64 bytes
_SYMBOL = struct.Struct("<IBBHQQ")  # Elf64_Sym, 24 bytes

_ET_REL = 1
_EM_X86_64 = 62
_EV_CURRENT = 1
_SHT_PROGBITS = 1
_SHT_SYMTAB = 2
_SHT_STRTAB = 3
_SHF_WRITE = 0x1
_SHF_ALLOC = 0x2
_SHF_EXECINSTR = 0x4


@dataclass(frozen=True, slots=True)
class _Section:
    name: str
    type: int
    data: bytes
    flags: int = 0
    align: int = 1
    link: int = 0
    info: int = 0
    entsize: int = 0


def modinfo_bytes(name: str, modinfo: Mapping[str, str | Sequence[str]]) -> bytes:
    """The ``.modinfo`` payload: ``name=``, then the given keys in order, then ``license``.

    A sequence value repeats its key (``alias`` does in real modules). ``name`` and
    ``license`` given in ``modinfo`` override the defaults.
    """
    entries: list[tuple[str, str]] = []
    fields = dict(modinfo)
    entries.append(("name", _single(fields.pop("name", name))))
    fields.setdefault("license", "GPL")
    for key, value in fields.items():
        if "=" in key or "\0" in key or not key:
            raise ValueError(f"bad modinfo key {key!r}")
        values = [value] if isinstance(value, str) else list(value)
        for v in values:
            if "\0" in v:
                raise ValueError(f"modinfo value for {key!r} contains NUL")
            entries.append((key, v))
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in entries)


def elf_relocatable(modinfo_payload: bytes, text: bytes = b"") -> bytes:
    """An ELF64 x86-64 ``ET_REL`` image holding ``modinfo_payload`` as ``.modinfo``.

    ``text`` fills ``.text``, placed first as in real modules, to give files a real size.
    """
    sections = [
        _Section(".text", _SHT_PROGBITS, text, flags=_SHF_ALLOC | _SHF_EXECINSTR, align=16),
        _Section(".modinfo", _SHT_PROGBITS, modinfo_payload, flags=_SHF_ALLOC, align=8),
        _Section(
            ".gnu.linkonce.this_module",
            _SHT_PROGBITS,
            b"",
            flags=_SHF_WRITE | _SHF_ALLOC,
            align=64,
        ),
        # An empty symbol table (just the null symbol): depmod looks for one.
        _Section(
            ".symtab",
            _SHT_SYMTAB,
            _SYMBOL.pack(0, 0, 0, 0, 0, 0),
            link=5,
            info=1,
            align=8,
            entsize=_SYMBOL.size,
        ),
        _Section(".strtab", _SHT_STRTAB, b"\0"),
    ]
    shstrtab = bytearray(b"\0")
    name_offsets: list[int] = []
    for s in [*sections, _Section(".shstrtab", _SHT_STRTAB, b"")]:
        name_offsets.append(len(shstrtab))
        shstrtab += s.name.encode() + b"\0"
    sections.append(_Section(".shstrtab", _SHT_STRTAB, bytes(shstrtab)))

    body = bytearray(_ELF_HEADER.size)
    offsets: list[int] = []
    for s in sections:
        body += b"\0" * (-len(body) % s.align)
        offsets.append(len(body))
        body += s.data
    body += b"\0" * (-len(body) % 8)
    shoff = len(body)

    body += b"\0" * _SECTION_HEADER.size  # section 0: SHN_UNDEF
    for s, name_off, off in zip(sections, name_offsets, offsets, strict=True):
        body += _SECTION_HEADER.pack(
            name_off, s.type, s.flags, 0, off, len(s.data), s.link, s.info, s.align, s.entsize
        )

    ident = b"\x7fELF" + bytes([2, 1, _EV_CURRENT, 0]) + b"\0" * 8  # ELFCLASS64, LSB
    body[: _ELF_HEADER.size] = _ELF_HEADER.pack(
        ident,
        _ET_REL,
        _EM_X86_64,
        _EV_CURRENT,
        0,
        0,
        shoff,
        0,
        _ELF_HEADER.size,
        0,
        0,
        _SECTION_HEADER.size,
        len(sections) + 1,
        len(sections),
    )
    return bytes(body)


def compress(data: bytes, compression: str) -> bytes:
    """Compress like the kernel's ``modules_install`` does (xz uses CRC32 checks)."""
    if compression == "none":
        return data
    if compression == "xz":
        # As scripts/Makefile.modinst does: xz --check=crc32 --lzma2=dict=1MiB
        lzma2 = {"id": lzma.FILTER_LZMA2, "preset": 6, "dict_size": 1 << 20}
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=[lzma2])
    if compression == "gz":
        return gzip.compress(data, mtime=0)
    if compression == "zst":
        return zstandard.ZstdCompressor().compress(data)
    raise ValueError(f"unknown compression {compression!r}; expected one of {COMPRESSIONS}")


def write_ko(
    path: Path,
    modinfo: Mapping[str, str | Sequence[str]],
    compression: str = "none",
    *,
    text_size: int = 0,
) -> None:
    """Write a fake module file at ``path`` that kmod's ``modinfo`` reads.

    ``text_size`` bytes of filler code (half random, half zeros: it compresses about as
    well as real code) make the file as big as a real module, for benchmarks.

    The module name is ``modinfo["name"]`` if given, else the file name without its module
    suffix (``lp__ext4.ko.xz`` → ``lp__ext4``). ``path`` is written as given: pick a suffix
    that matches ``compression`` (kmod decides by content, klpd by suffix).
    """
    name = module_name_from_path(str(path))
    if name is None:
        name = normalise(path.name.split(".", 1)[0])
    rng = random.Random(name)
    text = rng.randbytes(text_size // 2) + bytes(text_size - text_size // 2)
    data = compress(elf_relocatable(modinfo_bytes(name, modinfo), text), compression)
    path.write_bytes(data)


def _single(value: str | Sequence[str]) -> str:
    if isinstance(value, str):
        return value
    if len(value) != 1:
        raise ValueError(f"modinfo 'name' must have one value, got {list(value)!r}")
    return value[0]
