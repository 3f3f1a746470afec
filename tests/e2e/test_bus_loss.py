"""Bus loss: dbus-daemon goes away under the real daemon. klpd keeps orchestrating from udev
events (a target loaded meanwhile gets its patch), unloads nothing, and is back on the bus
— its name owned, Describe answering — once a dbus-daemon listens at the address again."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from dbus_helpers import start_private_bus
from klpd_harness import MakeKlpd, applied, wait_for
from klpd_sim.harness import SimKernel

BUSCTL = shutil.which("busctl") or "/usr/bin/busctl"


def describe(address: str) -> subprocess.CompletedProcess[str]:
    argv = [BUSCTL, f"--address={address}", "call", "io.github.Klpd1", "/io/github/Klpd1"]
    argv += ["io.github.Klpd1.Manager", "Describe"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_bus_restart_keeps_the_kernel_work_and_comes_back(
    sim: SimKernel, make_klpd: MakeKlpd
) -> None:
    bus = start_private_bus()
    try:
        socket = Path(bus.directory) / "bus"
        address = f"unix:path={socket}"  # no guid: the restarted daemon has a new one
        sim.modprobe("ext4")
        k = make_klpd({"patches": {"desired": ["lpa"]}, "dbus": {"enabled": True, "bus": address}})
        k.start()
        wait_for(lambda: applied(sim) == {"lpa__vmlinux", "lpa__ext4"}, 60, "lpa applied")
        assert describe(address).returncode == 0

        bus.process.kill()  # dbus-daemon gone
        bus.process.wait()
        sim.modprobe("klpd_target")  # the kernel work goes on from udev events
        wait_for(lambda: "lpa__klpd_target" in applied(sim), 60, "lpa__klpd_target applied")
        assert {"lpa__vmlinux", "lpa__ext4"} <= applied(sim)  # nothing unloaded
        k.check_alive()

        socket.unlink(missing_ok=True)
        config = Path(bus.directory) / "bus.conf"
        bus.process = subprocess.Popen(
            ["dbus-daemon", f"--config-file={config}", "--print-address", "--nofork"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        assert bus.process.stdout is not None and bus.process.stdout.readline()
        wait_for(lambda: describe(address).returncode == 0, 60, "klpd back on the bus")
        assert "lpa__klpd_target" in describe(address).stdout
        assert "lost the D-Bus connection" in k.log() and "back on the bus" in k.log()
        k.check_alive()
    finally:
        bus.stop()
