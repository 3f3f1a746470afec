"""The catalog: which split livepatches are installed, read from module files on disk.

``scan_catalog`` walks the module directories, learns patch names from the
``<patch>__vmlinux`` main modules, resolves every other ``<patch>__<object>`` file against
them (longest known patch wins) and reads modinfo only for those candidates. Anything it
cannot use becomes a :class:`CatalogProblem` naming the file; one bad file never hides the
rest of the catalog.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from klpd.core import names
from klpd.core.model import Catalog, CatalogProblem, Patch, PatchModule
from klpd.kernel.modinfo import ModinfoError, read_modinfo

log = logging.getLogger(__name__)

Modinfo = Mapping[str, Sequence[str]]
_FileKey = tuple[int, int, int]  # st_mtime_ns, st_size, st_ino

# "<series>_v<N>": lp_cve_2026_1234_v3 is version 3 of series lp_cve_2026_1234.
_VERSIONED = re.compile(r"(?P<series>.+)_v(?P<version>[0-9]+)")
_YES = frozenset({"Y", "y", "1"})
# "__" once "-" is read as "_": a cheap first test, before normalising 20,000 file names.
_MAYBE_SPLIT = re.compile(r"[-_][-_]")
# /lib/modules/$(uname -r)/kernel/drivers/net/ethernet/mellanox/mlx5/core is 8 deep; a
# tree deeper than this is not a module tree (issue 11: 1,100 levels crashed the scan).
MAX_DEPTH = 32


class ModinfoCache:
    """modinfo per file, valid while the file's (mtime, size, inode) stay the same.

    Keyed by path, so a replaced file replaces its entry; unreadable files are cached too
    (with their error), so a rescan of an unchanged tree reads nothing. ``reads`` counts
    the files actually read. The inode is part of the key because package managers
    install files with the package's mtime: a rebuilt module of the same size, renamed
    into place, keeps (mtime, size) but not the inode.

    Scans run in a worker thread (off the event loop) and may overlap (a reload and a
    dry run's): the entries are guarded by a lock held only around the dictionary, never
    while a file is read, so a scan never waits for another one's slow file (at worst
    both read it).
    """

    def __init__(self, reader: Callable[[str], Modinfo] = read_modinfo) -> None:
        self._reader = reader
        self._entries: dict[str, tuple[_FileKey, Modinfo | ModinfoError]] = {}
        self._lock = threading.Lock()
        self.reads = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, path: str, key: _FileKey) -> Modinfo:
        """modinfo of ``path``; raises :class:`ModinfoError` (cached like a result)."""
        with self._lock:
            entry = self._entries.get(path)
            if entry is not None and entry[0] == key:
                self.hits += 1
            else:
                self.reads += 1
                entry = None
        if entry is not None:
            result = entry[1]
        else:
            try:
                result = self._reader(path)  # outside the lock: it may take a while
            except ModinfoError as e:
                result = e
            with self._lock:
                self._entries[path] = (key, result)
        if isinstance(result, ModinfoError):
            raise result
        return result

    def keep_only(self, paths: set[str]) -> None:
        """Forget files that the last scan did not see (removed, renamed)."""
        with self._lock:
            for path in self._entries.keys() - paths:
                del self._entries[path]


@dataclass(frozen=True, slots=True)
class _File:
    path: str
    module: str  # normalised
    key: _FileKey
    identity: tuple[int, int]  # st_dev, st_ino


def scan_catalog(
    directories: Sequence[Path],
    previous: Catalog | None = None,
    cache: ModinfoCache | None = None,
) -> Catalog:
    """Scan ``directories`` (recursively, in the given order) for split livepatches.

    A patch with a module file found twice is refused (both files named): klpd cannot
    tell which one modprobe would load. Directories are walked in the given order, each
    depth-first in name order. A :class:`Patch` equal to one in ``previous`` is
    returned as that same object, so callers can tell unchanged patches by identity.
    """
    cache = cache if cache is not None else ModinfoCache()
    problems: list[CatalogProblem] = []

    def problem(path: str, message: str) -> None:
        problems.append(CatalogProblem(path, f"{path}: {message}"))

    files: dict[str, _File] = {}
    duplicates: list[_File] = []
    for directory in directories:
        for f in _module_files(directory, problem):
            kept = files.get(f.module)
            if kept is not None:
                if kept.identity != f.identity:  # not the same file reached twice
                    duplicates.append(f)
            else:
                files[f.module] = f

    patch_names = names.split_by_vmlinux(files)
    split: dict[str, names.SplitName] = {}
    for module in files:
        s = names.split_known(module, patch_names)
        if s is not None:
            split[module] = s

    modinfo: dict[str, Modinfo] = {}
    for module, f in files.items():
        try:
            modinfo[module] = cache.get(f.path, f.key)
        except ModinfoError as e:
            if module in split:
                problem(f.path, f"cannot read modinfo: {e.reason}")
            else:
                log.debug("ignoring %s: %s", f.path, e)
    cache.keep_only({f.path for f in files.values()})

    # A module installed twice: modprobe loads whichever file depmod's search order puts
    # first (updates/ before the rest by default, but depmod.d can say otherwise), which
    # need not be the file klpd vetted (issue 11: a plain extra/P__vmlinux.ko vetted, a
    # klpd_replace=Y updates/P__vmlinux.ko loaded). So the whole patch is refused.
    twice: set[str] = set()
    for d in duplicates:
        first = files[d.module].path
        if d.module in split:
            twice.add(d.module)
            problem(
                d.path,
                f"{d.module} is installed twice (also as {first}); modprobe may load either, "
                f"so patch {split[d.module].patch} is refused until one of them is removed",
            )
        elif _is_livepatch(modinfo.get(d.module, {})):
            problem(d.path, f"module {d.module} is also installed as {first}")
    refused: dict[str, str] = {}  # patch -> its modules installed twice
    for m in sorted(twice):
        p = split[m].patch
        refused[p] = f"{refused[p]}, {m}" if p in refused else m

    modules: dict[str, dict[str, PatchModule]] = {}
    for module, f in files.items():
        info = modinfo.get(module)
        s = split.get(module)
        if s is not None and s.patch in refused:
            problem(f.path, f"patch {s.patch} refused: {refused[s.patch]} installed twice")
            continue
        if s is None:
            if info is not None and _is_livepatch(info):
                problem(f.path, _orphan_message(module))
            continue  # an ordinary module that happens to contain "__"
        if info is None:
            continue  # unreadable, reported above
        if not _is_livepatch(info):
            problem(
                f.path,
                f"{module} is named as object {s.obj} of patch {s.patch} but is not a "
                "livepatch module (no modinfo livepatch=Y)",
            )
            continue
        try:
            modules.setdefault(s.patch, {})[s.obj] = _patch_module(s, f.path, info)
        except ValueError as e:
            problem(f.path, str(e))

    patches: dict[str, Patch] = {}
    for patch_name in sorted(modules):
        patch = _assemble_patch(patch_name, modules[patch_name], problem)
        if patch is None:
            continue
        old = previous.patches.get(patch_name) if previous is not None else None
        patches[patch_name] = old if old == patch else patch
    problems.sort(key=lambda p: p.path)
    return Catalog(patches=patches, problems=tuple(problems))


def vermagic_matches(module: PatchModule, release: str) -> bool:
    """Whether ``module`` was built for kernel ``release`` (vermagic's first word).

    A module without vermagic matches nothing: the kernel would refuse to load it.
    """
    words = module.vermagic.split()
    return bool(words) and words[0] == release


def _module_files(directory: Path, problem: Callable[[str, str], None]) -> Iterator[_File]:
    """Module files under ``directory`` whose name contains ``__``, depth-first, by name.

    The ``__`` filter is the scan's whole economy: every split livepatch module is named
    ``<patch>__<object>`` by construction, so a file without ``__`` can never be part of
    the catalog, and /lib/modules holds thousands of those that would otherwise each be
    stat()ed and read. Symlinked directories are not followed (no loops); symlinked files
    are, as modprobe does. Directories deeper than :data:`MAX_DEPTH` below ``directory``
    are one problem each, not a crash (a 1,100-level tree used to raise RecursionError).
    """
    stack = [(iter(_listing(directory, problem)), 0)]
    while stack:
        entries, depth = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
        elif not entry.is_dir(follow_symlinks=False):
            f = _module_file(entry, problem)
            if f is not None:
                yield f
        elif depth >= MAX_DEPTH:
            problem(entry.path, f"nested deeper than {MAX_DEPTH} directories; not scanned")
        else:
            stack.append((iter(_listing(Path(entry.path), problem)), depth + 1))


def _listing(directory: Path, problem: Callable[[str, str], None]) -> list[os.DirEntry[str]]:
    """Subdirectories and maybe-split files of ``directory``, by name."""
    try:
        with os.scandir(directory) as it:
            return sorted(
                (e for e in it if e.is_dir(follow_symlinks=False) or _MAYBE_SPLIT.search(e.name)),
                key=lambda e: e.name,
            )
    except FileNotFoundError:
        log.debug("module directory %s does not exist", directory)
    except OSError as e:
        problem(str(directory), f"cannot list directory: {e.strerror or e}")
    return []


def _module_file(entry: os.DirEntry[str], problem: Callable[[str, str], None]) -> _File | None:
    module = names.module_name_from_path(entry.name)
    if module is None or names.SEPARATOR not in module:
        return None
    try:
        names.validate_module_name(module)
        st = entry.stat()
    except names.NameError_ as e:
        problem(entry.path, str(e))
        return None
    except OSError as e:
        problem(entry.path, f"cannot stat: {e.strerror or e}")
        return None
    if not entry.is_file():
        return None
    key = (st.st_mtime_ns, st.st_size, st.st_ino)
    return _File(entry.path, module, key, (st.st_dev, st.st_ino))


def _is_livepatch(info: Modinfo) -> bool:
    # The kernel marks a module as a livepatch when the key is present at all
    # (check_modinfo_livepatch); MODULE_INFO(livepatch, "Y") is how it is spelled.
    return "livepatch" in info


def _orphan_message(module: str) -> str:
    candidates = names.candidate_splits(module)
    if not candidates:
        return f"livepatch module {module} cannot be read as <patch>__<object>"
    mains = ", ".join(f"{c.patch}{names.SEPARATOR}{names.VMLINUX}" for c in candidates)
    return f"livepatch module {module} has no main module: none of {mains} is installed"


def _patch_module(s: names.SplitName, path: str, info: Modinfo) -> PatchModule:
    if s.is_vmlinux:
        names.validate_patch_name(s.patch, where=s.module)
    series, version = _series_version(s.patch, info)
    return PatchModule(
        module=s.module,
        patch=s.patch,
        obj=s.obj,
        path=path,
        livepatch=True,
        depends=tuple(names.normalise(d) for d in _first(info, "depends").split(",") if d),
        vermagic=_first(info, "vermagic"),
        description=_first(info, "description"),
        cves=_cves(info),
        series=series,
        version=version,
        replace=_first(info, "klpd_replace") in _YES,
    )


def _series_version(patch: str, info: Modinfo) -> tuple[str, int]:
    """modinfo ``klpd_series``/``klpd_version`` if either is set, else ``<series>_v<N>``.

    When modinfo declares one of them it is authoritative and the name is not parsed: a
    missing series is the patch name, a missing version is 1.
    """
    series = _single(info, "klpd_series")
    raw_version = _single(info, "klpd_version")
    if series is None and raw_version is None:
        m = _VERSIONED.fullmatch(patch)
        return (m["series"], int(m["version"])) if m else (patch, 1)
    try:
        version = int(raw_version) if raw_version is not None else 1
    except ValueError:
        raise ValueError(f"modinfo klpd_version={raw_version!r} is not an integer") from None
    return series or patch, version


def _assemble_patch(
    name: str, modules: Mapping[str, PatchModule], problem: Callable[[str, str], None]
) -> Patch | None:
    main = modules.get(names.VMLINUX)
    if main is None:
        main_name = f"{name}{names.SEPARATOR}{names.VMLINUX}"
        for m in modules.values():
            problem(m.path, f"patch {name} skipped: its main module {main_name} is unusable")
        return None
    inconsistent = [
        m for m in modules.values() if (m.series, m.version) != (main.series, main.version)
    ]
    for m in inconsistent:
        problem(
            m.path,
            f"series/version ({m.series}, {m.version}) disagrees with the main module "
            f"{main.path} ({main.series}, {main.version}); patch {name} skipped",
        )
    if inconsistent:
        return None
    return Patch(
        name=name, modules=dict(sorted(modules.items())), series=main.series, version=main.version
    )


def _cves(info: Modinfo) -> tuple[str, ...]:
    out: dict[str, None] = {}  # ordered set
    for value in info.get("klpd_cve", ()):
        for cve in value.split(","):
            if cve.strip():
                out[cve.strip()] = None
    return tuple(out)


def _first(info: Modinfo, key: str) -> str:
    values = info.get(key)
    return values[0] if values else ""


def _single(info: Modinfo, key: str) -> str | None:
    values = info.get(key)
    if not values:
        return None
    if len(set(values)) > 1:
        raise ValueError(f"modinfo {key} is given {len(values)} times: {list(values)!r}")
    return values[0]
