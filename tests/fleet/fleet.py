"""Six hosts on one machine for the klpd.fleet collection's integration run.

Each host is a simulated kernel, a private ``dbus-daemon`` and a real ``klpd`` serving on it;
Ansible reaches every host with ``ansible_connection=local`` (as ansible-core's own
multi-host tests do), the modules run on the machine's system Python (``/usr/bin/python3``:
the standard library only) and find their host's klpd by the per-host bus address
``klpd_bus``. A patch is "shipped" by copying its module files from a per-host payload
directory into the host's catalog (what installing its package does).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dbus_helpers import start_private_bus
from klpd_harness import KlpdProcess
from klpd_sim.bus import PrivateBus
from klpd_sim.harness import SimKernel
from klpd_sim.kofile import write_ko
from klpd_sim.spec import vermagic

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / "ansible"
BIN = Path(sys.executable).parent
KLPCTL = str(BIN / "klpctl")
SYSTEM_PYTHON = "/usr/bin/python3"
SHIP_TASKS = Path(__file__).with_name("ship.yml")
# The demo catalog's other patches stay out of the way: lpa_v2 is what every host runs.
BASE_CONFIG: dict[str, dict[str, Any]] = {"patches": {"exclude": ["lpb", "lpbad"]}}


@dataclass
class Host:
    name: str
    sim: SimKernel
    bus: PrivateBus
    klpd: KlpdProcess

    def klpctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [KLPCTL, "--bus", self.bus.address, *args],
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def describe(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.klpctl("status", "--json").stdout)
        return data

    def patch_status(self, name: str) -> str | None:
        return next((p["status"] for p in self.describe()["patches"] if p["name"] == name), None)

    def shipped(self, patch: str) -> bool:
        return any((self.sim.module_dir / "extra").glob(f"{patch}__*"))

    def loaded(self) -> set[str]:
        return {e.name for e in (self.sim.sys / "module").iterdir()}


class Fleet:
    def __init__(self, workdir: Path, count: int = 6) -> None:
        self.workdir = workdir
        self.hosts: list[Host] = []
        self.payloads = workdir / "payloads"
        try:
            for i in range(1, count + 1):
                self.hosts.append(self._start(f"host{i}"))
            for host in self.hosts:
                done = host.klpctl("wait", "--timeout", "120")
                assert done.returncode == 0, (host.name, done.stderr, host.klpd.log()[-3000:])
        except BaseException:
            self.close()
            raise

    def _start(self, name: str) -> Host:
        # No uevents: every simulated kernel on this machine would send them on the one udev
        # netlink group, and every host's klpd would hear its neighbours' module loads.
        sim = SimKernel(transition_ms=20, uevents=False).start()
        bus = start_private_bus()
        workdir = self.workdir / name
        workdir.mkdir()
        sim.modprobe("ext4")
        overrides: dict[str, dict[str, Any]] = {
            **BASE_CONFIG,
            "dbus": {"enabled": True, "bus": bus.address},
        }
        klpd = KlpdProcess(sim, workdir, overrides)
        host = Host(name, sim, bus, klpd)
        klpd.start()
        return host

    def close(self) -> None:
        for host in self.hosts:
            host.klpd.close()
            host.bus.stop()
            host.sim.close()

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def payload(self, patch: str, broken_on: tuple[str, ...] = ()) -> None:
        """The patch's modules for every host: ``<patch>__vmlinux`` and ``<patch>__ext4``;
        on ``broken_on`` hosts the ext4 part fails its init (EINVAL), as a patch built
        against another ext4 would."""
        for host in self.hosts:
            directory = self.payloads / patch / host.name
            directory.mkdir(parents=True, exist_ok=True)
            for obj, funcs in (("vmlinux", "cmdline_proc_show"), ("ext4", "ext4_llseek")):
                info = {
                    "vermagic": vermagic(host.sim.release),
                    "depends": "",
                    "livepatch": "Y",
                    "license": "GPL",
                    "description": f"{patch} for {obj}",
                    "klpd_series": patch,
                    "klpd_version": "1",
                    "klpd_sim_object": obj,
                    "klpd_sim_funcs": funcs,
                }
                if obj == "ext4" and host.name in broken_on:
                    info["klpd_sim_init_errno"] = "EINVAL"
                write_ko(directory / f"{patch}__{obj}.ko", info)

    def ship_by_hand(self, patch: str) -> None:
        """Install the patch on every host outside Ansible (a package staged ahead)."""
        for host in self.hosts:
            target = host.sim.module_dir / "extra"
            target.mkdir(parents=True, exist_ok=True)
            for f in (self.payloads / patch / host.name).iterdir():
                (target / f.name).write_bytes(f.read_bytes())

    def inventory(self) -> Path:
        hosts = {
            h.name: {
                "ansible_connection": "local",
                "ansible_python_interpreter": SYSTEM_PYTHON,
                "klpd_bus": h.bus.address,
                "klpd_klpctl": KLPCTL,
                "klpd_test_catalog": str(h.sim.module_dir),
            }
            for h in self.hosts
        }
        path = self.workdir / "inventory.json"
        path.write_text(json.dumps({"all": {"children": {"klpd": {"hosts": hosts}}}}))
        return path

    def rollout(self, patch: str, *args: str, **extra: Any) -> Rollout:
        """``ansible-playbook klpd.fleet.rollout`` over the six hosts."""
        report = self.workdir / f"report-{patch}.json"
        report.unlink(missing_ok=True)
        extra_vars = {
            "klpd_rollout_patch": patch,
            "klpd_rollout_ship_tasks": str(SHIP_TASKS),
            "klpd_rollout_report": str(report),
            "klpd_rollout_gate_timeout": 60,
            "klpd_test_payloads": str(self.payloads),
            **extra,
        }
        home = self.workdir / "ansible-home"
        env = {
            **os.environ,
            "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
            "ANSIBLE_HOME": str(home),
            "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_PIPELINING": "1",  # one python per task, no module file copied
            "LANG": "C.UTF-8",
        }
        env.pop("KLPD_BUS_ADDRESS", None)  # every host names its own bus
        done = subprocess.run(
            [
                str(BIN / "ansible-playbook"),
                "-i",
                str(self.inventory()),
                "klpd.fleet.rollout",
                "-e",
                json.dumps(extra_vars),
                *args,
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd=self.workdir,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        data = json.loads(report.read_text()) if report.exists() else {}
        return Rollout(done.returncode, done.stdout + done.stderr, data)


@dataclass
class Rollout:
    rc: int
    output: str
    report: dict[str, Any]

    def recap(self) -> dict[str, dict[str, int]]:
        """PLAY RECAP: host -> {ok, changed, failed, ...}."""
        out: dict[str, dict[str, int]] = {}
        for m in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", self.output, re.M):
            out[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
        return out

    def batches(self) -> list[list[str]]:
        """The hosts of each wave, in order: those the first gate ran on, per PLAY banner."""
        waves: list[list[str]] = []
        for play in self.output.split("PLAY [Roll a kernel livepatch")[1:]:
            first_gate = play.split("TASK [Wait for klpd to settle]", 1)[1].split("TASK [", 1)[0]
            waves.append(sorted(re.findall(r"^(?:ok|changed|fatal): \[(\w+)\]", first_gate, re.M)))
        return waves
