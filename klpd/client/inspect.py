"""``klpctl inspect FILE|MODULE...``: would klpd load these modules, and if not, why?

For patch authors, packagers and their CI: it needs no running daemon (nor root). It reads
each module file as klpd does before a load (:mod:`klpd.kernel.klpinspect`) and checks
every rule klpd applies: the name (55 bytes, ``-`` is ``_``, a ``__`` split that is
unambiguous against the installed patches), modinfo ``livepatch``, vermagic against the
running kernel or ``--kernel RELEASE``, atomic-replace, the object(s) patched, and says
whether softdep pre-arming is safe. Exit 0 when every module would be loaded, else 1 with
every problem listed (6 on a usage error, as klpctl's other verbs).

Imported only when the verb runs, so the other verbs keep klpctl's fast start.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from klpd.client.ctl import add_inspect_arguments
from klpd.core import names
from klpd.core.model import Catalog
from klpd.core.screen import KlpFacts, Undeterminable, screen
from klpd.kernel.catalog import scan_catalog
from klpd.kernel.klpinspect import (
    DEFAULT_LAYOUT,
    BTFError,
    InspectError,
    KlpLayout,
    inspect_module,
    layout_from_btf,
    running_kernel_layout,
)
from klpd.kernel.modinfo import ModinfoError, read_modinfo

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 6  # klpctl's usage error


@dataclass
class Report:
    target: str
    path: str = ""
    module: str = ""
    patch: str = ""
    obj: str = ""
    livepatch: bool | None = None
    vermagic: str = ""
    release: str = ""
    replace: bool | None = None
    objects: list[dict[str, Any]] = field(default_factory=list)
    layout: str = ""
    series: str = ""
    version: str = ""
    cves: list[str] = field(default_factory=list)
    depends: list[str] = field(default_factory=list)
    softdep: str = ""
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def would_load(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["would_load"] = self.would_load
        return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="klpctl inspect",
        description="Check livepatch module files (or installed modules by name) the way klpd "
        "does before loading them. No running klpd needed.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_inspect_arguments(p)
    return p


def main(argv: list[str]) -> int:
    try:
        a = build_parser().parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else EXIT_OK
    from klpd.service.config import DEFAULT_PATH, Config, ConfigError, load_config

    try:
        if a.config:
            config = load_config(Path(a.config))
        else:
            config = load_config(DEFAULT_PATH) if DEFAULT_PATH.exists() else Config()
        running = config.kernel.read_release()
    except ConfigError as e:
        print(f"klpctl inspect: {e}", file=sys.stderr)
        return EXIT_USAGE
    release = a.kernel or running
    layout = DEFAULT_LAYOUT
    if a.btf:
        try:
            layout = layout_from_btf(Path(a.btf).read_bytes(), a.btf)
        except (OSError, BTFError) as e:
            print(f"klpctl inspect: {a.btf}: {e}", file=sys.stderr)
            return EXIT_USAGE
    elif release == running:
        layout = running_kernel_layout(config.kernel.sysfs_root)
    undeterminable = Undeterminable(config.inspect.undeterminable)
    catalog = scan_catalog([Path(d) for d in config.catalog.resolve(release)])
    reports = [inspect_target(t, catalog, release, layout, undeterminable) for t in a.targets]
    if a.json:
        print(json.dumps([r.to_dict() for r in reports], indent=1, sort_keys=True))
    else:
        print("\n\n".join(render(r) for r in reports))
    return EXIT_OK if all(r.would_load for r in reports) else EXIT_PROBLEMS


def inspect_target(
    target: str,
    catalog: Catalog,
    release: str,
    layout: KlpLayout,
    undeterminable: Undeterminable,
) -> Report:
    r = Report(target, release=release)
    if "/" in target or names.module_name_from_path(target) is not None:
        r.path = target
    else:
        found = catalog.module(names.normalise(target))
        if found is None:
            r.problems.append(f"no installed livepatch module named {target!r}")
            return r
        r.path = found.path
    _check_name(r, catalog)
    _check_modinfo(r)
    _check_klp_patch(r, layout, undeterminable)
    return r


def _check_name(r: Report, catalog: Catalog) -> None:
    module = names.module_name_from_path(r.path)
    if module is None:
        r.problems.append("not a module file name (*.ko, *.ko.xz, *.ko.zst, *.ko.gz)")
        return
    base = os.path.basename(r.path).split(".ko")[0]
    try:
        r.module = names.validate_module_name(base)
    except names.NameError_ as e:
        r.module = module
        r.problems.append(str(e))
        return
    if "-" in base:
        r.warnings.append(f"{base!r} is loaded and shown as {r.module!r} ('-' is '_')")
    installed = set(catalog.patches) | names.split_by_vmlinux([r.module])
    candidates = names.candidate_splits(r.module)
    known = [c for c in candidates if c.patch in installed]
    if not candidates:
        r.problems.append(f"{r.module} is not named <patch>__<object>")
        return
    if not known:
        mains = ", ".join(f"{c.patch}__vmlinux" for c in candidates)
        r.problems.append(f"no main module installed for it: none of {mains}")
        return
    if len(known) > 1:
        ways = ", ".join(f"patch {c.patch} object {c.obj}" for c in known)
        r.warnings.append(
            f"{r.module} splits several ways against the installed patches ({ways}); "
            "klpd takes the longest patch name"
        )
    r.patch, r.obj = known[0].patch, known[0].obj
    if r.obj == names.VMLINUX:
        try:
            names.validate_patch_name(r.patch)
        except names.NameError_ as e:
            r.problems.append(str(e))


def _check_modinfo(r: Report) -> None:
    try:
        info = read_modinfo(r.path)
    except ModinfoError as e:
        r.problems.append(f"cannot read modinfo: {e.reason}")
        return

    def first(key: str) -> str:
        return info.get(key, [""])[0]

    r.livepatch = "livepatch" in info
    if not r.livepatch:
        r.problems.append("not a livepatch module (no modinfo livepatch=Y)")
    r.vermagic = first("vermagic")
    built = r.vermagic.split()[0] if r.vermagic else ""
    if built != r.release:
        r.problems.append(f"built for {built or 'no kernel (no vermagic)'}, not {r.release}")
    r.series, r.version = first("klpd_series"), first("klpd_version")
    r.cves = [c.strip() for v in info.get("klpd_cve", []) for c in v.split(",") if c.strip()]
    r.depends = [names.normalise(d) for d in first("depends").split(",") if d]
    if r.obj and r.obj != names.VMLINUX:
        if r.obj in r.depends:
            r.softdep = f"unsafe: it depends on {r.obj}'s symbols, so cannot load before it"
        else:
            r.softdep = f"safe: it does not depend on {r.obj}, so it can be loaded before it"
    elif r.obj:
        r.softdep = "not applicable (vmlinux)"


def _check_klp_patch(r: Report, layout: KlpLayout, undeterminable: Undeterminable) -> None:
    r.layout = layout.source
    try:
        got = inspect_module(r.path, layout)
    except InspectError as e:
        facts = KlpFacts(None, None, e.reason)
    else:
        r.replace, r.layout = got.replace, got.layout
        r.objects = [
            {
                "name": o.name,
                "funcs": [f.old_name for f in o.funcs],
                "sympos": [f.old_sympos for f in o.funcs],
            }
            for o in got.objects
        ]
        facts = KlpFacts(got.replace, got.object_names if got.objects else None, got.why_unknown)
    named = r.obj or (facts.objects[0] if facts.objects else "")  # unnamed: no mismatch
    verdict = screen(named, facts, undeterminable)
    r.problems += list(verdict.refusals)
    r.warnings += list(verdict.warnings)


def render(r: Report) -> str:
    def yes(v: bool | None) -> str:
        return "unknown" if v is None else "yes" if v else "no"

    lines = [f"{r.module or r.target}  ({r.path or r.target})"]
    if r.patch:
        lines.append(f"  name       patch {r.patch}, object {r.obj}")
    lines.append(f"  livepatch  {yes(r.livepatch)}")
    if r.vermagic:
        lines.append(f"  vermagic   {r.vermagic.strip()} (kernel {r.release})")
    lines.append(f"  replace    {yes(r.replace)}")
    for o in r.objects:
        funcs = ", ".join(
            f + (f",{p}" if p else "") for f, p in zip(o["funcs"], o["sympos"], strict=True)
        )
        lines.append(f"  object     {o['name']}: {funcs}")
    if r.series or r.version or r.cves:
        meta = f"series {r.series or r.patch} version {r.version or '1'}"
        lines.append(f"  metadata   {meta}" + (f", {', '.join(r.cves)}" if r.cves else ""))
    if r.softdep:
        lines.append(f"  softdep    {r.softdep}")
    lines.append(f"  layout     {r.layout}")
    lines.append("  verdict    " + ("would be loaded" if r.would_load else "REFUSED"))
    lines += [f"    problem: {p}" for p in r.problems]
    lines += [f"    warning: {w}" for w in r.warnings]
    return "\n".join(lines)
