"""The soak's invariants, shared by both layers: the in-process soak (:mod:`soakworld`, the
kernel model read directly) and the real-daemon soak (:mod:`soakdaemon`, the simulated
kernel's sysfs files and klpd's ``Describe()`` over D-Bus).

What the kernel shows (:class:`KernelFacts`) is the truth; what klpd decided
(:class:`KlpdClaims`: its catalog, the patches it wants, the modules it gave up on) says which
truth to expect, and its report is checked against the kernel, never the other way round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soakspec import series_of

VMLINUX = "vmlinux"


@dataclass(frozen=True, slots=True)
class KernelFacts:
    modules: frozenset[str]  # /sys/module/*
    live: frozenset[str]  # objects loaded and not going (vmlinux always)
    enabled: Mapping[str, bool]  # /sys/kernel/livepatch/<p>/enabled
    transitions: frozenset[str]  # livepatches whose `transition` reads 1
    patched: frozenset[tuple[str, str]]  # (livepatch, object) whose `patched` reads 1

    def loaded(self, obj: str) -> bool:
        return obj == VMLINUX or obj in self.live

    def applied(self, module: str) -> bool:
        """Enabled and, the kernel being quiet, not in a transition."""
        return self.enabled.get(module, False) and not self.transitions


def read_sysfs(sys_root: Path) -> KernelFacts:
    """The facts from a sysfs tree (the simulated kernel's files), read once; raises
    FileNotFoundError if something vanished while it was read (read again)."""
    modules, live = set(), {VMLINUX}
    for d in (sys_root / "module").iterdir():
        modules.add(d.name)
        if (d / "initstate").read_text().strip() == "live":
            live.add(d.name)
    enabled: dict[str, bool] = {}
    transitions, patched = set(), set()
    for d in (sys_root / "kernel/livepatch").iterdir():
        enabled[d.name] = (d / "enabled").read_text().strip() == "1"
        if (d / "transition").read_text().strip() == "1":
            transitions.add(d.name)
        for f in d.glob("*/patched"):
            if f.read_text().strip() == "1":
                patched.add((d.name, f.parent.name))
    return KernelFacts(
        frozenset(modules), frozenset(live), enabled, frozenset(transitions), frozenset(patched)
    )


@dataclass(frozen=True, slots=True)
class ModuleClaim:
    """One module of klpd's report (``Describe()``)."""

    module: str
    obj: str
    object_loaded: bool
    loaded: bool
    enabled: bool | None
    applied: bool  # status "applied"


@dataclass(frozen=True, slots=True)
class KlpdClaims:
    catalog: Mapping[str, Mapping[str, str]]  # patch -> object -> module, as klpd scanned it
    desired: frozenset[str]
    failed: frozenset[str]  # modules klpd gave up on for now (a failure, a refusal)
    pinned: frozenset[str]  # disabled but still referenced (a forced unpatching)
    remove_policy: bool  # policy.on_object_removed == "remove"
    report: Sequence[ModuleClaim]


def violations(k: KernelFacts, c: KlpdClaims) -> tuple[list[str], int]:
    """Every invariant broken at a quiescent point, and how many were checked."""
    errors: list[str] = []
    checks = 0
    if len(k.transitions) > 1:
        errors.append(f"two transitions at once: {sorted(k.transitions)}")

    def complete(name: str) -> bool:
        """As the planner means it: applied on vmlinux and on every live object (a failed
        module keeps the predecessor)."""
        return all(k.applied(m) for o, m in c.catalog[name].items() if k.loaded(o))

    for name in c.desired:  # every desired patch applied on every live object
        checks += 1
        mods = c.catalog[name]
        if VMLINUX not in mods or mods[VMLINUX] in c.failed:
            continue
        for obj, m in mods.items():
            if k.loaded(obj) and m not in c.failed:
                if not k.applied(m):
                    errors.append(f"desired {m} not applied on live {obj}")
                elif (m, obj) not in k.patched:
                    errors.append(f"desired {m} applied but {obj} not patched")
    for name, mods in c.catalog.items():  # nothing undesired left loaded
        checks += 1
        successors = [d for d in c.desired if series_of(d) == series_of(name)]
        if name in c.desired or not all(complete(d) for d in successors):
            continue
        for m in mods.values():
            if m in k.modules and m not in c.pinned:
                errors.append(f"undesired {m} still loaded")
    if c.remove_policy:
        for name in c.desired:
            for obj, m in c.catalog[name].items():
                checks += 1
                if not k.loaded(obj) and m in k.modules:
                    errors.append(f"{m} left loaded after {obj} went (remove)")
    for mc in c.report:  # Describe agrees with sysfs
        checks += 1
        if mc.object_loaded != k.loaded(mc.obj):
            errors.append(f"Describe: {mc.obj} loaded={mc.object_loaded}, sysfs disagrees")
        if mc.loaded != (mc.module in k.modules):
            errors.append(f"Describe: {mc.module} loaded={mc.loaded}, sysfs disagrees")
        lp = k.enabled.get(mc.module)
        if lp is not None and mc.enabled != lp:
            errors.append(f"Describe: {mc.module} enabled={mc.enabled}, sysfs disagrees")
        if mc.applied and not k.applied(mc.module):
            errors.append(f"Describe: {mc.module} applied, sysfs disagrees")
    return errors, checks


def claims_from_describe(snap: Mapping[str, Any], remove_policy: bool) -> KlpdClaims:
    """klpd's claims from its ``Describe()`` JSON (``klpctl status --json``)."""
    mods = [m for p in snap["patches"] for m in p["modules"]]
    return KlpdClaims(
        catalog={p["name"]: {m["obj"]: m["module"] for m in p["modules"]} for p in snap["patches"]},
        desired=frozenset(p["name"] for p in snap["patches"] if p["desired"]),
        failed=frozenset(
            m["module"] for m in mods if m["error"] or m["status"] in ("refused", "quarantined")
        ),
        pinned=frozenset(),  # only a forced unpatching pins; the soaks never force
        remove_policy=remove_policy,
        report=[
            ModuleClaim(
                m["module"],
                m["obj"],
                m["object_loaded"],
                m["loaded"],
                m["enabled"],
                m["status"] == "applied",
            )
            for m in mods
        ],
    )


def log_violations(calls: str, klpd_log: str, sim_log: str) -> list[str]:
    """From what the real processes wrote: klpd never ran modprobe for the replace patch
    (``calls``, one "tool module" a line), logged no traceback, and the sim never started a
    transition while another ran (its ``livepatch: '<p>': starting ... transition`` and
    ``... complete`` lines, from one quiet point to the next)."""
    errors = []
    if "modprobe lprep__" in calls:
        errors.append("klpd ran modprobe for an atomic-replace module")
    if "Traceback" in klpd_log:
        errors.append(
            "a traceback in klpd's log:\n" + klpd_log[klpd_log.index("Traceback") :][:2000]
        )
    current: str | None = None
    for line in sim_log.splitlines():
        name = line.split("'")[1] if line.count("'") >= 2 else ""
        if ": starting " in line and "transition" in line:
            if current is not None:
                errors.append(f"two transitions at once: {name} started during {current}")
            current = name
        elif line.endswith(" complete") and name == current:
            current = None
    return errors
