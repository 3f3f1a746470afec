#!/usr/bin/env python3
"""`make demo`: klpd's main job on the built-in simulated kernel, on a private D-Bus bus.

1. a simulated kernel (klpd-sim) with the demo patches installed and klpd_target loaded;
2. a private dbus-daemon, and the real klpd daemon on it, configured for the sim;
3. klpd patches what is loaded (lpa_v2 supersedes lpa);
4. ext4 is loaded, klpd follows with every patch's ext4 module; `klpctl status`: converged;
5. failure handling, a labelled second part: two bad patches are rolled out (lprep, an
   atomic-replace patch, is refused; lpbad's modules fail to load): degraded; the operator
   disables both with klpctl and klpd is converged again.
Everything is stopped and removed at the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from klpd_sim.bus import start_private_bus
from klpd_sim.harness import SimKernel

BIN = Path(sys.executable).parent
# Part 1 holds these back; part 2 rolls them out and the operator disables them.
EXIT_MEANING = {0: "converged", 1: "converging", 2: "degraded", 3: "failed"}
HELD_BACK = '[patches]\nexclude = ["lpbad", "lprep"]\n'
SHIPPED_BUS_POLICY = (
    Path(__file__).resolve().parent.parent / "etc/dbus-1/system.d/io.github.Klpd1.conf"
)


def step(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def sh(*argv: str, check: bool = True) -> int:
    print("$ " + " ".join(a if " " not in a else repr(a) for a in argv), flush=True)
    return subprocess.run(argv, check=check).returncode


def drain(sock: socket.socket) -> None:
    while sock.recv(4096):
        pass


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="klpd-demo-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        step("simulated kernel 6.1.0-sim with the demo livepatches installed")
        sim = SimKernel(work / "sim", transition_ms=300).start()
        sim.modprobe("klpd_target")  # a target that is already loaded when klpd starts
        sh(*sim.cli, "status")

        step("private D-Bus bus and the klpd daemon")
        bus = start_private_bus(SHIPPED_BUS_POLICY)
        procs.append(bus.process)
        address = bus.address
        os.environ["KLPD_BUS_ADDRESS"] = address
        config = work / "klpd.toml"
        k = sim.config_overrides()["kernel"]
        q = '", "'
        config.write_text(
            f"""[kernel]
sysfs_root = "{k["sysfs_root"]}"
proc_root = "{k["proc_root"]}"
modprobe = ["{q.join(k["modprobe"])}"]
rmmod = ["{q.join(k["rmmod"])}"]
[catalog]
directories = ["{sim.module_dir}"]
[dbus]
bus = "{address}"
[state]
directory = "{work / "state"}"
[logging]
target = "stderr"
"""
        )
        # Part 1 is the main job, healthy: the two problem patches are not rolled out yet.
        config.write_text(config.read_text() + HELD_BACK)
        print(config.read_text())
        daemon_log = work / "klpd.log"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(work / "notify"))
        with daemon_log.open("wb") as log:
            daemon = subprocess.Popen(
                [str(BIN / "klpd"), "--config", str(config)],
                stdout=log,
                stderr=log,
                env={**os.environ, "NOTIFY_SOCKET": str(work / "notify")},
            )
        procs.append(daemon)
        # sd_notify, as systemd would see it: READY=1 once the bus name is owned, the
        # uevent monitor armed and the first reconcile settled (or policy.ready_timeout).
        notify.settimeout(90)
        while b"READY=1" not in notify.recv(4096):
            pass
        notify.settimeout(None)
        # keep reading STATUS=/WATCHDOG=1 as the service manager would
        threading.Thread(target=drain, args=(notify,), daemon=True).start()
        print("klpd is ready (sd_notify READY=1)")
        sh(str(BIN / "klpctl"), "wait", "--timeout", "120", check=False)

        step("patches applied to what was loaded (klpctl list)")
        sh(str(BIN / "klpctl"), "list", check=False)

        step("load ext4 in the simulated kernel: klpd follows with every patch's ext4 module")
        sh(*sim.cli, "modprobe", "ext4")
        sh(str(BIN / "klpctl"), "wait", "--timeout", "120", check=False)

        step("klpctl status: the main job is done")
        rc = sh(str(BIN / "klpctl"), "status", check=False)
        print(f"(klpctl status exit code {rc}: {EXIT_MEANING.get(rc, '?')})")

        step("PART 2, failure handling: two bad patches are rolled out (config + klpctl reload)")
        print("lpbad's modules are broken; lprep is an atomic-replace patch, which would wipe")
        print("every other livepatch on the system: klpd refuses it.")
        config.write_text(config.read_text().replace(HELD_BACK, ""))
        sh(str(BIN / "klpctl"), "reload", check=False)
        sh(str(BIN / "klpctl"), "wait", "--timeout", "120", check=False)
        rc = sh(str(BIN / "klpctl"), "status", check=False)
        print(f"(klpctl status exit code {rc}: {EXIT_MEANING.get(rc, '?')}; the rest stays on)")

        step("why: what klpd logged (journald fields shown as KEY=value off systemd)")
        print("".join(daemon_log.read_text().splitlines(keepends=True)[-30:]), end="")

        step("the operator resolves it: disable the two bad patches (persisted) -> converged")
        sh(str(BIN / "klpctl"), "disable", "lpbad", check=False)
        sh(str(BIN / "klpctl"), "disable", "lprep", check=False)
        sh(str(BIN / "klpctl"), "wait", "--timeout", "120", check=False)
        rc = sh(str(BIN / "klpctl"), "status", check=False)
        print(f"(klpctl status exit code {rc}: {EXIT_MEANING.get(rc, '?')})")
        print("lpbad and lprep stay disabled across restarts; `klpctl enable PATCH` undoes it.")
        return 0 if rc == 0 else 1
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        if "sim" in locals():
            sim.stop()
        if "bus" in locals():
            bus.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
