"""What modprobe and rmmod (kmod) do around the kernel calls, and what they print.

Messages and exit codes are kmod's (tools/modprobe.c, tools/rmmod.c), so that klpd's
parsing of real modprobe output is exercised unchanged.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from klpd.core.names import normalise
from klpd_sim.kernel import Kernel
from klpd_sim.modfile import ModFile, find_module, read_softdeps


@dataclass(frozen=True, slots=True)
class ToolResult:
    rc: int
    stdout: str = ""
    stderr: str = ""


class _NotFound(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


def _probe_list(
    moddir: Path, conf_dirs: list[Path], name: str, seen: set[str]
) -> list[tuple[ModFile, bool]]:
    """kmod's probe list: pre softdeps, dependencies (deepest first), the module, post
    softdeps. The flag marks softdeps, whose failures modprobe ignores."""
    if name in seen:
        return []
    seen.add(name)
    mf = find_module(moddir, name)
    if mf is None:
        raise _NotFound(name)
    pre, post = read_softdeps(conf_dirs, name)
    out: list[tuple[ModFile, bool]] = []
    for soft in pre:
        out += _softdep_list(moddir, conf_dirs, soft, seen)
    for dep in mf.depends:
        out += _probe_list(moddir, conf_dirs, dep, seen)
    out.append((mf, False))
    for soft in post:
        out += _softdep_list(moddir, conf_dirs, soft, seen)
    return out


def _softdep_list(
    moddir: Path, conf_dirs: list[Path], name: str, seen: set[str]
) -> list[tuple[ModFile, bool]]:
    """A softdep's own probe list, all marked as softdeps; a missing one is skipped."""
    try:
        return [(m, True) for m, _ in _probe_list(moddir, conf_dirs, name, seen)]
    except _NotFound:
        return []


def modprobe(kernel: Kernel, moddir: Path, conf_dirs: list[Path], given: str) -> ToolResult:
    name = normalise(given)
    if kernel.loaded(name) and name in kernel.modules:
        return ToolResult(0)  # already in the kernel: nothing to do, success
    try:
        probe = _probe_list(moddir, conf_dirs, name, set())
    except _NotFound as e:
        shown = given if e.name == name else e.name
        return ToolResult(
            1, stderr=f"modprobe: FATAL: Module {shown} not found in directory {moddir}\n"
        )
    err = 0
    for mf, softdep in probe:
        if mf.name in kernel.modules:
            continue
        err = kernel.init_module(mf)
        if err == errno.EEXIST or softdep:
            err = 0
        elif err:
            break
    if not err:
        return ToolResult(0)
    if err == errno.ENOENT:
        why = "Unknown symbol in module, or unknown parameter (see dmesg)"
    else:
        why = os.strerror(err)
    return ToolResult(1, stderr=f"modprobe: ERROR: could not insert '{name}': {why}\n")


def rmmod(kernel: Kernel, given: str) -> ToolResult:
    name = normalise(given.rsplit("/", 1)[-1].split(".ko", 1)[0])
    mod = kernel.modules.get(name)
    if mod is None:
        return ToolResult(1, stderr=f"rmmod: ERROR: Module {name} is not currently loaded\n")
    if mod.holders:
        holders = " ".join(sorted(mod.holders))
        return ToolResult(1, stderr=f"rmmod: ERROR: Module {name} is in use by: {holders}\n")
    if mod.refcnt > 0:
        return ToolResult(1, stderr=f"rmmod: ERROR: Module {name} is in use\n")
    err = kernel.delete_module(name)
    if err:
        return ToolResult(
            1, stderr=f"rmmod: ERROR: could not remove module {name}: {os.strerror(err)}\n"
        )
    return ToolResult(0)
