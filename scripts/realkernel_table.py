#!/usr/bin/env python3
"""The fact x kernel-line table of docs/realkernel.md, from the real-kernel traces.

Reads build/realkernel/traces/<line>.json (the last `make test` run; --committed: the
traces under tests/realkernel/traces/) and prints a Markdown table: each row a fact or a
scenario, each column a kernel line. Stdlib only:

    python3 scripts/realkernel_table.py [--committed]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LINES = ("5.10", "6.1", "6.12", "7.x")
Trace = dict[str, Any]


def steps(t: Trace, scenario: str) -> dict[str, Any]:
    sc: dict[str, Any] = t["scenarios"].get(scenario, {"steps": []})
    return {s["name"]: s for s in sc["steps"]}


def fact(t: Trace, name: str) -> dict[str, Any]:
    found: dict[str, Any] = steps(t, "kernel_facts").get(name, {})
    return found


def _attr(t: Trace, attr: str) -> str:
    tree = fact(t, "lpa.target.value").get("livepatch", {})
    vml = tree.get("lpa__vmlinux", {})
    return f"`{vml[attr]}`" if attr in vml else "absent"


def _patched(t: Trace) -> str:
    objs = fact(t, "lpa.target.value").get("livepatch", {}).get("lpa__vmlinux", {})
    return "present" if "patched" in objs.get("objects", {}).get("vmlinux", {}) else "absent"


def _replace_of_replace(t: Trace) -> str:
    rep = fact(t, "rep.wait").get("livepatch", {}).get("lprep__vmlinux", {})
    return f"`{rep['replace']}`" if "replace" in rep else "absent"


def _uevent(t: Trace) -> str:
    out = str(fact(t, "uevent.initstate").get("stdout", "")).strip()
    return {"live": "after init", "coming": "**before** init"}.get(
        out.split()[-1] if out else "", "?"
    )


def _rc(t: Trace, name: str, ok: str, bad: str) -> str:
    s = fact(t, name)
    return "?" if not s else (ok if s["rc"] == 0 else bad)


def _transitions(t: Trace) -> str:
    plain = [x["seconds"] for x in t["transitions"] if x["patch"] != "lpstall__klpd_target"]
    if not plain:
        return "?"
    return f"{statistics.median(plain):.2f} s ({min(plain):.2f}-{max(plain):.2f}, n={len(plain)})"


def _scenario(t: Trace, name: str) -> str:
    sc = t["scenarios"].get(name)
    if sc is None:
        return "not run"
    return f"pass ({len(sc['steps'])} steps)" if sc["rc"] == 0 else f"**FAIL** (rc {sc['rc']})"


def _value(t: Trace, scenario: str, name: str) -> str:
    s = steps(t, scenario).get(name)
    return f"`{str(s['stdout']).strip()}`" if s else "?"


ROWS: list[tuple[str, Callable[[Trace], str]]] = [
    ("kernel release", lambda t: f"`{t['kernel']}`"),
    ("qemu", lambda t: f"`{t.get('accel', '?')}`"),
    (
        "boot to guest PID 1 / whole guest run",
        lambda t: f"{t['boot_seconds']} s / {t.get('guest_seconds', '?')} s",
    ),
    ("module `add` uevent", _uevent),
    ("per-object `patched`", _patched),
    (
        "`replace` (split patch / replace patch)",
        lambda t: f"{_attr(t, 'replace')} / {_replace_of_replace(t)}",
    ),
    ("`stack_order` (first patch)", lambda t: _attr(t, "stack_order")),
    ("transition time (median, range)", _transitions),
    (
        "load during a transition",
        lambda t: _rc(t, "lpa.load_at_once", "loaded (transition had ended)", "EBUSY"),
    ),
    ("newest patch wins (lpb over lpa)", lambda t: _value(t, "kernel_facts", "lpb.target.value")),
    (
        "reloaded target patched by the kernel",
        lambda t: _value(t, "kernel_facts", "target.reload.value"),
    ),
    ("atomic replace: target reads", lambda t: _value(t, "kernel_facts", "rep.value")),
    (
        "forced patching transition: module",
        lambda t: _rc(t, "force.rmmod", "removable", "**pinned** (every patch marked forced)"),
    ),
    (
        "forced unpatching: module",
        lambda t: (
            _rc(t, "forceun.rmmod_released", "removable", "pinned")
            if fact(t, "forceun.rmmod_released")
            else "n/a (pinned before)"
        ),
    ),
    ("scenario kernel_facts", lambda t: _scenario(t, "kernel_facts")),
    (
        "scenario klpd_basic (start-up, target later, keep/remove, softdep via kmod, "
        "another tool's stall)",
        lambda t: _scenario(t, "klpd_basic"),
    ),
    (
        "scenario klpd_failures (stall reverted with blocking task, broken module)",
        lambda t: _scenario(t, "klpd_failures"),
    ),
    (
        "scenario klpd_more (upgrade sampled, SIGKILL, klpctl/busctl vs sysfs, "
        "replace behind klpd's back)",
        lambda t: _scenario(t, "klpd_more"),
    ),
    (
        "klpd: target after softdep reload reads",
        lambda t: _value(t, "klpd_basic", "softdep.reload.value"),
    ),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--committed", action="store_true")
    args = ap.parse_args(argv)
    base = ROOT / ("tests/realkernel/traces" if args.committed else "build/realkernel/traces")
    traces: dict[str, Trace] = {}
    for line in LINES:
        path = base / f"{line}.json"
        if path.exists():
            traces[line] = json.loads(path.read_text())
    if not traces:
        print(f"no traces under {base}", file=sys.stderr)
        return 1
    cols = list(traces)
    print("| fact / scenario | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for label, get in ROWS:
        cells = []
        for line in cols:
            try:
                cells.append(get(traces[line]))
            except (KeyError, IndexError, TypeError, ValueError) as e:
                cells.append(f"? ({type(e).__name__})")
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
