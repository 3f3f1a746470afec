"""Struct layouts from BTF (the kernel's compact type information), standard library only.

klpd needs the size and member offsets of three structs (``klp_patch``, ``klp_object``,
``klp_func``) to read a livepatch module's data. The running kernel describes its own
structs in ``/sys/kernel/btf/vmlinux`` (``CONFIG_DEBUG_INFO_BTF``, on in Debian since
5.x), so the layout comes from the kernel the module will be loaded into, not from a copy
of its headers. A module's own ``.BTF`` is split BTF: types already in vmlinux (these three,
as livepatch is built in) are deduplicated away, so it is no help here.

Format facts (Documentation/bpf/btf.rst): a header (magic 0xeB9F, then offsets relative to
its end), a type section of variable-length records, a string section. Type ids count from
1 in file order. Each record: ``name_off, info, size_or_type`` (u32 each), then per kind:
INT +4, ARRAY +12, STRUCT/UNION +12 per member, ENUM +8 per value, FUNC_PROTO +8 per
parameter, VAR +4, DATASEC +12 per variable, DECL_TAG +4, ENUM64 +12 per value. A struct
member is ``name_off, type, offset``; with ``kind_flag`` set the offset's low 24 bits are the
bit offset (the high 8 the bitfield size), else all 32 bits are.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

_MAGIC = 0xEB9F
_KIND_STRUCT = 4
_EXTRA = {1: 4, 3: 12, 14: 4, 17: 4}  # fixed trailing bytes by kind
_PER_ITEM = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}  # trailing bytes per vlen item
_MAX_KIND = 19


class BTFError(ValueError):
    """BTF data that cannot be read; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class StructLayout:
    name: str
    size: int
    members: dict[str, int]  # member name -> byte offset (bitfields left out)


def struct_layouts(data: bytes, names: Iterable[str]) -> dict[str, StructLayout]:
    """The layouts of the structs called ``names`` found in ``data`` (absent ones left out).

    Only the first struct of each name counts (vmlinux BTF is deduplicated: one each).
    """
    if len(data) < 24:
        raise BTFError("BTF data too short for its header")
    magic_le = struct.unpack_from("<H", data)[0]
    order = "<" if magic_le == _MAGIC else ">" if magic_le == 0x9FEB else ""
    if not order:
        raise BTFError("not BTF data (bad magic)")
    _magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
        order + "HBBIIIII", data
    )
    types_at, strings_at = hdr_len + type_off, hdr_len + str_off
    if types_at + type_len > len(data) or strings_at + str_len > len(data):
        raise BTFError("BTF sections lie past the end of the data")
    strings = data[strings_at : strings_at + str_len]
    wanted = set(names)
    # Find each wanted name's string offset first: comparing integers in the walk below is
    # much cheaper than decoding every type's name.
    offsets: dict[int, str] = {}
    for name in wanted:
        at = strings.find(b"\0" + name.encode() + b"\0")
        if at >= 0:
            offsets[at + 1] = name
    out: dict[str, StructLayout] = {}
    record = struct.Struct(order + "III")
    member = struct.Struct(order + "III")
    pos, end = types_at, types_at + type_len
    while pos < end and len(out) < len(offsets):
        if pos + record.size > end:
            raise BTFError("truncated BTF type record")
        name_off, info, size = record.unpack_from(data, pos)
        kind, vlen, kind_flag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
        if kind > _MAX_KIND or kind == 0:
            raise BTFError(f"unknown BTF kind {kind} at offset {pos - types_at}")
        body = pos + record.size
        pos = body + _EXTRA.get(kind, 0) + _PER_ITEM.get(kind, 0) * vlen
        if pos > end:
            raise BTFError("truncated BTF type record")
        if kind != _KIND_STRUCT or name_off not in offsets or offsets[name_off] in out:
            continue
        members: dict[str, int] = {}
        for i in range(vlen):
            m_name, _m_type, m_offset = member.unpack_from(data, body + i * member.size)
            bit_offset = m_offset & 0xFFFFFF if kind_flag else m_offset
            if bit_offset % 8 == 0 and not (kind_flag and m_offset >> 24):
                members[_string(strings, m_name)] = bit_offset // 8
        out[offsets[name_off]] = StructLayout(offsets[name_off], size, members)
    return out


def _string(strings: bytes, offset: int) -> str:
    end = strings.find(b"\0", offset)
    return strings[offset : end if end >= 0 else len(strings)].decode("ascii", "replace")
