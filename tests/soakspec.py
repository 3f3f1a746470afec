"""The soak's machine: targets with dependencies, a cumulative series in three versions,
two other patches, a declared atomic-replace patch klpd must never load, and another tool's
livepatch outside klpd's catalog (its transitions make klpd's EBUSY)."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from klpd_sim.kofile import write_ko
from klpd_sim.spec import Spec, vermagic

RELEASE = "6.1.0-soak"
DEPS = {"mbcache": "", "jbd2": "", "crc16": "", "libcrc32c": ""}
TARGETS = {"ext4": "mbcache,jbd2,crc16", "xfs": "libcrc32c", "klpd_target": "", "t1": "", "t2": ""}
PATCHES = {
    "lpa": ["vmlinux", "ext4", "xfs", "klpd_target"],
    "lpa_v2": ["vmlinux", "ext4", "xfs", "klpd_target"],
    "lpa_v3": ["vmlinux", "ext4", "xfs", "klpd_target", "t1"],
    "lpb": ["vmlinux", "ext4"],
    "lpc": ["vmlinux", "t1", "t2"],
    "lprep": ["vmlinux"],
}
FOREIGN = "other__vmlinux"


def series_of(patch: str) -> str:
    return patch.split("_v", 1)[0]


def _version(patch: str) -> str:
    return patch.split("_v", 1)[1] if "_v" in patch else "1"


def patch_modinfo(patch: str, obj: str) -> dict[str, str]:
    info = {
        "license": "GPL",
        "livepatch": "Y",
        "depends": "",
        "klpd_series": series_of(patch),
        "klpd_version": _version(patch),
        "klpd_sim_object": obj,
        "klpd_sim_funcs": f"{obj}_fix",
    }
    if patch == "lprep":
        info |= {"klpd_replace": "Y", "klpd_sim_replace": "Y"}
    return info


def soak_spec() -> Spec:
    """Targets and the foreign livepatch; klpd's patches are installed by the steps."""
    modules: dict[str, dict[str, str]] = {}
    for name, deps in {**DEPS, **TARGETS}.items():
        modules[name] = {"license": "GPL", "depends": deps, "intree": "Y"}
    return Spec(release=RELEASE, modules=modules)


def install_foreign(moddir: Path) -> None:
    d = moddir / "foreign"
    d.mkdir(parents=True, exist_ok=True)
    info = {**patch_modinfo("other", "vmlinux"), "vermagic": vermagic(RELEASE)}
    write_ko(d / f"{FOREIGN}.ko", info)


def catalog_dir(moddir: Path) -> Path:
    """klpd's catalog: its own directory (the targets live in ``extra``)."""
    return moddir / "klpd"


def install_patch(moddir: Path, patch: str) -> None:
    d = catalog_dir(moddir)
    d.mkdir(parents=True, exist_ok=True)
    for obj in PATCHES[patch]:
        path = d / f"{patch}__{obj}.ko"
        if not path.exists():
            write_ko(path, {**patch_modinfo(patch, obj), "vermagic": vermagic(RELEASE)})


Step = tuple[Any, ...]
Draw = Callable[[random.Random], Any]  # a step kind's argument


def machine_draws() -> dict[str, Draw]:
    """The arguments both soaks draw the same way: this machine's targets, patches, modules."""
    patches, targets = sorted(PATCHES), sorted(TARGETS)
    modules = sorted({f"{p}__{o}" for p, objs in PATCHES.items() for o in objs})
    objects = ["vmlinux", *targets]
    draws: dict[str, Draw] = {"kill": lambda r: r.randint(1, 4)}
    for kinds, pool in (
        (("load", "unload"), targets),
        (("install", "uninstall", "enable", "disable"), patches),
        (("fail", "hang"), modules),
        (("stall", "unstall"), objects),
    ):
        draws |= dict.fromkeys(kinds, _choice(pool))
    return draws


def _choice(pool: list[str]) -> Draw:
    return lambda r: r.choice(pool)


def draw_steps(
    seed: int, n: int, kinds: Mapping[str, float], draws: Mapping[str, Draw]
) -> list[Step]:
    """A run: the configuration, about half the patches installed, ``n`` steps of ``kinds``
    (by weight, each with its argument from ``draws``), a final quiescent check."""
    rng = random.Random(seed)
    names, weights = list(kinds), list(kinds.values())
    out: list[Step] = [("config", rng.choice(["keep", "remove"]), rng.choice(["revert", "wait"]))]
    out += [("install", p) for p in sorted(PATCHES) if rng.random() < 0.5]
    for _ in range(n):
        k = rng.choices(names, weights)[0]
        out.append((k, draws[k](rng)) if k in draws else (k,))
    out.append(("quiesce",))
    return out
