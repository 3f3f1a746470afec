"""Read a livepatch module's ``struct klp_patch`` from its file, before it is ever loaded.

What klpd must know before a load is what the kernel will do with it: whether the patch is
an atomic-replace one (it would wipe every other livepatch), and which objects and functions
it patches. A module's modinfo is only its author's word; this reads the data itself.

How, on every kernel line (5.5+; the external members of these structs have not moved
since ``states`` arrived in 5.5):

- ``struct klp_patch`` is the data object whose first member is relocated against
  ``__this_module`` (``.mod = THIS_MODULE``) and whose ``objs`` member points at data with
  a relocated ``funcs`` pointer (a ``file_operations`` also starts with ``.owner =
  THIS_MODULE``, but its second member points at code). ``.replace`` is a plain byte there.
- In a relocatable object (``ET_REL``, what a ``.ko`` is) every pointer in data is a zero
  with a RELA relocation naming a symbol and an addend; following them leads to the
  ``klp_object`` array, each object's name string (NULL: vmlinux) and its ``klp_func``
  array (``old_name`` string, ``old_sympos`` a plain integer).
- Array strides are ``sizeof`` the structs, which vary with the kernel's configuration
  (they embed a ``struct kobject``): taken from BTF when the caller has it (the running
  kernel's ``/sys/kernel/btf/vmlinux``), otherwise from the array symbol's size in the
  module's symbol table (``st_size`` of a static array is exact), checked against where
  the relocations fall.
- A module without a static ``klp_patch`` (the kernel's ``klp-build`` allocates it in init
  code, where ``replace`` is an instruction, not data) has an undeterminable replace flag.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from klpd.kernel.btf import BTFError, struct_layouts
from klpd.kernel.elfrel import ElfError, RelocatableElf, Target
from klpd.kernel.modinfo import ModinfoError, module_image

VMLINUX = "vmlinux"
_MAX_ENTRIES = 4096  # no real patch has more objects or functions; bounds a corrupt file


class InspectError(Exception):
    """A module file whose ``klp_patch`` cannot be read; ``str()`` names the file."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True, slots=True)
class KlpLayout:
    """Byte offsets of the external members, and the struct sizes when known (BTF)."""

    patch_objs: int = 8
    patch_replace: int = 24
    object_name: int = 0
    object_funcs: int = 8
    object_size: int | None = None
    func_old_name: int = 0
    func_new_func: int = 8
    func_old_sympos: int = 16
    func_size: int | None = None
    source: str = "built-in offsets (5.5+), sizes from the module's symbols"


DEFAULT_LAYOUT = KlpLayout()


def layout_from_btf(data: bytes, source: str) -> KlpLayout:
    """The layout described by vmlinux BTF ``data``; BTFError if it lacks the structs."""
    found = struct_layouts(data, ("klp_patch", "klp_object", "klp_func"))
    if len(found) < 3:
        raise BTFError(f"{source} has no struct klp_patch (kernel without CONFIG_LIVEPATCH?)")
    p, o, f = found["klp_patch"].members, found["klp_object"].members, found["klp_func"].members
    try:
        return KlpLayout(
            patch_objs=p["objs"],
            patch_replace=p["replace"],
            object_name=o["name"],
            object_funcs=o["funcs"],
            object_size=found["klp_object"].size,
            func_old_name=f["old_name"],
            func_new_func=f["new_func"],
            func_old_sympos=f["old_sympos"],
            func_size=found["klp_func"].size,
            source=f"BTF of {source}",
        )
    except KeyError as e:
        raise BTFError(f"{source}: livepatch struct without member {e}") from e


def running_kernel_layout(sysfs_root: str = "/sys") -> KlpLayout:
    """The running kernel's layout from its BTF, or :data:`DEFAULT_LAYOUT` without one."""
    path = os.path.join(sysfs_root, "kernel/btf/vmlinux")
    try:
        with open(path, "rb") as f:
            return layout_from_btf(f.read(), path)
    except (OSError, BTFError):
        return DEFAULT_LAYOUT


@dataclass(frozen=True, slots=True)
class KlpFunc:
    old_name: str
    old_sympos: int = 0


@dataclass(frozen=True, slots=True)
class KlpObject:
    name: str  # "vmlinux" for the NULL name
    funcs: tuple[KlpFunc, ...] = ()


@dataclass(frozen=True, slots=True)
class Inspection:
    """What a module's ``klp_patch`` says. ``replace`` is None when it cannot be known
    (``why_unknown`` says why); ``objects`` is then whatever could still be read."""

    replace: bool | None
    objects: tuple[KlpObject, ...]
    layout: str
    why_unknown: str = ""

    @property
    def object_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.objects)

    def to_dict(self) -> dict[str, object]:
        return {
            "replace": self.replace,
            "objects": [
                {
                    "name": o.name,
                    "funcs": [
                        {"old_name": f.old_name, "old_sympos": f.old_sympos} for f in o.funcs
                    ],
                }
                for o in self.objects
            ],
            "layout": self.layout,
            "why_unknown": self.why_unknown,
        }


def inspect_module(path: str | os.PathLike[str], layout: KlpLayout = DEFAULT_LAYOUT) -> Inspection:
    """Inspect the module file at ``path`` (``.ko`` or compressed); InspectError if unreadable."""
    name = os.fspath(path)
    try:
        image = module_image(name)
    except ModinfoError as e:
        raise InspectError(name, e.reason) from e
    except OSError as e:
        raise InspectError(name, e.strerror or str(e)) from e
    except Exception as e:  # a corrupt compressed stream: each decompressor has its own error
        raise InspectError(name, f"cannot decompress: {e or type(e).__name__}") from e
    try:
        return inspect_image(image, layout)
    except ElfError as e:
        raise InspectError(name, str(e)) from e


def inspect_image(image: bytes, layout: KlpLayout = DEFAULT_LAYOUT) -> Inspection:
    """Inspect an uncompressed module image; ElfError saying what is wrong."""
    elf = RelocatableElf(image)
    candidates = _patch_candidates(elf, layout)
    if not candidates:
        if not any(r.symbol == "__this_module" for r in elf.all_relocations()):
            raise ElfError("no struct klp_patch: nothing refers to THIS_MODULE")
        return Inspection(
            None,
            (),
            layout.source,
            "no static struct klp_patch: not a livepatch, or one whose klp_patch is built at "
            "run time (as klp-build's init code does), where replace is code, not data",
        )
    if len(candidates) > 1:
        return Inspection(None, (), layout.source, f"{len(candidates)} struct klp_patch found")
    section, offset = candidates[0]
    flag = elf.read(section, offset + layout.patch_replace, 1)
    if elf.reloc_at(section, offset + layout.patch_replace) is not None:
        raise ElfError("klp_patch.replace is relocated: not a struct klp_patch")
    objs = elf.reloc_at(section, offset + layout.patch_objs)
    assert objs is not None  # checked by _patch_candidates
    try:
        objects = _objects(elf, objs, layout)
    except ElfError as e:
        return Inspection(flag != b"\0", (), layout.source, f"objects unreadable: {e}")
    return Inspection(flag != b"\0", objects, layout.source)


def _patch_candidates(elf: RelocatableElf, layout: KlpLayout) -> list[tuple[int, int]]:
    out = []
    for section, offset, _target in elf.relocations_to("__this_module"):
        objs = elf.reloc_at(section, offset + layout.patch_objs)
        if objs is None or not elf.is_data(objs.section):
            continue
        funcs = elf.reloc_at(objs.section, objs.offset + layout.object_funcs)
        if funcs is not None and elf.is_data(funcs.section):
            out.append((section, offset))
    return out


def _objects(elf: RelocatableElf, objs: Target, layout: KlpLayout) -> tuple[KlpObject, ...]:
    stride = layout.object_size or _stride(
        elf, objs, (layout.object_name, layout.object_funcs), "klp_object"
    )
    out = []
    for base in _entries(elf, objs, stride, (layout.object_name, layout.object_funcs)):
        name_t = elf.reloc_at(objs.section, base + layout.object_name)
        funcs_t = elf.reloc_at(objs.section, base + layout.object_funcs)
        if funcs_t is None:
            raise ElfError("a klp_object without funcs")
        name = elf.string(name_t) if name_t is not None else VMLINUX
        out.append(KlpObject(name, _funcs(elf, funcs_t, layout)))
    return tuple(out)


def _funcs(elf: RelocatableElf, funcs: Target, layout: KlpLayout) -> tuple[KlpFunc, ...]:
    members = (layout.func_old_name, layout.func_new_func, layout.func_old_sympos)
    stride = layout.func_size or _stride(elf, funcs, members, "klp_func")
    out = []
    for base in _entries(elf, funcs, stride, members):
        name_t = elf.reloc_at(funcs.section, base + layout.func_old_name)
        if name_t is None:
            raise ElfError("a klp_func without old_name")
        sympos = elf.word(funcs.section, base + layout.func_old_sympos)
        out.append(KlpFunc(elf.string(name_t), sympos))
    return tuple(out)


def _entries(
    elf: RelocatableElf, start: Target, stride: int, members: tuple[int, ...]
) -> list[int]:
    """Offsets of the array's entries up to its all-zero terminator (as the kernel's
    ``klp_for_each_*_static`` walk it: every external member NULL/0)."""
    out: list[int] = []
    base = start.offset
    while True:
        if all(
            elf.reloc_at(start.section, base + m) is None and not elf.word(start.section, base + m)
            for m in members
        ):
            return out
        out.append(base)
        if len(out) > _MAX_ENTRIES:
            raise ElfError("array without a terminator")
        base += stride


def _stride(elf: RelocatableElf, start: Target, members: tuple[int, ...], what: str) -> int:
    """``sizeof`` an array's element from the size of the symbol at its start: with n
    entries and a terminator the array is (n+1) strides long, entry k (k < n) has a
    relocation in its external members, and no relocation falls anywhere else."""
    extent = elf.symbol_size_at(start.section, start.offset)
    if not extent:
        raise ElfError(f"cannot tell sizeof(struct {what}): no BTF and no symbol for the array")
    relocs = elf.reloc_offsets(start.section, start.offset, start.offset + extent)
    span = max(members) + 8
    for n in range(1, _MAX_ENTRIES):
        if extent // (n + 1) < span:
            break
        if extent % (n + 1):
            continue
        s = extent // (n + 1)
        has = [any(k * s <= r < k * s + span for r in relocs) for k in range(n)]
        stray = [r for r in relocs if r >= n * s or r % s >= span]
        if all(has) and not stray:
            return s
    raise ElfError(f"cannot tell sizeof(struct {what}) from a {extent}-byte array")


__all__ = [
    "DEFAULT_LAYOUT",
    "BTFError",
    "ElfError",
    "InspectError",
    "Inspection",
    "KlpFunc",
    "KlpLayout",
    "KlpObject",
    "inspect_image",
    "inspect_module",
    "layout_from_btf",
    "running_kernel_layout",
]
