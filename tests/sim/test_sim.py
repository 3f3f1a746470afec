"""The simulated kernel (klpd_sim): every rule klpd relies on, through its files and CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pyudev
from klpd_sim.harness import SimKernel, wait_for
from klpd_sim.modfile import find_module
from klpd_sim.spec import demo_spec, init_root, load_spec
from klpd_sim.uevent import HEADER_SIZE, encode_udev_message, murmur_hash2, send_module_uevent

from klpd.kernel.modinfo import read_modinfo

LP = "sys/kernel/livepatch"
TIMEOUT = 10.0

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def sim() -> Iterator[SimKernel]:
    with SimKernel(transition_ms=100) as s:
        yield s


def stays(condition: Callable[[], bool], duration: float) -> bool:
    """Whether ``condition`` holds for all of ``duration`` (to show something does not end)."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        if not condition():
            return False
        time.sleep(0.02)
    return True


def gone(sim: SimKernel, relpath: str) -> Callable[[], bool]:
    return lambda: not (sim.root / relpath).exists()


def reads(sim: SimKernel, relpath: str, value: str) -> Callable[[], bool]:
    return lambda: sim.read(relpath) == value


def logged(sim: SimKernel, text: str, times: int = 1) -> Callable[[], bool]:
    return lambda: sim.log().count(text) >= times


def load_and_settle(sim: SimKernel, *names: str) -> None:
    for name in names:
        sim.modprobe(name)
        sim.wait_idle(TIMEOUT)


# --- layout ---------------------------------------------------------------------------


def test_init_lays_out_root_and_module_files(tmp_path: Path) -> None:
    init_root(tmp_path, demo_spec("6.1.0-sim"))
    assert (tmp_path / "proc/sys/kernel/osrelease").read_text() == "6.1.0-sim\n"
    assert (tmp_path / "sys/module").is_dir()
    assert (tmp_path / "sys/kernel/livepatch").is_dir()
    moddir = tmp_path / "lib/modules/6.1.0-sim"
    v2 = find_module(moddir, "lpa-v2__ext4")
    assert v2 is not None and v2.livepatch
    assert v2.get("klpd_series") == "lpa" and v2.get("klpd_version") == "2"
    rep = find_module(moddir, "lprep__vmlinux")
    assert rep is not None and rep.lp_replace and rep.get("klpd_replace") == "Y"
    ext4 = read_modinfo(moddir / "extra/ext4.ko")
    assert ext4["depends"] == ["mbcache,jbd2,crc16"]
    assert ext4["vermagic"][0].startswith("6.1.0-sim ")


def test_toml_spec(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.toml"
    spec_file.write_text(
        'release = "6.12.0-sim"\ncompression = "zst"\n'
        '[modules.foo]\ndescription = "a target"\n'
        '[modules.p__foo]\nlivepatch = "Y"\nklpd_sim_object = "foo"\n'
    )
    spec = load_spec(spec_file)
    root = tmp_path / "root"
    init_root(root, spec)
    mf = find_module(root / "lib/modules/6.12.0-sim", "p__foo")
    assert mf is not None and mf.path.name == "p__foo.ko.zst" and mf.lp_object == "foo"


# --- modprobe / rmmod ---------------------------------------------------------------


def test_modprobe_target_with_dependencies(sim: SimKernel) -> None:
    r = sim.run_cli("modprobe", "--", "ext4")
    assert (r.returncode, r.stderr) == (0, "")
    assert sim.read("sys/module/ext4/initstate") == "live"
    assert sim.read("sys/module/ext4/refcnt") == "0"
    assert sim.read("sys/module/jbd2/refcnt") == "1"
    assert os.readlink(sim.root / "sys/module/jbd2/holders/ext4") == "../../ext4"
    again = sim.run_cli("modprobe", "--", "ext4")
    assert (again.returncode, again.stderr) == (0, "")


def test_kmod_messages_and_exit_codes(sim: SimKernel) -> None:
    r = sim.run_cli("modprobe", "--", "nosuchmod")
    assert r.returncode == 1
    assert r.stderr == (
        f"modprobe: FATAL: Module nosuchmod not found in directory {sim.module_dir}\n"
    )
    r = sim.run_cli("rmmod", "--", "nosuchmod")
    assert (r.returncode, r.stderr) == (
        1,
        "rmmod: ERROR: Module nosuchmod is not currently loaded\n",
    )
    sim.modprobe("ext4")
    r = sim.run_cli("rmmod", "--", "jbd2")
    assert (r.returncode, r.stderr) == (1, "rmmod: ERROR: Module jbd2 is in use by: ext4\n")
    r = sim.run_cli("modprobe", "--", "lpbad__ext4")
    assert (r.returncode, r.stderr) == (
        1,
        "modprobe: ERROR: could not insert 'lpbad__ext4': Invalid argument\n",
    )
    assert not (sim.root / "sys/module/lpbad__ext4").exists()
    assert not (sim.root / LP / "lpbad__ext4").exists()
    r = sim.run_cli("rmmod", "--", "ext4")
    assert (r.returncode, r.stderr) == (0, "")
    assert not (sim.root / "sys/module/ext4").exists()
    assert sim.read("sys/module/jbd2/refcnt") == "0"


def test_dash_and_underscore_are_the_same(sim: SimKernel) -> None:
    r = sim.run_cli("modprobe", "--", "klpd-target")
    assert r.returncode == 0
    assert sim.read("sys/module/klpd_target/initstate") == "live"


# --- livepatches ------------------------------------------------------------------------


def test_livepatch_load_transition_and_refcnt(sim: SimKernel) -> None:
    sim.modprobe("lpa__vmlinux")
    # modprobe returned after init: the transition runs on in the background
    assert sim.read(f"{LP}/lpa__vmlinux/enabled") == "1"
    assert sim.read(f"{LP}/lpa__vmlinux/vmlinux/patched") == "1"
    assert (sim.root / LP / "lpa__vmlinux/vmlinux/cmdline_proc_show,1").is_dir()
    assert (sim.root / LP / "lpa__vmlinux/force").exists()
    wait_for(reads(sim, f"{LP}/lpa__vmlinux/transition", "0"), TIMEOUT)
    assert sim.read("sys/module/lpa__vmlinux/refcnt") == "1"
    assert not (sim.root / LP / "lpa__vmlinux/replace").exists()  # 6.11+ only
    r = sim.run_cli("rmmod", "--", "lpa__vmlinux")
    assert (r.returncode, r.stderr) == (1, "rmmod: ERROR: Module lpa__vmlinux is in use\n")


def test_ebusy_while_a_transition_runs(sim: SimKernel) -> None:
    sim.stall("vmlinux")  # keeps lpa__vmlinux's transition in progress
    sim.modprobe("lpa__vmlinux")
    assert sim.read(f"{LP}/lpa__vmlinux/transition") == "1"
    r = sim.run_cli("modprobe", "--", "lpa__ext4")
    assert (r.returncode, r.stderr) == (
        1,
        "modprobe: ERROR: could not insert 'lpa__ext4': Device or resource busy\n",
    )
    assert not (sim.root / "sys/module/lpa__ext4").exists()
    sim.unstall("vmlinux")
    sim.wait_idle(TIMEOUT)
    assert sim.run_cli("modprobe", "--", "lpa__ext4").returncode == 0


def test_disable_while_another_transition_runs_is_refused(sim: SimKernel) -> None:
    load_and_settle(sim, "lpa__vmlinux")
    sim.stall("vmlinux")
    sim.modprobe("lpb__vmlinux")
    sim.write_attr("lpa__vmlinux", "enabled", "0")  # the kernel answers EBUSY
    wait_for(logged(sim, "Device or resource busy"), TIMEOUT)
    assert sim.read(f"{LP}/lpa__vmlinux/enabled") == "1"
    assert sim.read(f"{LP}/lpa__vmlinux/transition") == "0"


def test_target_patched_when_it_comes_and_unpatched_when_it_goes(sim: SimKernel) -> None:
    load_and_settle(sim, "lpa__vmlinux", "lpa__ext4")
    assert sim.read(f"{LP}/lpa__ext4/ext4/patched") == "0"
    sim.modprobe("ext4")
    assert sim.read(f"{LP}/lpa__ext4/ext4/patched") == "1"
    assert sim.read("sys/module/ext4/refcnt") == "0"  # the livepatch does not hold it
    r = sim.run_cli("rmmod", "--", "ext4")
    assert r.returncode == 0, r.stderr
    assert sim.read(f"{LP}/lpa__ext4/ext4/patched") == "0"
    assert sim.read(f"{LP}/lpa__ext4/enabled") == "1"


def test_disable_then_rmmod(sim: SimKernel) -> None:
    sim.modprobe("ext4")
    load_and_settle(sim, "lpa__vmlinux", "lpa__ext4")
    sim.write_attr("lpa__ext4", "enabled", "0")
    wait_for(reads(sim, f"{LP}/lpa__ext4/enabled", "0"), TIMEOUT)
    wait_for(gone(sim, f"{LP}/lpa__ext4"), TIMEOUT)
    # as in the kernel, the module reference is put just after the directory goes
    wait_for(reads(sim, "sys/module/lpa__ext4/refcnt", "0"), TIMEOUT)
    r = sim.run_cli("rmmod", "--", "lpa__ext4")
    assert (r.returncode, r.stderr) == (0, "")
    assert not (sim.root / "sys/module/lpa__ext4").exists()


def test_kill_after_writes_sigkills_the_writer_once_its_write_took_effect(
    sim: SimKernel,
) -> None:
    """The daemon soak's SIGKILL right after a sysfs write."""
    sim.modprobe("ext4")
    load_and_settle(sim, "lpa__vmlinux", "lpa__ext4")
    writer = subprocess.Popen(["sleep", "60"])
    try:
        sim.kill_after_writes(writer.pid, 2)
        sim.write_attr("lpa__ext4", "enabled", "0")
        wait_for(gone(sim, f"{LP}/lpa__ext4"), TIMEOUT)
        assert writer.poll() is None  # one write: not yet
        sim.write_attr("lpa__vmlinux", "enabled", "0")
        assert writer.wait(TIMEOUT) == -signal.SIGKILL
        assert sim.read(f"{LP}/lpa__vmlinux/enabled") in ("0", None)  # after the write
    finally:
        writer.kill()
        writer.wait()


def test_invalid_writes_change_nothing(sim: SimKernel) -> None:
    load_and_settle(sim, "lpa__vmlinux")
    writes = [("enabled", "1"), ("enabled", "bogus"), ("force", "1")]  # all EINVAL
    for n, (attr, value) in enumerate(writes, 1):
        sim.write_attr("lpa__vmlinux", attr, value)
        # one at a time: the sim reads a write after the writer closed the file
        wait_for(logged(sim, "Invalid argument", n), TIMEOUT)
    wait_for(reads(sim, f"{LP}/lpa__vmlinux/enabled", "1"), TIMEOUT)
    assert sim.read(f"{LP}/lpa__vmlinux/transition") == "0"
    assert sim.read(f"{LP}/lpa__vmlinux/force") == ""


def test_stall_blocks_until_unstall(sim: SimKernel) -> None:
    sim.modprobe("ext4")
    load_and_settle(sim, "lpa__vmlinux")
    blocker = sim.stall("ext4", comm="ext4-writer")
    bystander = sim.stall("xfs_or_nothing", comm="idle-one")
    assert sim.read(f"proc/{blocker}/patch_state") == "-1"
    assert sim.read(f"proc/{blocker}/comm") == "ext4-writer"
    assert "[ext4]" in (sim.read(f"proc/{blocker}/stack") or "")
    sim.modprobe("lpa__ext4")
    assert sim.read(f"proc/{blocker}/patch_state") == "0"  # still unpatched: blocks
    assert sim.read(f"proc/{bystander}/patch_state") == "1"  # switched at once
    assert stays(reads(sim, f"{LP}/lpa__ext4/transition", "1"), 0.5)
    assert sim.unstall("ext4") == [blocker]
    assert not (sim.root / f"proc/{blocker}").exists()
    wait_for(reads(sim, f"{LP}/lpa__ext4/transition", "0"), TIMEOUT)
    assert sim.read(f"proc/{bystander}/patch_state") == "-1"


def test_stall_on_an_object_the_patch_does_not_touch(sim: SimKernel) -> None:
    sim.stall("ext4")
    sim.modprobe("lpa__vmlinux")
    wait_for(reads(sim, f"{LP}/lpa__vmlinux/transition", "0"), TIMEOUT)


def test_reverse_a_stalled_enable(sim: SimKernel) -> None:
    sim.modprobe("ext4")
    load_and_settle(sim, "lpa__vmlinux")
    sim.stall("ext4")
    sim.modprobe("lpa__ext4")
    assert sim.read(f"{LP}/lpa__ext4/transition") == "1"
    sim.write_attr("lpa__ext4", "enabled", "0")
    wait_for(gone(sim, f"{LP}/lpa__ext4"), TIMEOUT)  # the reversed transition completed
    wait_for(reads(sim, "sys/module/lpa__ext4/refcnt", "0"), TIMEOUT)
    assert sim.run_cli("rmmod", "--", "lpa__ext4").returncode == 0


def test_reverse_a_stalled_disable(sim: SimKernel) -> None:
    sim.modprobe("ext4")
    load_and_settle(sim, "lpa__vmlinux", "lpa__ext4")
    sim.stall("ext4")
    sim.write_attr("lpa__ext4", "enabled", "0")
    wait_for(reads(sim, f"{LP}/lpa__ext4/transition", "1"), TIMEOUT)
    assert sim.read(f"{LP}/lpa__ext4/enabled") == "0"
    assert sim.read(f"{LP}/lpa__ext4/ext4/patched") == "1"  # until the unpatch completes
    sim.write_attr("lpa__ext4", "enabled", "1")
    wait_for(reads(sim, f"{LP}/lpa__ext4/transition", "0"), TIMEOUT)
    assert sim.read(f"{LP}/lpa__ext4/enabled") == "1"
    assert sim.read("sys/module/lpa__ext4/refcnt") == "1"


def test_force_on_patching_keeps_the_module_removable(sim: SimKernel) -> None:
    sim.modprobe("ext4")
    load_and_settle(sim, "lpa__vmlinux")
    sim.stall("ext4")
    sim.modprobe("lpa__ext4")
    sim.write_attr("lpa__ext4", "force", "1")
    wait_for(logged(sim, "write '1' to lpa__ext4/force: ok"), TIMEOUT)
    assert sim.read(f"{LP}/lpa__ext4/force") == ""
    wait_for(reads(sim, f"{LP}/lpa__ext4/transition", "0"), TIMEOUT)
    sim.unstall("ext4")
    sim.write_attr("lpa__ext4", "enabled", "0")
    wait_for(gone(sim, f"{LP}/lpa__ext4"), TIMEOUT)
    wait_for(reads(sim, "sys/module/lpa__ext4/refcnt", "0"), TIMEOUT)
    assert sim.run_cli("rmmod", "--", "lpa__ext4").returncode == 0


def test_force_on_unpatching_pins_that_module_forever(sim: SimKernel) -> None:
    sim.modprobe("ext4")
    load_and_settle(sim, "lpa__vmlinux", "lpa__ext4")
    sim.stall("ext4")
    sim.write_attr("lpa__ext4", "enabled", "0")
    wait_for(reads(sim, f"{LP}/lpa__ext4/transition", "1"), TIMEOUT)
    sim.write_attr("lpa__ext4", "force", "1")
    wait_for(gone(sim, f"{LP}/lpa__ext4"), TIMEOUT)
    sim.unstall("ext4")
    assert sim.read("sys/module/lpa__ext4/refcnt") == "1"
    r = sim.run_cli("rmmod", "--", "lpa__ext4")
    assert (r.returncode, r.stderr) == (1, "rmmod: ERROR: Module lpa__ext4 is in use\n")
    # only the forced patch stays: the others come and go as before
    sim.write_attr("lpa__vmlinux", "enabled", "0")
    wait_for(gone(sim, f"{LP}/lpa__vmlinux"), TIMEOUT)
    wait_for(reads(sim, "sys/module/lpa__vmlinux/refcnt", "0"), TIMEOUT)
    assert sim.run_cli("rmmod", "--", "lpa__vmlinux").returncode == 0


def test_force_on_a_replace_pins_the_replaced_modules(sim: SimKernel) -> None:
    load_and_settle(sim, "lpa__vmlinux")
    sim.stall("vmlinux")
    sim.modprobe("lprep__vmlinux")
    sim.write_attr("lprep__vmlinux", "force", "1")
    wait_for(gone(sim, f"{LP}/lpa__vmlinux"), TIMEOUT)
    assert sim.read("sys/module/lpa__vmlinux/refcnt") == "1"
    assert sim.run_cli("rmmod", "--", "lpa__vmlinux").returncode == 1


def test_replace_patch_takes_over_everything(sim: SimKernel) -> None:
    sim.modprobe("ext4")
    load_and_settle(sim, "lpa__vmlinux", "lpa__ext4", "lpb__vmlinux")
    sim.stall("vmlinux")
    sim.modprobe("lprep__vmlinux")
    # during the transition the replace patch carries no-ops for the others' functions
    assert (sim.root / LP / "lprep__vmlinux/ext4/ext4_llseek,1").is_dir()
    assert sim.read(f"{LP}/lpa__ext4/enabled") == "1"
    sim.unstall("vmlinux")
    # the replaced patches go one after another, as the kernel frees them
    wait_for(lambda: [p.name for p in (sim.root / LP).iterdir()] == ["lprep__vmlinux"], TIMEOUT)
    assert not (sim.root / LP / "lprep__vmlinux/ext4").exists()
    assert sim.read(f"{LP}/lprep__vmlinux/transition") == "0"
    for patch in ("lpa__vmlinux", "lpa__ext4", "lpb__vmlinux"):
        wait_for(reads(sim, f"sys/module/{patch}/refcnt", "0"), TIMEOUT)
        assert sim.run_cli("rmmod", "--", patch).returncode == 0


def test_disabled_patch_cannot_come_back_without_reload(sim: SimKernel) -> None:
    load_and_settle(sim, "lpa__vmlinux")
    sim.write_attr("lpa__vmlinux", "enabled", "0")
    wait_for(gone(sim, f"{LP}/lpa__vmlinux"), TIMEOUT)
    r = sim.run_cli("modprobe", "--", "lpa__vmlinux")  # still loaded: a no-op
    assert r.returncode == 0
    assert not (sim.root / LP / "lpa__vmlinux").exists()
    sim.rmmod("lpa__vmlinux")
    load_and_settle(sim, "lpa__vmlinux")
    assert sim.read(f"{LP}/lpa__vmlinux/enabled") == "1"


def test_softdep_loads_the_patch_before_the_target(sim: SimKernel) -> None:
    load_and_settle(sim, "lpa__vmlinux")
    sim.softdep_file.write_text("softdep ext4 pre: lpa__ext4\n")
    sim.modprobe("ext4")
    assert sim.read("sys/module/lpa__ext4/initstate") == "live"
    assert sim.read(f"{LP}/lpa__ext4/ext4/patched") == "1"


def test_failing_softdep_is_ignored(sim: SimKernel) -> None:
    sim.softdep_file.write_text("softdep ext4 pre: lpa__ext4\n")
    sim.stall("vmlinux")
    sim.modprobe("lpa__vmlinux")  # its transition stays: lpa__ext4 gets EBUSY
    r = sim.run_cli("modprobe", "--", "ext4")
    assert (r.returncode, r.stderr) == (0, "")
    assert not (sim.root / "sys/module/lpa__ext4").exists()


# --- releases -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("release", "patched", "replace", "stack_order"),
    [("5.10.0-sim", False, False, False), ("6.14.0-sim", True, True, True)],
)
def test_attributes_follow_the_release(
    release: str, patched: bool, replace: bool, stack_order: bool
) -> None:
    with SimKernel(release=release, uevents=False) as sim:
        sim.modprobe("lpa__vmlinux")
        d = sim.root / LP / "lpa__vmlinux"
        assert (d / "vmlinux/patched").exists() == patched
        assert (d / "replace").exists() == replace
        assert (d / "stack_order").exists() == stack_order


# --- uevents ------------------------------------------------------------------------


def _monitor() -> Any:
    monitor = pyudev.Monitor.from_netlink(pyudev.Context(), "udev")
    monitor.filter_by("module")
    monitor.start()
    return monitor


def _events_for(monitor: Any, root: Path, count: int) -> list[Any]:
    out: list[Any] = []
    deadline = time.monotonic() + TIMEOUT
    while len(out) < count and time.monotonic() < deadline:
        dev = monitor.poll(timeout=1)
        if dev is not None and dev.properties.get("KLPD_SIM_ROOT") == str(root):
            out.append(dev)
    return out


def test_module_uevents_reach_pyudev(sim: SimKernel) -> None:
    monitor = _monitor()
    sim.modprobe("klpd_target")
    sim.rmmod("klpd_target")
    add, remove = _events_for(monitor, sim.root, 2)
    assert (add.action, add.sys_name, add.subsystem) == ("add", "klpd_target", "module")
    assert add.properties["DEVPATH"] == "/module/klpd_target"
    assert (remove.action, remove.sys_name) == ("remove", "klpd_target")
    assert int(remove.properties["SEQNUM"]) == int(add.properties["SEQNUM"]) + 1


def test_send_module_uevent_burst(tmp_path: Path) -> None:
    monitor = _monitor()
    for i in range(1, 201):
        send_module_uevent("add", f"m{i}", i, {"KLPD_SIM_ROOT": str(tmp_path)})
    got = _events_for(monitor, tmp_path, 200)
    assert [d.sys_name for d in got] == [f"m{i}" for i in range(1, 201)]


def test_wire_format() -> None:
    msg = encode_udev_message({"ACTION": "add", "SUBSYSTEM": "module"})
    assert msg[:8] == b"libudev\0"
    assert msg[8:12] == bytes.fromhex("feedcafe")
    assert len(msg) == HEADER_SIZE + len(b"ACTION=add\0SUBSYSTEM=module\0")
    assert int.from_bytes(msg[24:28], "big") == murmur_hash2(b"module")
    assert murmur_hash2(b"") == 0


# --- process --------------------------------------------------------------------------


def test_sigterm_stops_cleanly() -> None:
    sim = SimKernel(uevents=False)
    sim.start()
    try:
        assert sim.proc is not None
        pid = int((sim.root / "sim.pid").read_text())
        assert pid == sim.proc.pid
        os.kill(pid, signal.SIGTERM)
        assert sim.proc.wait(timeout=TIMEOUT) == 0
        assert not (sim.root / "sim.sock").exists()
        assert not (sim.root / "sim.pid").exists()
    finally:
        sim.close()


def test_config_overrides_fit_klpd_config(sim: SimKernel) -> None:
    from klpd.service.config import Config

    cfg = Config.model_validate(sim.config_overrides())
    assert cfg.kernel.read_release() == sim.release
    r = subprocess.run(
        [*cfg.kernel.modprobe, "--", "xfs"], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stderr
    assert sim.read("sys/module/libcrc32c/refcnt") == "1"


def test_fake_signal_wakes_interruptible_sleepers() -> None:
    with SimKernel(transition_ms=50, fake_signal_ms=300, uevents=False) as sim:
        sim.modprobe("ext4")
        load_and_settle(sim, "lpa__vmlinux")
        hard = sim.stall("ext4", comm="d-state")
        soft = sim.stall("ext4", comm="s-state", interruptible=True)
        sim.modprobe("lpa__ext4")
        assert sim.read(f"proc/{soft}/patch_state") == "0"
        wait_for(gone(sim, f"proc/{soft}"), TIMEOUT)  # woken: it left the function
        assert logged(sim, "livepatch: signaling remaining tasks")()
        assert sim.read(f"proc/{hard}/patch_state") == "0"
        assert sim.read(f"{LP}/lpa__ext4/transition") == "1"
        sim.unstall("ext4")
        wait_for(reads(sim, f"{LP}/lpa__ext4/transition", "0"), TIMEOUT)
        # alone, an interruptible sleeper holds a transition only until the fake signal
        sim.stall("ext4", interruptible=True)
        sim.write_attr("lpa__ext4", "enabled", "0")
        wait_for(gone(sim, f"{LP}/lpa__ext4"), TIMEOUT)


def test_patch_naming_a_missing_function(sim: SimKernel) -> None:
    sim.modprobe("klpd_target")
    r = sim.run_cli("modprobe", "--", "lpbad__klpd_target")
    assert (r.returncode, r.stderr) == (
        1,
        "modprobe: ERROR: could not insert 'lpbad__klpd_target': Invalid argument\n",
    )
    sim.rmmod("klpd_target")
    load_and_settle(sim, "lpbad__klpd_target")  # accepted while its object is away
    r = sim.run_cli("modprobe", "--", "klpd_target")
    assert (r.returncode, r.stderr) == (
        1,
        "modprobe: ERROR: could not insert 'klpd_target': Invalid argument\n",
    )
    assert not (sim.root / "sys/module/klpd_target").exists()
    assert sim.read(f"{LP}/lpbad__klpd_target/klpd_target/patched") == "0"


def test_realistic_timing_retries_on_whole_seconds() -> None:
    """6.1 under TCG: transitions end on klp_transition_work's 1 s retries, 0.8-1.7 s."""
    with SimKernel(transition_ms=800, retry_ms=1000, uevents=False) as sim:
        start = time.monotonic()
        sim.modprobe("lpa__vmlinux")
        sim.wait_idle(TIMEOUT)
        assert 0.8 <= time.monotonic() - start < 2.5
        assert logged(sim, "livepatch: 'lpa__vmlinux': patching complete")()


def test_cli_builtin_names_match_the_specs() -> None:
    from klpd_sim.cli import BUILTIN_NAMES
    from klpd_sim.spec import BUILTIN_SPECS

    assert sorted(BUILTIN_NAMES) == sorted(BUILTIN_SPECS)


def test_modules_installed_while_running_are_found(sim: SimKernel) -> None:
    sim.install("lpc__xfs", {"livepatch": "Y", "klpd_sim_funcs": "xfs_file_open"}, "xz")
    sim.modprobe("xfs")
    sim.modprobe("lpc__xfs")
    assert sim.read(f"{LP}/lpc__xfs/xfs/patched") == "1"
    assert (sim.root / LP / "lpc__xfs/xfs/xfs_file_open,1").is_dir()
