"""The simulated machine's installed modules, and ``klpd-sim init``.

A spec is TOML::

    release = "6.1.0-sim"          # optional; --release wins
    compression = "none"           # optional: none, xz, gz, zst

    [modules.ext4]                 # one table per module file, the keys are its modinfo
    depends = "mbcache,jbd2"

    [modules.lpa__ext4]
    livepatch = "Y"
    klpd_sim_object = "ext4"       # sim-only: the object the klp_patch names
    klpd_sim_funcs = "ext4_file_write_iter"

Everything the sim later does with a module it reads back from the ``.ko`` file's modinfo
(:mod:`klpd_sim.modfile`), so a test may drop new files into the catalog directory while
the sim runs. Sim-only modinfo keys (``klpd_sim_*``) say what a real module says in code:

- ``klpd_sim_object``: the object patched (default: the name after the last ``__``);
- ``klpd_sim_funcs``: comma-separated patched functions (``<func>,1`` directories in sysfs);
- ``klpd_sim_replace=Y``: the ``klp_patch`` sets ``.replace = true``;
- ``klpd_sim_init_errno=EINVAL``: the module's init fails with that errno;
- ``klpd_sim_missing_func=Y``: the patch names a function its object lacks: loading it
  fails with EINVAL while the object is loaded; loaded first, it makes the object's
  load fail with EINVAL instead.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from klpd_sim.kofile import write_ko

DEFAULT_RELEASE = "6.1.0-sim"
_SUFFIX = {"none": ".ko", "xz": ".ko.xz", "gz": ".ko.gz", "zst": ".ko.zst"}


@dataclass(frozen=True, slots=True)
class Spec:
    release: str = DEFAULT_RELEASE
    compression: str = "none"
    modules: dict[str, dict[str, str]] = field(default_factory=dict)


def _target(description: str, depends: str = "") -> dict[str, str]:
    return {"description": description, "license": "GPL", "depends": depends, "intree": "Y"}


def _livepatch(
    obj: str, series: str, version: int, cve: str, funcs: str, **extra: str
) -> dict[str, str]:
    info = {
        "description": f"klpd demo livepatch {series} v{version} for {obj}",
        "license": "GPL",
        "livepatch": "Y",
        "depends": "",
        "klpd_series": series,
        "klpd_version": str(version),
        "klpd_cve": cve,
        "klpd_sim_object": obj,
        "klpd_sim_funcs": funcs,
    }
    info.update(extra)
    return info


_VMLINUX_FUNCS = "cmdline_proc_show"
_EXT4_FUNCS = "ext4_file_write_iter,ext4_llseek"
_TARGET_FUNCS = "klpd_target_value"


def demo_spec(release: str = DEFAULT_RELEASE) -> Spec:
    """The built-in set: three targets (with dependencies) and the demo livepatches."""
    lp = _livepatch
    modules: dict[str, dict[str, str]] = {
        "klpd_target": {**_target("klpd test target"), "intree": ""},
        "crc16": _target("CRC16 calculation"),
        "mbcache": _target("Meta block cache (for extended attributes)"),
        "jbd2": _target("Generic filesystem journal-writing code"),
        "ext4": _target("Fourth Extended Filesystem", "mbcache,jbd2,crc16"),
        "libcrc32c": _target("CRC32c (Castagnoli) calculations"),
        "xfs": _target("SGI XFS with ACLs, security attributes, realtime, scrub", "libcrc32c"),
        "lpa__vmlinux": lp("vmlinux", "lpa", 1, "CVE-2026-0001", _VMLINUX_FUNCS),
        "lpa__ext4": lp("ext4", "lpa", 1, "CVE-2026-0001", _EXT4_FUNCS),
        "lpa__klpd_target": lp("klpd_target", "lpa", 1, "CVE-2026-0001", _TARGET_FUNCS),
        "lpb__vmlinux": lp("vmlinux", "lpb", 1, "CVE-2026-0002", _VMLINUX_FUNCS),
        "lpb__ext4": lp("ext4", "lpb", 1, "CVE-2026-0002", "ext4_llseek"),
        "lpa_v2__vmlinux": lp("vmlinux", "lpa", 2, "CVE-2026-0001,CVE-2026-0003", _VMLINUX_FUNCS),
        "lpa_v2__ext4": lp("ext4", "lpa", 2, "CVE-2026-0001,CVE-2026-0003", _EXT4_FUNCS),
        # cumulative: v2 covers every object v1 did
        "lpa_v2__klpd_target": lp(
            "klpd_target", "lpa", 2, "CVE-2026-0001,CVE-2026-0003", _TARGET_FUNCS
        ),
        "lprep__vmlinux": lp(
            "vmlinux",
            "lprep",
            1,
            "CVE-2026-0004",
            _VMLINUX_FUNCS,
            klpd_replace="Y",
            klpd_sim_replace="Y",
        ),
        "lpbad__vmlinux": lp("vmlinux", "lpbad", 1, "CVE-2026-0006", _VMLINUX_FUNCS),
        "lpbad__ext4": lp(
            "ext4",
            "lpbad",
            1,
            "CVE-2026-0006",
            "ext4_no_such_function",
            klpd_sim_init_errno="EINVAL",
        ),
        # as tests/realkernel's lpbad__klpd_target: names a function klpd_target lacks
        "lpbad__klpd_target": lp(
            "klpd_target",
            "lpbad",
            1,
            "CVE-2026-0006",
            "klpd_target_no_such_function",
            klpd_sim_missing_func="Y",
        ),
    }
    return Spec(release=release, modules=modules)


def realkernel_spec(release: str = DEFAULT_RELEASE) -> Spec:
    """The modules of tests/realkernel (klpd_target and its livepatches), for replaying
    tests/realkernel/observed-trace.json against the sim."""
    lp = _livepatch
    target = "klpd_target"
    value, sleep = "klpd_target_value", "klpd_target_sleep"
    modules: dict[str, dict[str, str]] = {
        target: {**_target("klpd test target"), "intree": ""},
        "lpa__vmlinux": lp("vmlinux", "lpa", 1, "CVE-2026-0001", _VMLINUX_FUNCS),
        "lpa__klpd_target": lp(target, "lpa", 1, "CVE-2026-0001", value),
        "lpb__vmlinux": lp("vmlinux", "lpb", 1, "CVE-2026-0002", _VMLINUX_FUNCS),
        "lpb__klpd_target": lp(target, "lpb", 1, "CVE-2026-0002", value),
        "lpa_v2__vmlinux": lp("vmlinux", "lpa", 2, "CVE-2026-0001 CVE-2026-0003", _VMLINUX_FUNCS),
        "lpa_v2__klpd_target": lp(target, "lpa", 2, "CVE-2026-0001 CVE-2026-0003", value),
        "lprep__vmlinux": lp(
            "vmlinux",
            "lprep",
            1,
            "CVE-2026-0004",
            _VMLINUX_FUNCS,
            klpd_replace="Y",
            klpd_sim_replace="Y",
        ),
        "lpstall__vmlinux": lp("vmlinux", "lpstall", 1, "CVE-2026-0005", _VMLINUX_FUNCS),
        "lpstall__klpd_target": lp(target, "lpstall", 1, "CVE-2026-0005", sleep),
        "lpbad__vmlinux": lp("vmlinux", "lpbad", 1, "CVE-2026-0006", _VMLINUX_FUNCS),
        "lpbad__klpd_target": lp(
            target,
            "lpbad",
            1,
            "CVE-2026-0006",
            "klpd_target_no_such_function",
            klpd_sim_missing_func="Y",
        ),
    }
    # What the patched functions return, as the C modules do: /proc/cmdline reads
    # "<patch>-vmlinux", /proc/klpd_target reads "<patch>".
    for name, info in modules.items():
        patch, _, obj = name.rpartition("__")
        if patch:
            info["klpd_sim_output"] = f"{patch}-vmlinux" if obj == "vmlinux" else patch
    return Spec(release=release, modules=modules)


BUILTIN_SPECS = {"demo": demo_spec, "realkernel": realkernel_spec}


def load_spec(path: Path, release: str | None = None) -> Spec:
    """Read a TOML spec (see the module docstring); ``release`` overrides the file's."""
    with path.open("rb") as f:
        data: dict[str, Any] = tomllib.load(f)
    unknown = set(data) - {"release", "compression", "modules"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    modules: dict[str, dict[str, str]] = {}
    for name, info in data.get("modules", {}).items():
        if not isinstance(info, dict):
            raise ValueError(f"{path}: [modules.{name}] must be a table")
        modules[name] = {str(k): str(v) for k, v in info.items()}
    compression = str(data.get("compression", "none"))
    if compression not in _SUFFIX:
        raise ValueError(f"{path}: compression must be one of {sorted(_SUFFIX)}")
    return Spec(
        release=release or str(data.get("release", DEFAULT_RELEASE)),
        compression=compression,
        modules=modules,
    )


def vermagic(release: str) -> str:
    return f"{release} SMP preempt mod_unload modversions "


def init_root(root: Path, spec: Spec) -> None:
    """Lay out ``root``: empty sysfs/procfs trees, the release, and the module files."""
    (root / "sys/module").mkdir(parents=True, exist_ok=True)
    (root / "sys/kernel/livepatch").mkdir(parents=True, exist_ok=True)
    (root / "proc/sys/kernel").mkdir(parents=True, exist_ok=True)
    (root / "proc/sys/kernel/osrelease").write_text(spec.release + "\n")
    for d in ("run/modprobe.d", "etc/modprobe.d"):
        (root / d).mkdir(parents=True, exist_ok=True)
    extra = root / "lib/modules" / spec.release / "extra"
    extra.mkdir(parents=True, exist_ok=True)
    for name, info in spec.modules.items():
        modinfo = {"vermagic": vermagic(spec.release), **info}
        modinfo = {k: v for k, v in modinfo.items() if v != "" or k == "depends"}
        write_ko(extra / f"{name}{_SUFFIX[spec.compression]}", modinfo, spec.compression)
