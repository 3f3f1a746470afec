#!/usr/bin/env python3
"""Run guest scenarios on Debian's real kernel under qemu (TCG), in one boot.

The guest boots Debian's /boot/vmlinuz-<ver> with a small busybox initramfs
that loads the virtio/9p/overlay modules, mounts the host's root read-only over
9p with a tmpfs overlay on top, and switch_roots into it. There
tests/realkernel/guest/pid1.sh installs the test modules under
/lib/modules/<ver>/extra, runs depmod, runs each scenario script and powers
off. Scenarios record their steps (guest/lib.sh) into a host directory shared
writable over 9p; read_trace() turns that into the JSON trace.

Every boot and every process start is slow under TCG: batch all scenarios of
a test session into one run_guest() call.

Standard library only; usable as a script:
    python3 tests/realkernel/vm.py [--scenario PATH ...] [--out trace.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
from lines import BY_NAME, LINES, Build, HarnessError, prepare, prepare_soon, prepared  # noqa: E402


def guest_slot() -> AbstractContextManager[None]:
    """In a test session (tests/ on sys.path), one of its guest slots; as a script, none."""
    try:
        from guestslots import guest_slot as slot
    except ImportError:
        return nullcontext()
    return slot()


__all__ = ["BY_NAME", "LINES", "Build", "HarnessError", "prepare", "prepare_soon", "prepared"]
GUEST_DIR = HERE / "guest"
SCENARIO_DIR = HERE / "scenarios"

# Loaded in the initramfs, dependencies first (resolved from modules.dep).
INITRAMFS_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
RESULTS_IN_GUEST = "/klpd-results"


@dataclass
class GuestRun:
    results_dir: Path
    console: str
    returncode: int | None
    host_seconds: float
    boot_seconds: float | None  # host wall clock from qemu start to guest PID 1
    guest_uptime_at_pid1: float | None  # the guest's own clock then
    markers: dict[str, float] = field(default_factory=dict)


def _run(argv: list[str], *, capture_output: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "LANG": "C.UTF-8"},
        capture_output=capture_output,
    )


def initramfs_module_paths(
    build: Build, index: Path, names: tuple[str, ...] = INITRAMFS_MODULES
) -> list[Path]:
    """The .ko files for names and their dependencies, in load order, resolved from the
    depmod index of the line's image. A module neither built in nor in modules.dep fails
    the line: its image cannot boot this harness."""
    deps: dict[str, list[str]] = {}
    for line in (index / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        deps[target] = rest.split()

    def base(p: str) -> str:
        return Path(p).name.split(".ko")[0].replace("-", "_")

    by_name = {base(p): p for p in deps}
    builtin = {base(p) for p in (build.moddir / "modules.builtin").read_text().split()}
    order: list[str] = []

    def visit(path: str) -> None:
        for dep in deps[path]:
            visit(dep)
        if path not in order:
            order.append(path)

    for name in names:
        if name in builtin:
            continue
        if name not in by_name:
            raise HarnessError(
                f"{build.line.name}: module {name} is neither built into {build.kver} "
                "nor in its modules.dep"
            )
        visit(by_name[name])
    return [build.moddir / p for p in order]


def _copy_uncompressed(ko: Path, dest: Path) -> None:
    """busybox insmod reads plain .ko files; Debian's newer images ship .ko.xz/.ko.zst."""
    if ko.name.endswith(".ko"):
        shutil.copy2(ko, dest)
        return
    tool = {".xz": ["xz", "-dc"], ".zst": ["zstd", "-dcq"], ".gz": ["gzip", "-dc"]}.get(ko.suffix)
    if tool is None:
        raise HarnessError(f"cannot decompress {ko}")
    with dest.open("wb") as f:
        if subprocess.run([*tool, str(ko)], stdout=f, check=False).returncode != 0:
            raise HarnessError(f"{tool[0]} failed on {ko}")


INIT_SCRIPT = """#!/bin/busybox sh
# initramfs /init: load virtio + 9p + overlay, mount the host's root read-only
# with a tmpfs overlay, mount the results share, switch_root.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for ko in /modules/*.ko; do
	insmod "$ko" || echo "KLPD-INIT insmod $ko failed"
done
mkdir -p /lower /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /lower \\
	|| { echo "KLPD-INIT-FAILED mount hostroot"; poweroff -f; }
mount -t tmpfs -o size=512m tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot \\
	|| { echo "KLPD-INIT-FAILED mount overlay"; poweroff -f; }
mkdir -p /newroot{results}
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 results /newroot{results} \\
	|| { echo "KLPD-INIT-FAILED mount results"; poweroff -f; }
umount /proc /sys /dev 2>/dev/null
exec switch_root /newroot /bin/sh {results}/boot.sh
"""


def build_initramfs(build: Build, index: Path, out: Path) -> Path:
    """A newc cpio with static busybox, /init and the 9p/overlay modules."""
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise HarnessError("/bin/busybox missing (apt-get install busybox-static)")
    with tempfile.TemporaryDirectory(prefix="klpd-initramfs-") as tmp:
        root = Path(tmp)
        for d in ("bin", "proc", "sys", "dev", "modules"):
            (root / d).mkdir()
        shutil.copy2(busybox, root / "bin" / "busybox")
        # The kernel opens /dev/console for /init before anything is mounted.
        os.mknod(root / "dev" / "console", 0o600 | stat.S_IFCHR, os.makedev(5, 1))
        init = root / "init"
        init.write_text(INIT_SCRIPT.replace("{results}", RESULTS_IN_GUEST))
        init.chmod(0o755)
        for i, ko in enumerate(initramfs_module_paths(build, index)):
            name = ko.name.split(".ko")[0] + ".ko"
            _copy_uncompressed(ko, root / "modules" / f"{i:02d}-{name}")
        files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        with out.open("wb") as f:
            proc = subprocess.run(
                ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"],
                input="\n".join(files).encode(),
                stdout=f,
                cwd=root,
                check=False,
            )
        if proc.returncode != 0:
            raise HarnessError("cpio failed")
    return out


def host_depmod(build: Build, out: Path) -> Path:
    """modules.* index files for the guest's /lib/modules/<ver>, test modules in extra/.

    depmod in the guest reads every .ko over 9p: ~45 s under TCG. On the host,
    over a tree of symlinks to the same files, it takes about a second and
    yields the same indexes (paths in them are relative to /lib/modules/<ver>).
    """
    src = build.moddir
    base = out / "base"
    moddir = base / "lib" / "modules" / build.kver
    if base.exists():
        shutil.rmtree(base)
    moddir.mkdir(parents=True)
    for entry in src.iterdir():
        if entry.name.startswith("modules.") and not entry.name.startswith(
            ("modules.builtin", "modules.order")
        ):
            continue  # depmod's own output: regenerated below
        if entry.name in ("build", "source", "extra"):
            continue
        (moddir / entry.name).symlink_to(entry)
    (moddir / "extra").mkdir()
    (moddir / "bench").mkdir()
    for ko in sorted(build.ko_dir.glob("*.ko")):  # as guest/pid1.sh installs them
        (moddir / ("bench" if "bench" in ko.name else "extra") / ko.name).symlink_to(ko)
    proc = _run(["depmod", "-b", str(base), build.kver], capture_output=True)
    if proc.returncode != 0:
        raise HarnessError(f"depmod failed: {proc.stderr}")
    index = out / "depmod"
    index.mkdir(exist_ok=True)
    for f in moddir.glob("modules.*"):
        if not f.is_symlink():
            shutil.copy2(f, index / f.name)
    shutil.rmtree(base)
    return index


def qemu_argv(build: Build, initrd: Path, results_dir: Path, *, mem_mb: int) -> list[str]:
    return [
        "qemu-system-x86_64",
        "-accel",
        build.line.accel,
        "-cpu",
        "max",
        "-smp",
        str(build.line.smp),
        "-m",
        str(mem_mb),
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
        "-kernel",
        str(build.kernel),
        "-initrd",
        str(initrd),
        "-append",
        "console=ttyS0 quiet panic=-1 mitigations=off rdinit=/init",
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs",
        f"local,path={results_dir},mount_tag=results,security_model=none",
    ]


def run_guest(
    scenarios: list[Path],
    *,
    build: Build,
    results_dir: Path | None = None,
    timeout: float = 1200.0,
    mem_mb: int = 1024,
    extra_env: dict[str, str] | None = None,
    echo_console: bool = False,
    extra_qemu_args: Sequence[str] = (),
    expect_crash: bool = False,
) -> GuestRun:
    """Boot once, run every scenario in order, power off; return what was recorded.

    ``extra_qemu_args`` go at the end of qemu's command line (e.g. a disk). With
    ``expect_crash`` a guest that went down without finishing (a panic: ``panic=-1`` and
    ``-no-reboot`` make qemu exit) is returned instead of raising."""
    if shutil.which("qemu-system-x86_64") is None:
        raise HarnessError("qemu-system-x86_64 missing (apt-get install qemu-system-x86)")
    results_dir = results_dir or Path(tempfile.mkdtemp(prefix="klpd-vm-"))
    results_dir.mkdir(parents=True, exist_ok=True)
    # depmod's index of the image's modules first: the initramfs resolves from it.
    index = host_depmod(build, results_dir)
    initrd = build_initramfs(build, index, results_dir / "initramfs.cpio")
    # The guest mounts tmpfs on /tmp: give it the scenarios from the results share.
    guest_scenarios = []
    (results_dir / "scenarios").mkdir(exist_ok=True)
    for i, s in enumerate(scenarios):
        copy = results_dir / "scenarios" / Path(s).name
        if copy.exists() and i:
            copy = results_dir / "scenarios" / f"{i}-{Path(s).name}"
        shutil.copy2(s, copy)
        guest_scenarios.append(f"{RESULTS_IN_GUEST}/scenarios/{copy.name}")
    env = {
        "KLPD_KVER": build.kver,
        "KLPD_KO_DIR": str(build.ko_dir),
        "KLPD_KMOD_DIR": str(build.moddir),
        "KLPD_SCENARIOS": " ".join(guest_scenarios),
        "KLPD_RESULTS": RESULTS_IN_GUEST,
        "KLPD_LIB": str(GUEST_DIR / "lib.sh"),
        "KLPD_REPO": str(REPO),
        **(extra_env or {}),
    }
    boot_sh = "".join(f"export {k}='{v}'\n" for k, v in env.items())
    (results_dir / "boot.sh").write_text(f"{boot_sh}exec /bin/sh {GUEST_DIR / 'pid1.sh'}\n")

    argv = [*qemu_argv(build, initrd, results_dir, mem_mb=mem_mb), *extra_qemu_args]
    (results_dir / "qemu.argv").write_text(json.dumps(argv))
    with guest_slot():  # at most two guests at once in a test session (tests/guestslots.py)
        return _boot(argv, results_dir, timeout, echo_console, expect_crash)


def _boot(
    argv: list[str], results_dir: Path, timeout: float, echo_console: bool, expect_crash: bool
) -> GuestRun:
    start = time.monotonic()
    markers: dict[str, float] = {}
    console: list[str] = []
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf = b""
    try:
        while True:
            left = timeout - (time.monotonic() - start)
            if left <= 0:
                raise HarnessError(
                    f"guest did not finish in {timeout:.0f}s; console tail:\n"
                    + "".join(console)[-4000:]
                )
            if not sel.select(timeout=min(left, 5.0)):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace").rstrip("\r") + "\n"
                console.append(line)
                if echo_console:
                    sys.stderr.write(line)
                m = re.search(r"KLPD-([A-Z-]+)", line)
                if m and m.group(1) not in markers:
                    markers[m.group(1)] = time.monotonic() - start
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sel.close()
    console.append(buf.decode("utf-8", "replace"))
    text = "".join(console)
    (results_dir / "console.log").write_text(text)
    (results_dir / "markers.json").write_text(json.dumps(markers))
    uptime = results_dir / "guest-up"
    run = GuestRun(
        results_dir=results_dir,
        console=text,
        returncode=proc.returncode,
        host_seconds=time.monotonic() - start,
        boot_seconds=markers.get("GUEST-UP"),
        guest_uptime_at_pid1=float(uptime.read_text()) if uptime.exists() else None,
        markers=markers,
    )
    if "GUEST-DONE" not in markers and not expect_crash:
        raise HarnessError(
            f"guest did not finish (qemu rc {proc.returncode}); console tail:\n{text[-4000:]}"
        )
    return run


# ---- results -> JSON trace ---------------------------------------------------

_DMESG = re.compile(r"^\[\s*(\d+\.\d+)\]\s?(.*)$")


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _parse_livepatch(text: str) -> dict[str, Any]:
    """sysfs lines -> {patch: {attr: value, "objects": {obj: {attr: value, "funcs": [..]}}}}."""
    tree: dict[str, Any] = {}
    prefix = "/sys/kernel/livepatch/"
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        path, _, value = rest.partition(" ")
        parts = path[len(prefix) :].split("/")
        patch = tree.setdefault(parts[0], {"objects": {}})
        if len(parts) == 1:
            continue
        if kind == "d":
            if len(parts) == 2:
                patch["objects"].setdefault(parts[1], {"funcs": []})
            elif len(parts) == 3:
                obj = patch["objects"].setdefault(parts[1], {"funcs": []})
                obj["funcs"].append(parts[2])
            continue
        val: str | None = value if kind == "f" else None  # None: not readable
        if len(parts) == 2:
            patch[parts[1]] = val
        elif len(parts) == 3:
            patch["objects"].setdefault(parts[1], {"funcs": []})[parts[2]] = val
    return tree


def _parse_modules(text: str) -> dict[str, dict[str, object]]:
    mods = {}
    for line in text.splitlines():
        f = line.split()
        # name size refcnt users state address [taints]
        mods[f[0]] = {
            "refcnt": int(f[2]),
            "users": f[3],
            "state": f[4],
            "taints": f[6].strip("()") if len(f) > 6 else "",
        }
    return mods


def _parse_values(text: str) -> dict[str, str]:
    vals = {}
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        vals[k] = v
    return vals


def _parse_dmesg(text: str) -> list[list[object]]:
    out: list[list[object]] = []
    for line in text.splitlines():
        m = _DMESG.match(line)
        out.append([float(m.group(1)), m.group(2)] if m else [None, line])
    return out


def _split_dmesg(dmesg: list[list[object]], scenario: str) -> dict[int, list[list[object]]]:
    """Kernel messages per step, cut at the "klpd-step SCENARIO N NAME" markers."""
    per_step: dict[int, list[list[object]]] = {}
    current: int | None = None
    for entry in dmesg:
        m = re.match(r"klpd-step (\S+) (\d+) ", str(entry[1]))
        if m:
            current = int(m.group(2)) if m.group(1) == scenario else None
            continue
        if current is not None:
            per_step.setdefault(current, []).append(entry)
    return per_step


def read_scenario(out: Path, dmesg: list[list[object]]) -> dict[str, Any]:
    steps = []
    step_dir = out / "steps"
    numbers = (
        sorted({p.name.split(".")[0] for p in step_dir.iterdir()}) if step_dir.exists() else []
    )
    per_step = _split_dmesg(dmesg, out.name)
    for num in numbers:

        def part(suffix: str, num: str = num) -> str:
            return _read(step_dir / f"{num}.{suffix}")

        times = part("time").split()
        if len(times) != 2:
            continue  # the guest died inside this step
        t0, t1 = float(times[0]), float(times[1])
        steps.append(
            {
                "n": int(num),
                "name": part("name").strip(),
                "cmd": part("cmd").strip(),
                "rc": int(part("rc").strip()),
                "stdout": part("stdout"),
                "stderr": part("stderr"),
                "t0": t0,
                "seconds": round(t1 - t0, 2),
                "livepatch": _parse_livepatch(part("livepatch")),
                "modules": _parse_modules(part("modules")),
                "values": _parse_values(part("values")),
                "dmesg": per_step.get(int(num), []),
            }
        )
    rc = _read(out / "rc").strip()
    # the end of each klpd log the scenario wrote: what a failure message shows
    logs = {p.name: _read(p).splitlines()[-80:] for p in sorted(out.glob("klpd*.log"))}
    return {
        "rc": int(rc) if rc else None,
        "steps": steps,
        "log": _read(out / "scenario.log"),
        "klpd_logs": logs,
    }


def transitions_from_dmesg(dmesg: list[list[object]]) -> list[dict[str, object]]:
    """Each livepatch transition: patch, direction, start and end (kernel clock)."""
    starts: dict[str, tuple[str, float]] = {}
    out = []
    for ts, msg in dmesg:
        m = re.search(r"livepatch: '([^']+)': starting (patching|unpatching) transition", str(msg))
        if m and ts is not None:
            starts[m.group(1)] = (m.group(2), float(str(ts)))
            continue
        m = re.search(r"livepatch: '([^']+)': (patching|unpatching) complete", str(msg))
        if m and m.group(1) in starts and ts is not None:
            kind, t0 = starts.pop(m.group(1))
            end = float(str(ts))
            out.append(
                {"patch": m.group(1), "direction": kind, "start": t0, "seconds": round(end - t0, 6)}
            )
    return out


def read_trace(run: GuestRun) -> dict[str, Any]:
    rd = run.results_dir
    dmesg = _parse_dmesg(_read(rd / "dmesg"))
    scenarios = {}
    for d in sorted(p for p in rd.iterdir() if p.is_dir() and (p / "steps").exists()):
        scenarios[d.name] = read_scenario(d, dmesg)
    return {
        "kernel": _read(rd / "uname-r").strip(),
        "host_seconds": round(run.host_seconds, 2),
        "boot_seconds": round(run.boot_seconds, 2) if run.boot_seconds else None,
        "guest_uptime_at_pid1": run.guest_uptime_at_pid1,
        "transitions": transitions_from_dmesg(dmesg),
        "scenarios": scenarios,
        # The boot log is in results_dir/dmesg; the trace keeps what the scenarios caused.
        "dmesg": _since_first_step(dmesg),
    }


def _since_first_step(dmesg: list[list[object]]) -> list[list[object]]:
    for i, (_, msg) in enumerate(dmesg):
        if str(msg).startswith("klpd-step "):
            return dmesg[i:]
    return []


def load_run(results_dir: Path) -> GuestRun:
    """A finished run from its results directory, without booting again."""
    markers: dict[str, float] = json.loads(_read(results_dir / "markers.json") or "{}")
    uptime = _read(results_dir / "guest-up").strip()
    return GuestRun(
        results_dir=results_dir,
        console=_read(results_dir / "console.log"),
        returncode=None,
        host_seconds=markers.get("GUEST-DONE", 0.0),
        boot_seconds=markers.get("GUEST-UP"),
        guest_uptime_at_pid1=float(uptime) if uptime else None,
        markers=markers,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--scenario",
        action="append",
        type=Path,
        help="guest scenario script (repeatable; default: scenarios/kernel_facts.sh)",
    )
    ap.add_argument("--out", type=Path, help="write the JSON trace here")
    ap.add_argument("--results-dir", type=Path)
    ap.add_argument(
        "--from-results", type=Path, help="read a finished run's results directory, do not boot"
    )
    ap.add_argument("--line", default="6.1", choices=list(BY_NAME), help="kernel line")
    ap.add_argument("--smp", type=int, help="vCPUs (default: the line's)")
    ap.add_argument("--accel", help="qemu -accel value (default: the line's)")
    ap.add_argument("--timeout", type=float, default=1200.0)
    ap.add_argument("--quiet", action="store_true", help="do not echo the guest console")
    args = ap.parse_args(argv)
    # SIGTERM ends the run like ^C: run_guest's finally kills qemu.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    scenarios = args.scenario or [SCENARIO_DIR / "kernel_facts.sh"]
    try:
        if args.from_results:
            run = load_run(args.from_results)
        else:
            line = BY_NAME[args.line]
            line = dataclasses.replace(
                line, smp=args.smp or line.smp, accel=args.accel or line.accel
            )
            build = dataclasses.replace(prepare(line), line=line)
            run = run_guest(
                scenarios,
                build=build,
                results_dir=args.results_dir,
                timeout=args.timeout,
                echo_console=not args.quiet,
            )
    except HarnessError as e:
        print(f"vm.py: {e}", file=sys.stderr)
        return 1
    trace = read_trace(run)
    text = json.dumps(trace, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(
        f"boot {trace['boot_seconds']} s to guest PID 1, whole run {trace['host_seconds']} s, "
        f"results in {run.results_dir}",
        file=sys.stderr,
    )
    for name, sc in trace["scenarios"].items():
        print(f"scenario {name}: rc {sc['rc']}, {len(sc['steps'])} steps", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
