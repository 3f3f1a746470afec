#!/usr/bin/env python3
"""The unpatched window on a real kernel: klpd versus a shell loop on uevents.

Boots Debian's kernel once in qemu (tests/realkernel/vm.py) and loads module klpd_target
repeatedly while a loader applies lpa__klpd_target to it:

  baseline      `udevadm monitor --kernel` piped into a shell loop that runs
                `modprobe lpa__klpd_target` on "add /module/klpd_target"
  klpd_remove   klpd with on_object_removed = "remove" (P__m goes with m: a window each load)
  klpd_keep     klpd with "keep" (P__m stays loaded: the kernel patches m before its init)
  klpd_softdep  klpd, "remove" + softdep (modprobe loads P__m before m)

All times are the guest kernel's own dmesg timestamps: from klpd_target's init
("klpd_target: init") to the loader's "enabling patch" (reaction) and to "patching complete"
(window). Transitions end on whole-second retries under TCG, so the window is quantised;
the reaction is the loader's own latency. Stdlib only:

    python3 bench/unpatched_window.py [--iterations 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import statistics
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SCENARIO = REPO / "tests" / "realkernel" / "scenarios" / "bench_window.sh"
PATCH = "lpa__klpd_target"
MODES = ("baseline", "klpd_remove", "klpd_keep", "klpd_softdep")


def _load_vm() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "klpd_realkernel_vm", REPO / "tests" / "realkernel" / "vm.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def windows(dmesg: list[list[Any]]) -> dict[str, list[dict[str, float | None]]]:
    """Per mode, per iteration: reaction and window in seconds (None: not observed)."""
    out: dict[str, list[dict[str, float | None]]] = {}
    current: list[list[Any]] | None = None
    mode = ""

    def close() -> None:
        if current is None:
            return
        init = enable = done = None
        applied_on_load = False
        for ts, msg in current:
            msg = str(msg)
            if msg == "klpd_target: init" and init is None:
                init = ts
            elif f"applying patch '{PATCH}' to loading module 'klpd_target'" in msg:
                applied_on_load = True
            elif f"enabling patch '{PATCH}'" in msg and enable is None:
                enable = ts
            elif f"'{PATCH}': patching complete" in msg and done is None:
                done = ts
        if applied_on_load:
            row: dict[str, float | None] = {"reaction": 0.0, "window": 0.0}
        else:
            row = {
                "reaction": enable - init if init is not None and enable is not None else None,
                "window": done - init if init is not None and done is not None else None,
            }
        out.setdefault(mode, []).append(row)

    for entry in dmesg:
        m = re.fullmatch(r"klpd-bench (\S+) (\d+)", str(entry[1]))
        if m:
            close()
            mode = m.group(1)
            current = None if mode == "end" else []
            continue
        if current is not None and entry[0] is not None:
            current.append(entry)
    close()
    return out


def summary(rows: list[dict[str, float | None]], key: str) -> dict[str, float] | None:
    values = [v for r in rows if (v := r[key]) is not None]
    if not values:
        return None
    return {
        "n": len(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=5, help="loads per mode (keep/softdep: 2)")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    ap.add_argument("--results-dir", type=Path)
    ap.add_argument("--line", default="6.1", help="kernel line (tests/realkernel/lines.py)")
    args = ap.parse_args(argv)
    vm = _load_vm()
    try:
        run = vm.run_guest(
            [SCENARIO],
            build=vm.prepare(vm.BY_NAME[args.line]),
            results_dir=args.results_dir,
            extra_env={"KLPD_BENCH_ITERATIONS": str(args.iterations)},
            timeout=1800,
        )
    except vm.HarnessError as e:
        print(f"unpatched_window: {e}", file=sys.stderr)
        return 1
    trace = vm.read_trace(run)
    per_mode = windows(trace["dmesg"])
    result: dict[str, Any] = {"kernel": trace["kernel"], "boot_seconds": trace["boot_seconds"]}
    print(f"unpatched window of klpd_target on {trace['kernel']} (qemu TCG), dmesg clock")
    header = ("loader", "n", "reaction median", "window median", "window min-max")
    print(f"{header[0]:14} {header[1]:>2} {header[2]:>16} {header[3]:>14} {header[4]:>15}")
    for mode in MODES:
        rows = per_mode.get(mode, [])
        reaction, window = summary(rows, "reaction"), summary(rows, "window")
        result[mode] = {"iterations": rows, "reaction": reaction, "window": window}
        if reaction is None or window is None:
            print(f"{mode:14} {len(rows):>2} {'not observed':>16}")
            continue
        print(
            f"{mode:14} {window['n']:>2} {reaction['median']:>15.3f}s {window['median']:>13.3f}s"
            f" {window['min']:>7.3f}-{window['max']:.3f}s"
        )
    base, klpd = result["baseline"], result["klpd_remove"]
    if base["window"] and klpd["window"] and base["reaction"] and klpd["reaction"]:
        ratio_w = klpd["window"]["median"] / base["window"]["median"]
        ratio_r = klpd["reaction"]["median"] / max(base["reaction"]["median"], 1e-6)
        result["ratio_klpd_remove_to_baseline"] = {"window": ratio_w, "reaction": ratio_r}
        print(f"ratio klpd_remove/baseline: window {ratio_w:.2f}, reaction {ratio_r:.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
