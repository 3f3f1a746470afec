"""A small reader of 64-bit relocatable ELF objects (``.ko`` files): sections, symbols and
the absolute 64-bit RELA relocations that fill pointers in data. Standard library only.

Everything read is bounds-checked: a truncated or corrupt file raises :class:`ElfError`
with what is wrong, never an IndexError or struct.error.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

_ET_REL = 1
_SHT_SYMTAB = 2
_SHT_RELA = 4
_SHT_NOBITS = 8
_SHF_ALLOC = 0x2
_SHF_EXECINSTR = 0x4
_STT_OBJECT = 1
_SHN_LORESERVE = 0xFF00
_MAX_STRING = 4096
# e_machine -> the relocation type that stores an absolute 64-bit address (a C pointer in
# data): x86-64 R_X86_64_64, arm64 R_AARCH64_ABS64, ppc64 R_PPC64_ADDR64, s390x R_390_64,
# riscv R_RISCV_64, loongarch R_LARCH_64.
ABS64 = {62: 1, 183: 257, 21: 38, 22: 22, 243: 2, 258: 2}


class ElfError(ValueError):
    """Not a readable 64-bit relocatable ELF object; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Section:
    name: str
    type: int
    flags: int
    offset: int
    size: int
    link: int
    info: int
    entsize: int


@dataclass(frozen=True, slots=True)
class Symbol:
    name: str
    type: int
    section: int
    value: int
    size: int


@dataclass(frozen=True, slots=True)
class Target:
    """Where a relocated pointer points: ``symbol`` + addend resolved to ``section`` (0 for
    an undefined symbol) and ``offset`` in it."""

    symbol: str
    section: int
    offset: int


class RelocatableElf:
    def __init__(self, image: bytes) -> None:
        self._image = image
        if len(image) < 64 or image[:4] != b"\x7fELF":
            raise ElfError("not an ELF file" if image[:4] != b"\x7fELF" else "truncated ELF header")
        if image[4] != 2:
            raise ElfError("not a 64-bit ELF file (32-bit modules are not supported)")
        self._order = {1: "<", 2: ">"}.get(image[5], "")
        if not self._order:
            raise ElfError(f"unknown ELF byte order {image[5]}")
        fields = struct.unpack_from(self._order + "HHIQQQIHHHHHH", image, 16)
        (
            e_type,
            self.machine,
            _v,
            _entry,
            _phoff,
            shoff,
            _f,
            _eh,
            _phe,
            _phn,
            shentsize,
            shnum,
            shstrndx,
        ) = fields
        if e_type != _ET_REL:
            raise ElfError("not a relocatable object (ET_REL): not a kernel module")
        if shoff == 0 or shentsize < 64 or shnum == 0:
            raise ElfError("no section headers")
        raw = [
            struct.unpack_from(
                self._order + "IIQQQQIIQQ", self._bytes(shoff + i * shentsize, 64, "section header")
            )
            for i in range(shnum)
        ]
        if shstrndx >= shnum:
            raise ElfError("no section name table")
        names = self._bytes(raw[shstrndx][4], raw[shstrndx][5], "section name table")
        self.sections = [
            Section(_cstr(names, r[0]), r[1], r[2], r[4], r[5], r[6], r[7], r[9]) for r in raw
        ]
        for s in self.sections[1:]:
            if s.type != _SHT_NOBITS and s.offset + s.size > len(image):
                raise ElfError(
                    f"section {s.name or '?'} lies past the end of the file (truncated?)"
                )
        self.symbols = self._read_symbols()
        self._relocs: dict[int, dict[int, Target]] | None = None

    # --- raw access ------------------------------------------------------------------------

    def _bytes(self, offset: int, size: int, what: str) -> bytes:
        if offset < 0 or size < 0 or offset + size > len(self._image):
            raise ElfError(f"{what} lies past the end of the file (truncated?)")
        return self._image[offset : offset + size]

    def _section(self, index: int) -> Section:
        if not 0 < index < len(self.sections):
            raise ElfError(f"bad section index {index}")
        return self.sections[index]

    def read(self, section: int, offset: int, size: int) -> bytes:
        s = self._section(section)
        if offset < 0 or offset + size > s.size:
            raise ElfError(f"read past the end of section {s.name}")
        if s.type == _SHT_NOBITS:
            return bytes(size)
        return self._image[s.offset + offset : s.offset + offset + size]

    def word(self, section: int, offset: int) -> int:
        value: int = struct.unpack(self._order + "Q", self.read(section, offset, 8))[0]
        return value

    def string(self, target: Target) -> str:
        s = self._section(target.section)
        if s.type == _SHT_NOBITS or not 0 <= target.offset < s.size:
            raise ElfError(f"a string pointer leads outside section {s.name}")
        data = self.read(target.section, target.offset, min(_MAX_STRING, s.size - target.offset))
        end = data.find(b"\0")
        if end < 0:
            raise ElfError(f"unterminated string in section {s.name}")
        try:
            return data[:end].decode()
        except UnicodeDecodeError as e:
            raise ElfError(f"a string in section {s.name} is not UTF-8") from e

    def is_data(self, section: int) -> bool:
        if not 0 < section < len(self.sections):
            return False
        s = self.sections[section]
        return bool(s.flags & _SHF_ALLOC) and not s.flags & _SHF_EXECINSTR

    # --- symbols and relocations -------------------------------------------------------------

    def _read_symbols(self) -> list[Symbol]:
        symtab = next((s for s in self.sections if s.type == _SHT_SYMTAB), None)
        if symtab is None:
            raise ElfError("no symbol table")
        strtab = self._section(symtab.link)
        strings = self._bytes(strtab.offset, strtab.size, "symbol name table")
        data = self._bytes(symtab.offset, symtab.size, "symbol table")
        out = []
        for at in range(0, len(data) - 23, 24):
            name, info, _other, shndx, value, size = struct.unpack_from(
                self._order + "IBBHQQ", data, at
            )
            out.append(Symbol(_cstr(strings, name), info & 0xF, shndx, value, size))
        return out

    def _index(self) -> dict[int, dict[int, Target]]:
        if self._relocs is not None:
            return self._relocs
        abs64 = ABS64.get(self.machine)
        index: dict[int, dict[int, Target]] = {}
        for rela in self.sections:
            if rela.type != _SHT_RELA or not 0 < rela.info < len(self.sections):
                continue
            if not self.sections[rela.info].flags & _SHF_ALLOC:
                continue  # .rela.debug_* and the like: most of a module's relocations
            data = self._bytes(rela.offset, rela.size, f"relocation section {rela.name}")
            into = index.setdefault(rela.info, {})
            for at in range(0, len(data) - 23, 24):
                r_offset, r_info, addend = struct.unpack_from(self._order + "QQq", data, at)
                if r_info & 0xFFFFFFFF != abs64:
                    continue
                sym_index = r_info >> 32
                if sym_index >= len(self.symbols):
                    raise ElfError(
                        f"{rela.name}: relocation against symbol {sym_index} of {len(self.symbols)}"
                    )
                sym = self.symbols[sym_index]
                section = sym.section if 0 < sym.section < _SHN_LORESERVE else 0
                name = sym.name or (
                    self.sections[section].name if section < len(self.sections) else ""
                )
                into[r_offset] = Target(name, section, sym.value + addend)
        self._relocs = index
        return index

    def reloc_at(self, section: int, offset: int) -> Target | None:
        return self._index().get(section, {}).get(offset)

    def reloc_offsets(self, section: int, start: int, end: int) -> list[int]:
        """Offsets, relative to ``start``, of relocated pointers in ``[start, end)``."""
        return sorted(o - start for o in self._index().get(section, {}) if start <= o < end)

    def relocations_to(self, symbol: str) -> Iterator[tuple[int, int, Target]]:
        for section, relocs in self._index().items():
            for offset, target in sorted(relocs.items()):
                if target.symbol == symbol:
                    yield section, offset, target

    def all_relocations(self) -> Iterator[Target]:
        for relocs in self._index().values():
            yield from relocs.values()

    def symbol_size_at(self, section: int, offset: int) -> int:
        """The size of the data object symbol that starts at ``offset`` (0: none)."""
        sizes = [
            s.size
            for s in self.symbols
            if s.section == section and s.value == offset and s.type == _STT_OBJECT
        ]
        return max(sizes, default=0)


def _cstr(table: bytes, offset: int) -> str:
    if offset >= len(table):
        return ""
    end = table.find(b"\0", offset)
    return table[offset : end if end >= 0 else len(table)].decode("utf-8", "replace")
