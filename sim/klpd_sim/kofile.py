"""Minimal kernel module files for tests and benchmarks, built without a compiler.

:func:`write_ko` writes an ELF64 little-endian x86-64 relocatable object (``ET_REL``) with
just what kmod's ``modinfo`` and ``depmod`` read: a ``.modinfo`` section of
``key=value\\0`` strings, an empty ``.gnu.linkonce.this_module`` (the section that makes an
object a module), a symbol table and the section name table; for a livepatch, also what
klpd's inspection reads: a ``struct klp_patch`` in ``.data`` with its objects, functions
and name strings, joined by ``R_X86_64_64`` relocations. Nothing here can be loaded by a
kernel; it only has to look like a module to userspace.
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
_RELA = struct.Struct("<QQq")  # Elf64_Rela, 24 bytes

_ET_REL = 1
_EM_X86_64 = 62
_EV_CURRENT = 1
_SHT_PROGBITS = 1
_SHT_SYMTAB = 2
_SHT_STRTAB = 3
_SHT_RELA = 4
_SHF_INFO_LINK = 0x40
_STT_OBJECT = 1
_STT_SECTION = 3
_STB_GLOBAL = 1
_R_X86_64_64 = 1
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


@dataclass(frozen=True, slots=True)
class KlpSpec:
    """The ``struct klp_patch`` a fake module carries, laid out as gcc does for the kernel.

    ``objects``: (name, functions) pairs, name None for vmlinux; a function is
    ``old_name`` or ``(old_name, old_sympos)``. Sizes default to Debian 6.1's BTF
    (``klp_object`` 168, ``klp_func`` 152, ``klp_patch`` 200). ``symbols=False`` leaves the
    arrays without sized symbols (a stripped module); ``static=False`` writes no
    ``klp_patch`` at all (klp-build's modules allocate it at run time), only a
    ``THIS_MODULE`` reference.
    """

    objects: tuple[tuple[str | None, tuple[str | tuple[str, int], ...]], ...]
    replace: bool = False
    object_size: int = 168
    func_size: int = 152
    patch_size: int = 200
    symbols: bool = True
    static: bool = True


def klp_spec_from_modinfo(name: str, modinfo: Mapping[str, str | Sequence[str]]) -> KlpSpec | None:
    """The sim's reading of its own ``klpd_sim_*`` keys (see klpd_sim.spec): what a real
    module would say in code. None for a module that is not a livepatch."""

    def get(key: str) -> str:
        value = modinfo.get(key, "")
        return value if isinstance(value, str) else (value[-1] if value else "")

    if get("livepatch") != "Y":
        return None
    objects = [o for o in get("klpd_sim_object").split(",") if o] or [name.rsplit("__", 1)[-1]]
    funcs = tuple(f for f in get("klpd_sim_funcs").split(",") if f)
    return KlpSpec(
        tuple(
            (None if o == "vmlinux" else o, funcs or (f"{normalise(o)}_klpd_sim_func",))
            for o in objects
        ),
        replace=get("klpd_sim_replace") == "Y",
        static=get("klpd_sim_klp") != "dynamic",
    )


def elf_relocatable(modinfo_payload: bytes, text: bytes = b"", klp: KlpSpec | None = None) -> bytes:
    """An ELF64 x86-64 ``ET_REL`` image holding ``modinfo_payload`` as ``.modinfo``.

    ``text`` fills ``.text``, placed first as in real modules, to give files a real size.
    ``klp`` adds a ``struct klp_patch`` in ``.data`` with its ``.rela.data`` relocations.
    """
    data = _KlpData(klp) if klp is not None else None
    sections = [
        _Section(".text", _SHT_PROGBITS, text, flags=_SHF_ALLOC | _SHF_EXECINSTR, align=16),
        _Section(".modinfo", _SHT_PROGBITS, modinfo_payload, flags=_SHF_ALLOC, align=8),
    ]
    if data is not None:
        sections += [
            _Section(".rodata.str1.1", _SHT_PROGBITS, bytes(data.strings), flags=_SHF_ALLOC),
            _Section(
                ".data", _SHT_PROGBITS, bytes(data.data), flags=_SHF_WRITE | _SHF_ALLOC, align=32
            ),
        ]
    sections.append(
        _Section(
            ".gnu.linkonce.this_module", _SHT_PROGBITS, b"", flags=_SHF_WRITE | _SHF_ALLOC, align=64
        )
    )
    index = {s.name: i + 1 for i, s in enumerate(sections)}
    symtab_index = len(sections) + 1 + (data is not None)
    symbols, names, first_global = (
        data.symbols(index) if data is not None else ([_SYMBOL.pack(0, 0, 0, 0, 0, 0)], b"\0", 1)
    )
    if data is not None:
        sections.append(
            _Section(
                ".rela.data",
                _SHT_RELA,
                data.relocations(),
                flags=_SHF_INFO_LINK,
                link=symtab_index,
                info=index[".data"],
                align=8,
                entsize=_RELA.size,
            )
        )
    sections += [
        # depmod looks for a symbol table, even an empty one (just the null symbol).
        _Section(
            ".symtab",
            _SHT_SYMTAB,
            b"".join(symbols),
            link=symtab_index + 1,
            info=first_global,
            align=8,
            entsize=_SYMBOL.size,
        ),
        _Section(".strtab", _SHT_STRTAB, names),
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


class _KlpData:
    """``.data`` (func arrays, the object array, the klp_patch), ``.rodata.str1.1`` and the
    relocations that join them, as gcc emits a livepatch module's static structs."""

    def __init__(self, spec: KlpSpec) -> None:
        self.strings = bytearray(b"\0")
        self.data = bytearray()
        self.relocs: list[tuple[int, str, int]] = []  # (offset in .data, symbol, addend)
        self.arrays: list[tuple[str, int, int]] = []  # (symbol, offset, size)
        self._symbol_index: dict[str, int] = {}
        if not spec.static:
            self.relocs.append((self._alloc("klpd_sim_owner", 8), "__this_module", 0))
            return
        funcs_at = []
        for _name, funcs in spec.objects:
            at = self._alloc("klpd_sim_funcs", (len(funcs) + 1) * spec.func_size, spec.symbols)
            for i, f in enumerate(funcs):
                old_name, sympos = (f, 0) if isinstance(f, str) else f
                base = at + i * spec.func_size
                self.relocs.append((base, ".rodata.str1.1", self._string(old_name)))
                self.relocs.append((base + 8, ".text", 0))
                struct.pack_into("<Q", self.data, base + 16, sympos)
            funcs_at.append(at)
        objs = self._alloc(
            "klpd_sim_objs", (len(spec.objects) + 1) * spec.object_size, spec.symbols
        )
        for i, ((name, _funcs), f_at) in enumerate(zip(spec.objects, funcs_at, strict=True)):
            base = objs + i * spec.object_size
            if name is not None:
                self.relocs.append((base, ".rodata.str1.1", self._string(name)))
            self.relocs.append((base + 8, ".data", f_at))
        patch = self._alloc("klpd_sim_patch", spec.patch_size, spec.symbols)
        self.relocs.append((patch, "__this_module", 0))
        self.relocs.append((patch + 8, ".data", objs))
        self.data[patch + 24] = int(spec.replace)

    def _alloc(self, symbol: str, size: int, named: bool = True) -> int:
        self.data += b"\0" * (-len(self.data) % 32)
        at = len(self.data)
        self.data += bytes(size)
        if named:
            self.arrays.append((symbol, at, size))
        return at

    def _string(self, text: str) -> int:
        at = len(self.strings)
        self.strings += text.encode() + b"\0"
        return at

    def symbols(self, index: dict[str, int]) -> tuple[list[bytes], bytes, int]:
        """Symbol table entries (locals first), their name table and the first global's index."""
        names = bytearray(b"\0")

        def name(text: str) -> int:
            names.extend(text.encode() + b"\0")
            return len(names) - len(text) - 1

        out = [_SYMBOL.pack(0, 0, 0, 0, 0, 0)]
        for section in (".text", ".rodata.str1.1", ".data"):
            self._symbol_index[section] = len(out)
            out.append(_SYMBOL.pack(0, _STT_SECTION, 0, index[section], 0, 0))
        for symbol, at, size in self.arrays:
            out.append(_SYMBOL.pack(name(symbol), _STT_OBJECT, 0, index[".data"], at, size))
        first_global = len(out)
        self._symbol_index["__this_module"] = len(out)
        out.append(
            _SYMBOL.pack(
                name("__this_module"),
                _STB_GLOBAL << 4 | _STT_OBJECT,
                0,
                index[".gnu.linkonce.this_module"],
                0,
                0,
            )
        )
        return out, bytes(names), first_global

    def relocations(self) -> bytes:
        return b"".join(
            _RELA.pack(at, self._symbol_index[symbol] << 32 | _R_X86_64_64, addend)
            for at, symbol, addend in self.relocs
        )


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
    klp: KlpSpec | None = None,
) -> None:
    """Write a fake module file at ``path`` that kmod's ``modinfo`` reads.

    ``text_size`` bytes of filler code (half random, half zeros: it compresses about as
    well as real code) make the file as big as a real module, for benchmarks.

    The module name is ``modinfo["name"]`` if given, else the file name without its module
    suffix (``lp__ext4.ko.xz`` → ``lp__ext4``). ``path`` is written as given: pick a suffix
    that matches ``compression`` (kmod decides by content, klpd by suffix).

    A livepatch (``livepatch=Y``) gets the ``struct klp_patch`` that ``klp`` describes, by
    default the one its ``klpd_sim_*`` keys say (:func:`klp_spec_from_modinfo`).
    """
    name = module_name_from_path(str(path))
    if name is None:
        name = normalise(path.name.split(".", 1)[0])
    rng = random.Random(name)
    text = rng.randbytes(text_size // 2) + bytes(text_size - text_size // 2)
    spec = klp if klp is not None else klp_spec_from_modinfo(name, modinfo)
    data = compress(elf_relocatable(modinfo_bytes(name, modinfo), text, spec), compression)
    path.write_bytes(data)


def _single(value: str | Sequence[str]) -> str:
    if isinstance(value, str):
        return value
    if len(value) != 1:
        raise ValueError(f"modinfo 'name' must have one value, got {list(value)!r}")
    return value[0]
