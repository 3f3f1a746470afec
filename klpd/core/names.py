"""Livepatch module names: ``<patch>__<object>``.

Pure functions. A module name is at most 55 bytes (``MODULE_NAME_LEN`` is 56 with the NUL),
``-`` and ``_`` are the same to modprobe and the kernel shows ``_``, and ``__`` may appear
more than once, so a name is split only against the known patch names, never blindly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

MODULE_NAME_MAX = 55
VMLINUX = "vmlinux"
SEPARATOR = "__"

# What the kernel accepts in a module name is wider, but a livepatch name that reaches a
# command line must be boring: letters, digits and underscores after normalisation.
_VALID = re.compile(r"[A-Za-z0-9_]+")
_COMPRESSED_SUFFIXES = (".ko.xz", ".ko.zst", ".ko.gz", ".ko")


class NameError_(ValueError):
    """A module or patch name that klpd refuses; the message says why."""


@dataclass(frozen=True, slots=True)
class SplitName:
    """A livepatch module name resolved into its patch and object."""

    patch: str
    obj: str

    @property
    def module(self) -> str:
        return f"{self.patch}{SEPARATOR}{self.obj}"

    @property
    def is_vmlinux(self) -> bool:
        return self.obj == VMLINUX


def normalise(name: str) -> str:
    """The kernel's spelling of a module name: ``-`` becomes ``_``."""
    return name.replace("-", "_")


# A refused name is quoted in the message at most this long: the message goes back to
# whoever sent the name (a D-Bus caller, whose reply must stay under the bus's message size
# limit) and to the journal.
SHOWN_MAX = 64


def shown(name: str) -> str:
    """``name`` quoted for a message, its start only if it is long."""
    if len(name) <= SHOWN_MAX:
        return repr(name)
    return f"{name[:SHOWN_MAX]!r}... ({len(name)} characters)"


def validate_module_name(name: str, *, where: str = "") -> str:
    """Return the normalised name or raise :class:`NameError_` saying what is wrong."""
    origin = f" ({where})" if where else ""
    if not name:
        raise NameError_(f"empty module name{origin}")
    norm = normalise(name)
    if len(norm.encode()) > MODULE_NAME_MAX:
        raise NameError_(
            f"module name {shown(name)} is {len(norm.encode())} bytes, the kernel allows "
            f"{MODULE_NAME_MAX}{origin}"
        )
    if name.startswith("-"):
        raise NameError_(f"module name {name!r} must not start with '-'{origin}")
    if not _VALID.fullmatch(norm):
        raise NameError_(
            f"module name {name!r} may contain only letters, digits, '-' and '_'{origin}"
        )
    return norm


def validate_patch_name(name: str, *, where: str = "") -> str:
    """A patch name: a valid module name that leaves room for ``__vmlinux``."""
    norm = validate_module_name(name, where=where)
    origin = f" ({where})" if where else ""
    if norm.startswith("_") or norm.endswith("_"):
        raise NameError_(f"patch name {name!r} must not start or end with '_'{origin}")
    if len(norm) + len(SEPARATOR) + len(VMLINUX) > MODULE_NAME_MAX:
        raise NameError_(
            f"patch name {name!r} is too long: {norm}{SEPARATOR}{VMLINUX} would exceed "
            f"{MODULE_NAME_MAX} bytes{origin}"
        )
    return norm


def module_name_from_path(path: str) -> str | None:
    """``/lib/.../foo-bar.ko.zst`` → ``foo_bar``; None for a file that is not a module."""
    base = path.rsplit("/", 1)[-1]
    for suffix in _COMPRESSED_SUFFIXES:
        if base.endswith(suffix):
            return normalise(base[: -len(suffix)])
    return None


def candidate_splits(module: str) -> list[SplitName]:
    """Every way to read ``module`` as ``<patch>__<object>``, longest patch first.

    ``a__b__c`` can be patch ``a`` for object ``b__c`` or patch ``a__b`` for object ``c``;
    only a catalog that knows which patches exist can choose (:func:`split_known`).
    """
    norm = normalise(module)
    out: list[SplitName] = []
    start = 0
    while (i := norm.find(SEPARATOR, start)) != -1:
        patch, obj = norm[:i], norm[i + len(SEPARATOR) :]
        if patch and obj and not patch.endswith("_") and not obj.startswith("_"):
            out.append(SplitName(patch, obj))
        start = i + 1
    out.reverse()
    return out


def split_known(module: str, patches: Iterable[str]) -> SplitName | None:
    """Resolve ``module`` against known patch names; the longest known patch wins."""
    known = set(patches)
    for cand in candidate_splits(module):
        if cand.patch in known:
            return cand
    return None


def split_by_vmlinux(modules: Iterable[str]) -> set[str]:
    """Patch names, found from the ``<patch>__vmlinux`` modules among ``modules``.

    A patch exists because its main module does: this is how the catalog learns the
    patch names that :func:`split_known` then resolves the other modules against.
    """
    suffix = SEPARATOR + VMLINUX
    out: set[str] = set()
    for m in modules:
        norm = normalise(m)
        if norm.endswith(suffix) and len(norm) > len(suffix):
            patch = norm[: -len(suffix)]
            if not patch.endswith("_") and _VALID.fullmatch(patch):
                out.add(patch)
    return out
