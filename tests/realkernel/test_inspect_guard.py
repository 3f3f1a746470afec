"""Issue 12 on the real kernel (qemu, Debian's kernel): module inspection agrees with what the
kernel does; an undeclared atomic-replace module is refused with no wipe; a module that
crashed the guest right after klpd applied it is quarantined in the next boot.

Two boots: (1) scenarios inspect_guard and quarantine_boot1, which ends by crashing the
guest (sysrq c) right after klpd applied lpb; (2) quarantine_boot2. klpd's state directory
is an ext4 disk image (made here with mkfs.ext4) attached to both boots as /dev/vda, so
what klpd wrote before the crash is only there if it was written durably.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = [pytest.mark.realkernel, pytest.mark.timeout(2400)]

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "scenarios"

Step = dict[str, Any]


def _load_vm() -> ModuleType:
    name = "klpd_realkernel_vm"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / "vm.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


vm = _load_vm()


def _build_6_1() -> Any:
    """Debian's 6.1 line: from tests/realkernel/lines.py where the suite has kernel lines,
    else build.sh's one build."""
    if (HERE / "lines.py").exists():
        return vm.prepared(vm.BY_NAME["6.1"])  # the build shared with the other tests
    return vm.build_modules()


def _steps(trace: dict[str, Any], name: str, console: str) -> dict[str, Step]:
    if name not in trace["scenarios"]:
        raise AssertionError(f"scenario {name} recorded no steps; guest console:\n{console}")
    return {s["name"]: s for s in trace["scenarios"][name]["steps"]}


@pytest.fixture(scope="module")
def boots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Step]]:
    root = tmp_path_factory.mktemp("inspect-guard")
    disk = root / "klpd-state.img"
    with disk.open("wb") as f:
        f.truncate(32 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(disk)], check=True)
    drive = ["-drive", f"file={disk},format=raw,if=virtio"]
    build = _build_6_1()
    first = vm.run_guest(
        [SCENARIOS / "inspect_guard.sh", SCENARIOS / "quarantine_boot1.sh"],
        build=build,
        results_dir=root / "boot1",
        timeout=1500,
        extra_qemu_args=drive,
        expect_crash=True,
    )
    second = vm.run_guest(
        [SCENARIOS / "quarantine_boot2.sh"],
        build=build,
        results_dir=root / "boot2",
        timeout=900,
        extra_qemu_args=drive,
    )
    t1, t2 = vm.read_trace(first), vm.read_trace(second)
    out = {
        "inspect_guard": _steps(t1, "inspect_guard", first.console),
        "quarantine_boot1": _steps(t1, "quarantine_boot1", first.console),
        "quarantine_boot2": _steps(t2, "quarantine_boot2", second.console),
    }
    out["console1"] = {"console": {"stdout": first.console}}
    out["boot1_record"] = {
        "record": {"stdout": (root / "boot1/quarantine_boot1/record-before-crash").read_text()}
    }
    out["logs"] = {
        "boot1": {"stdout": (root / "boot1/quarantine_boot1/klpd.log").read_text()},
        "boot2": {"stdout": (root / "boot2/quarantine_boot2/klpd.log").read_text()},
        "inspect": {"stdout": (root / "boot1/inspect_guard/klpd.log").read_text()},
        "samples": {"stdout": (root / "boot1/inspect_guard/samples").read_text()},
    }
    return out


def ok(step: Step) -> Step:
    assert step["rc"] == 0, f"{step['name']}: rc {step['rc']}\n{step['stdout']}{step['stderr']}"
    return step


def kernel_view(step: Step, module: str) -> list[tuple[str, list[tuple[str, int]]]]:
    """A livepatch's objects and <func>,<sympos> directories, as sysfs showed them."""
    objs = step["livepatch"][module]["objects"]
    out = []
    for name, obj in sorted(objs.items()):
        funcs = sorted((f.rsplit(",", 1)[0], int(f.rsplit(",", 1)[1])) for f in obj["funcs"])
        out.append((name, funcs))
    return out


def inspected(report: dict[str, Any]) -> list[tuple[str, list[tuple[str, int]]]]:
    """What inspection read. sysfs shows sympos 1 for a function given as 0 (unique)."""
    return sorted(
        (o["name"], sorted((f, max(p, 1)) for f, p in zip(o["funcs"], o["sympos"], strict=True)))
        for o in report["objects"]
    )


def test_inspection_agrees_with_the_kernel(boots: dict[str, dict[str, Step]]) -> None:
    s = boots["inspect_guard"]
    reports = {r["module"]: r for r in json.loads(s["inspect.all"]["stdout"])}
    assert all(r["layout"] == "BTF of /sys/kernel/btf/vmlinux" for r in reports.values())
    # objects and functions, as the kernel made them
    for module, step in [
        ("lpa__vmlinux", "kernel.lpa.wait"),
        ("lpa__klpd_target", "kernel.lpa_target.wait"),
        ("lptwo__vmlinux", "kernel.lptwo.wait"),
        ("lpwrong__vmlinux", "kernel.lpwrong.wait"),
    ]:
        assert kernel_view(ok(s[step]), module) == inspected(reports[module]), module
        assert reports[module]["replace"] is False
    assert reports["lptwo__vmlinux"]["objects"][0]["sympos"] == [1]
    # replace false: each patch stacked on the others, none wiped
    assert set(s["kernel.lpwrong.wait"]["livepatch"]) == {
        "lpa__vmlinux",
        "lpa__klpd_target",
        "lptwo__vmlinux",
        "lpwrong__vmlinux",
    }
    # replace true: the kernel wiped every other livepatch
    for module in ("lpundecl__vmlinux", "lprep__vmlinux"):
        assert reports[module]["replace"] is True
    assert set(ok(s["kernel.lpundecl.settle"])["livepatch"]) == {"lpundecl__vmlinux"}
    # the sysfs replace attribute, on kernels that have one (6.11+), says the same
    attrs = dict(
        line.split()
        for line in s["kernel.replace_attrs"]["stdout"].splitlines()
        if line.startswith("/sys")
    )
    for path, value in attrs.items():
        module = path.split("/")[4]
        assert value == str(int(reports[module]["replace"])), path
    after = s["kernel.after_replace"]["stdout"]
    if attrs:
        assert "/sys/kernel/livepatch/lpundecl__vmlinux/replace 1" in after
    # verdicts: only lpa's would be loaded
    would = {m for m, r in reports.items() if r["would_load"]}
    assert would == {"lpa__vmlinux", "lpa__klpd_target"}


def test_undeclared_replace_refused_with_no_wipe(boots: dict[str, dict[str, Step]]) -> None:
    s = boots["inspect_guard"]
    ok(s["klpd.applied"])
    ok(s["reload.wait"])
    ok(s["lpundecl.not_loaded"])
    status = json.loads(s["status"]["stdout"])
    assert status["state"] == "converged"
    lpundecl = next(p for p in status["patches"] if p["name"] == "lpundecl")
    assert lpundecl["status"] == "refused"
    assert (
        "atomic-replace patch (its struct klp_patch sets .replace = true)"
        in (lpundecl["modules"][0]["error"])
    )
    # sampled all along: never the original output of either patched function
    original_cmdline = s["original.cmdline"]["stdout"].strip()
    original_target = s["original.target"]["stdout"].strip()
    samples = boots["logs"]["samples"]["stdout"].splitlines()
    assert len(samples) > 50, len(samples)
    cmdlines = {line.split("|")[0] for line in samples}
    targets = {line.split("|")[1] for line in samples}
    assert original_cmdline not in cmdlines and original_target not in targets
    assert cmdlines <= {"lpa-vmlinux", "lpb-vmlinux"}, cmdlines
    assert set(s["reload.settle"]["livepatch"]) == {
        "lpa__vmlinux",
        "lpb__vmlinux",
        "lpa__klpd_target",
        "lpb__klpd_target",
    }


def test_crash_right_after_a_load_quarantines_it_in_the_next_boot(
    boots: dict[str, dict[str, Step]],
) -> None:
    b1, b2 = boots["quarantine_boot1"], boots["quarantine_boot2"]
    boot1_id = ok(b1["boot_id"])["stdout"].strip()
    boot2_id = ok(b2["boot_id"])["stdout"].strip()
    assert boot1_id != boot2_id
    # lpa's record closed after the grace period; lpb's open when the guest went down
    assert json.loads(ok(b1["lpa.record"])["stdout"])["open"] == []
    ok(b1["lpb.applied"])
    assert "sysrq: Trigger a crash" in boots["console1"]["console"]["stdout"]
    record = json.loads(ok(b2["record.before"])["stdout"])
    assert [o["module"] for o in record["open"]] == ["lpb__vmlinux"]
    assert record["open"][0]["boot_id"] == boot1_id
    # the next boot: lpb quarantined with the evidence, lpa applied as usual
    ok(b2["lpa.applied"])
    ok(b2["lpb.not_loaded"])
    status = json.loads(b2["status"]["stdout"])
    assert status["state"] == "degraded"
    lpb = next(p for p in status["patches"] if p["name"] == "lpb")
    assert lpb["modules"][0]["status"] == "quarantined"
    assert boot1_id in lpb["modules"][0]["error"]
    log = boots["logs"]["boot2"]["stdout"]
    assert f"quarantining lpb__vmlinux: boot {boot1_id} ended with its load record open" in log
    assert f"this boot {boot2_id}" in log
    # an operator lifts it
    ok(b2["enable"])
    ok(b2["lpb.applied"])
    ok(b2["wait.after"])
    assert json.loads(b2["status.after"]["stdout"])["state"] == "converged"
