"""Wall time of ``klpctl status`` against ``python3 -c pass`` and ``busctl get-property``.

Against klpd's D-Bus service with a FakeController (tests/dbus_helpers.py) on a private
dbus-daemon, so the figures are the client's cost, not the orchestrator's. The commands
are run interleaved, N times each; the report gives the wall-time median, p90 and
ratios, and the median CPU time (user + system, from wait4: less sensitive to a loaded
machine than wall time).

    python bench/klpctl_status.py [-n 50]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dbus_helpers import spawn_fake_service, start_private_bus

from klpd.dbus import names


def commands(address: str) -> dict[str, list[str]]:
    klpctl = str(Path(sys.executable).parent / "klpctl")
    busctl = shutil.which("busctl") or "busctl"
    cmds = {
        "python3 -c pass (venv)": [sys.executable, "-c", "pass"],
        "python3 -S -c pass (no site)": [sys.executable, "-S", "-c", "pass"],
        "klpctl status": [klpctl, "--bus", address, "status"],
        "klpctl status --json": [klpctl, "--bus", address, "status", "--json"],
        # what the client itself costs, without this venv's editable-install finder
        # (~20 ms in site); a distro package's /usr/bin/klpctl is close to this
        "python3 -S -m klpd.client.ctl status": [
            sys.executable,
            "-S",
            "-m",
            "klpd.client.ctl",
            "--bus",
            address,
            "status",
        ],
        "busctl get-property State": [
            busctl,
            f"--address={address}",
            "get-property",
            names.BUS_NAME,
            names.OBJECT_PATH,
            names.INTERFACE,
            "State",
        ],
        "python3 -c 'import dbus_fast.aio'": [sys.executable, "-c", "import dbus_fast.aio"],
    }
    return cmds


def bench_env(pycache: str) -> dict[str, str]:
    """As installed: bytecode cached (here under ``pycache``, not in the tree), no
    PYTHONDONTWRITEBYTECODE, which would make every run compile klpd from source."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = pycache
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)  # for python -S
    return env


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system, from wait4) of one run."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):  # klpctl status: 1 = converging (the fake's state)
        raise SystemExit(f"{argv} exited {proc.returncode}")
    return elapsed, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50, help="runs per command")
    n = parser.parse_args().n
    bus = start_private_bus()
    service = spawn_fake_service(bus.address)
    pycache = tempfile.mkdtemp(prefix="klpd-bench-pycache-")
    env = bench_env(pycache)
    try:
        cmds = commands(bus.address)
        for argv in cmds.values():  # warm the page cache and write the .pyc files
            timed(argv, env)
        samples: dict[str, list[float]] = {name: [] for name in cmds}
        cpu: dict[str, list[float]] = {name: [] for name in cmds}
        for _ in range(n):
            for name, argv in cmds.items():
                wall, used = timed(argv, env)
                samples[name].append(wall)
                cpu[name].append(used)
    finally:
        service.kill()
        service.wait()
        bus.stop()
        shutil.rmtree(pycache, ignore_errors=True)

    median = {name: statistics.median(s) for name, s in samples.items()}
    base = median["python3 -c pass (venv)"]
    busctl = median["busctl get-property State"]
    print(f"{n} runs each, interleaved; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    print(f"{'command':<36} {'median':>9} {'p90':>9} {'/python':>8} {'/busctl':>8} {'cpu':>9}")
    for name, s in samples.items():
        p90 = statistics.quantiles(s, n=10)[-1]
        print(
            f"{name:<36} {median[name] * 1000:>7.1f}ms {p90 * 1000:>7.1f}ms "
            f"{median[name] / base:>7.2f}x {median[name] / busctl:>7.2f}x "
            f"{statistics.median(cpu[name]) * 1000:>7.1f}ms"
        )


if __name__ == "__main__":
    main()
