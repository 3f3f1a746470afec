"""What the sim's modprobe reads: module files, their modinfo, and modprobe.d softdeps.

Real modprobe looks names up in ``modules.dep`` (written by depmod); the sim scans the
module directory on every call instead, so files added while it runs are found at once.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

from klpd.core.names import module_name_from_path, normalise
from klpd.kernel.modinfo import read_modinfo


@dataclass(frozen=True, slots=True)
class ModFile:
    """A module file and the facts the simulated kernel acts on."""

    name: str
    path: Path
    modinfo: dict[str, list[str]]

    def get(self, key: str, default: str = "") -> str:
        values = self.modinfo.get(key)
        return values[-1] if values else default

    @property
    def depends(self) -> list[str]:
        return [normalise(d) for d in self.get("depends").split(",") if d]

    @property
    def livepatch(self) -> bool:
        return self.get("livepatch") == "Y"

    @property
    def lp_object(self) -> str:
        return normalise(self.get("klpd_sim_object") or self.name.rsplit("__", 1)[-1])

    @property
    def lp_funcs(self) -> list[str]:
        funcs = [f for f in self.get("klpd_sim_funcs").split(",") if f]
        return funcs or [f"{self.lp_object}_klpd_sim_func"]

    @property
    def lp_replace(self) -> bool:
        return self.get("klpd_sim_replace") == "Y"

    @property
    def lp_missing_func(self) -> bool:
        return self.get("klpd_sim_missing_func") == "Y"

    @property
    def init_errno(self) -> int:
        """0, or the errno the module's init returns (``klpd_sim_init_errno``)."""
        name = self.get("klpd_sim_init_errno")
        if not name:
            return 0
        value = getattr(errno, name, None)
        if not isinstance(value, int):
            raise ValueError(f"{self.path}: klpd_sim_init_errno={name!r} is not an errno name")
        return value


def find_module(moddir: Path, name: str) -> ModFile | None:
    """The file for module ``name`` under ``moddir`` (``-`` and ``_`` are the same)."""
    wanted = normalise(name)
    if not moddir.is_dir():
        return None
    for path in sorted(moddir.rglob("*.ko*")):
        if module_name_from_path(str(path)) == wanted and path.is_file():
            return ModFile(wanted, path, read_modinfo(path))
    return None


def read_softdeps(conf_dirs: list[Path], name: str) -> tuple[list[str], list[str]]:
    """``softdep <name> pre: ... post: ...`` from ``*.conf`` files, as modprobe.d(5)."""
    wanted = normalise(name)
    files: dict[str, Path] = {}
    for d in conf_dirs:  # earlier directories win for the same file name, like kmod
        if d.is_dir():
            for f in sorted(d.glob("*.conf")):
                files.setdefault(f.name, f)
    pre: list[str] = []
    post: list[str] = []
    for fname in sorted(files):
        try:
            text = files[fname].read_text()
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) < 2 or words[0] != "softdep" or normalise(words[1]) != wanted:
                continue
            into: list[str] | None = None
            for w in words[2:]:
                if w == "pre:":
                    into = pre
                elif w == "post:":
                    into = post
                elif into is not None:
                    into.append(normalise(w))
    return pre, post
