#!/usr/bin/env python3
"""Boot convergence on the real kernels: klpd against a shell loop, per kernel line.

One boot per line (tests/realkernel/vm.py; two lines at a time). 12 split modules - three
patch series (bench_x, bench_y, bench_z) x four objects (vmlinux and the loaded targets
klpd_bench1..3) - applied

  baseline  by a shell loop: `modprobe P__o` one by one, P__vmlinux first, waiting for each
            transition (polling `transition` every 10 ms)
  klpd      by klpd from its start (its catalog: the 12 modules)

Times are the guest kernel's dmesg timestamps: `apply` from the first "enabling patch" to the
last "patching complete" (the loads and transitions themselves, the part the loader controls),
and for klpd `startup` from the round's marker (just before klpd starts) to its first
"enabling patch" (Python's start over 9p under TCG). The ratio compared against the target
(<= 1.05) is klpd's apply over the baseline's. Transitions end on whole-second retries under
TCG, so apply is ~12 quantised transitions. Also per line: the transitions' median length.
Stdlib only:

    python3 bench/boot_converge.py [--lines 5.10 6.1 6.12 7.x] [--iterations 2] [--json out]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SCENARIO = REPO / "tests" / "realkernel" / "scenarios" / "bench_converge.sh"
MODULES = 12


def _load_vm() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "klpd_realkernel_vm", REPO / "tests" / "realkernel" / "vm.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def rounds(dmesg: list[list[Any]]) -> dict[str, list[dict[str, float | None]]]:
    """Per mode, per round: apply (first enable to last completion) and startup."""
    out: dict[str, list[dict[str, float | None]]] = {}
    mode, start = "", 0.0
    current: list[list[Any]] | None = None

    def close() -> None:
        if current is None:
            return
        enables = [ts for ts, msg in current if "livepatch: enabling patch 'bench_" in str(msg)]
        done = [ts for ts, msg in current if re.search(r"'bench_\w+': patching complete", str(msg))]
        ok = len(enables) == MODULES and len(done) == MODULES
        out.setdefault(mode, []).append(
            {
                "apply": max(done) - min(enables) if ok else None,
                "startup": min(enables) - start if enables else None,
            }
        )

    for ts, msg in dmesg:
        m = re.fullmatch(r"klpd-bench (\S+) (\d+)", str(msg))
        if m:
            close()
            mode = m.group(1)
            start = float(ts) if ts is not None else 0.0
            current = None if mode == "end" else []
            continue
        if current is not None and ts is not None:
            current.append([float(ts), msg])
    close()
    return out


def median_of(rows: list[dict[str, float | None]], key: str) -> float | None:
    vals = [v for r in rows if (v := r[key]) is not None]
    return statistics.median(vals) if vals else None


def run_line(vm: ModuleType, line: str, iterations: int, results: Path | None) -> dict[str, Any]:
    build = vm.prepare(vm.BY_NAME[line])
    run = vm.run_guest(
        [SCENARIO],
        build=build,
        results_dir=results / line if results else None,
        extra_env={"KLPD_BENCH_ITERATIONS": str(iterations)},
        timeout=2400,
    )
    trace = vm.read_trace(run)
    per_mode = rounds(trace["dmesg"])
    plain = [t["seconds"] for t in trace["transitions"] if t["patch"].startswith("bench_")]
    base, klpd = median_of(per_mode.get("baseline", []), "apply"), None
    klpd = median_of(per_mode.get("klpd", []), "apply")
    return {
        "line": line,
        "kernel": trace["kernel"],
        "rounds": per_mode,
        "baseline_apply": base,
        "klpd_apply": klpd,
        "klpd_startup": median_of(per_mode.get("klpd", []), "startup"),
        "ratio": klpd / base if klpd and base else None,
        "transition_median": statistics.median(plain) if plain else None,
        "transitions": len(plain),
        "scenario_rc": trace["scenarios"].get("bench_converge", {}).get("rc"),
    }


def _fmt(v: float | None, unit: str = "s") -> str:
    return "-" if v is None else f"{v:.2f}{unit}"


def main(argv: list[str] | None = None) -> int:
    vm = _load_vm()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", nargs="+", default=[x.name for x in vm.LINES])
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--results-dir", type=Path)
    args = ap.parse_args(argv)
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = {
            n: pool.submit(run_line, vm, n, args.iterations, args.results_dir) for n in args.lines
        }
    results: list[dict[str, Any]] = []
    failed = False
    for name, fut in futures.items():
        try:
            results.append(fut.result())
        except vm.HarnessError as e:
            print(f"boot_converge: {name}: {e}", file=sys.stderr)
            failed = True
    print(
        f"boot convergence, {MODULES} split modules (3 patches x 4 objects), qemu TCG, dmesg clock"
    )
    print(
        f"{'line':5} {'kernel':22} {'shell loop':>10} {'klpd':>8} {'ratio':>6} "
        f"{'klpd start':>10} {'transition':>10}"
    )
    for r in results:
        print(
            f"{r['line']:5} {r['kernel']:22} {_fmt(r['baseline_apply']):>10} "
            f"{_fmt(r['klpd_apply']):>8} {_fmt(r['ratio'], ''):>6} "
            f"{_fmt(r['klpd_startup']):>10} {_fmt(r['transition_median']):>10}"
        )
        failed |= r["scenario_rc"] != 0 or r["ratio"] is None
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
