"""The simulated kernel against each real kernel line, step by step.

Every step of a line's recorded ``kernel_facts`` run (tests/realkernel) is done to the sim,
started with that line's release (its profile: uevent order, which attributes exist), and
compared: exit codes and messages, the whole ``sys/kernel/livepatch`` tree (every file and
directory, so an attribute the sim invents or lacks fails), refcounts and taints, which
patch's version of each function runs (``/proc/klpd_target``, ``/proc/cmdline``), sysfs
write results, stalled tasks, uevents. A step type without a comparison fails the replay.

Which trace: when the real-kernel tests ran in this pytest session, the traces they just
recorded (build/realkernel/traces/<line>.json, stamped with this session) - a missing one
fails; otherwise the committed tests/realkernel/traces/<line>.json.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
import pyudev
from klpd_sim.harness import SimKernel, wait_for
from klpd_sim.spec import realkernel_spec

from klpd.kernel.modinfo import read_modinfo

ROOT = Path(__file__).resolve().parents[2]
FRESH = ROOT / "build" / "realkernel" / "traces"
COMMITTED = ROOT / "tests" / "realkernel" / "traces"
LINES = ("5.10", "6.1", "6.12", "7.x")
LP = "sys/kernel/livepatch"
TIMEOUT = 10.0
TARGET_FUNC = "klpd_target:klpd_target_value"
CMDLINE_FUNC = "vmlinux:cmdline_proc_show"

pytestmark = pytest.mark.timeout(600)

Step = dict[str, Any]
State = tuple[dict[str, Any], dict[str, Any], dict[str, str]]


def load_trace(line: str, session: pytest.Session) -> dict[str, Any]:
    ran_real = any(item.nodeid.startswith("tests/realkernel/") for item in session.items)
    if ran_real:
        path = FRESH / f"{line}.json"
        assert path.exists(), f"the real-kernel run of this session recorded no trace for {line}"
        trace: dict[str, Any] = json.loads(path.read_text())
        assert trace.get("session") == os.environ.get("KLPD_SESSION", str(os.getpid())), (
            f"{path} is from another run: this session's real-kernel run of {line} failed"
        )
        return trace
    path = COMMITTED / f"{line}.json"
    assert path.exists(), f"{path} missing: record it with the real-kernel tests"
    committed: dict[str, Any] = json.loads(path.read_text())
    return committed


# ---- the sim's state in the trace's shape ------------------------------------------------


def _attrs(d: Path) -> dict[str, Any]:
    """Files of a sysfs directory as the guest's snapshot shows them (``force`` is
    write-only on the kernel: a read fails, recorded as None)."""
    out: dict[str, Any] = {}
    for f in sorted(d.iterdir()):
        if f.is_file():
            out[f.name] = None if f.name == "force" else f.read_text().strip()
    return out


def sim_livepatch(sim: SimKernel) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in sorted((sim.root / LP).iterdir()):
        try:
            entry = {**_attrs(p), "objects": {}}
            for o in sorted(d for d in p.iterdir() if d.is_dir()):
                entry["objects"][o.name] = {
                    **_attrs(o),
                    "funcs": sorted(f.name for f in o.iterdir() if f.is_dir()),
                }
        except FileNotFoundError:
            continue  # went away while we looked; the next poll sees it gone
        out[p.name] = entry
    return out


def sim_modules(sim: SimKernel) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in (sim.root / "sys/module").iterdir():
        if m.name == "klpd_target" or "__" in m.name:
            try:
                out[m.name] = {
                    "refcnt": int((m / "refcnt").read_text()),
                    "taints": (m / "taint").read_text().strip(),
                }
            except FileNotFoundError:
                continue
    return out


def sim_values(sim: SimKernel) -> dict[str, str]:
    """What /proc/klpd_target and /proc/cmdline would read: the live version's output."""
    status = sim.status()
    funcs = status["functions"]

    def output(key: str) -> str:
        return str((funcs.get(key) or {}).get("output") or "original")

    vals = {"cmdline": output(CMDLINE_FUNC)}
    if "klpd_target" in status["modules"]:
        vals["klpd_target"] = output(TARGET_FUNC)
    return vals


def sim_state(sim: SimKernel) -> State:
    return sim_livepatch(sim), sim_modules(sim), sim_values(sim)


def real_values(step: Step) -> dict[str, str]:
    """The step's snapshot of the two outputs; the kernel's own command line is "original"."""
    vals = dict(step["values"])
    if not re.fullmatch(r"\S+-vmlinux", vals.get("cmdline", "")):
        vals["cmdline"] = "original"
    return vals


def real_state(step: Step) -> State:
    tree = {
        p: {
            **v,
            "objects": {o: {**d, "funcs": sorted(d["funcs"])} for o, d in v["objects"].items()},
        }
        for p, v in step["livepatch"].items()
    }
    mods = {n: {"refcnt": m["refcnt"], "taints": m["taints"]} for n, m in step["modules"].items()}
    return tree, mods, real_values(step)


# ---- one step ----------------------------------------------------------------------------


class Replay:
    """Does each step's command to the sim and compares what it printed / returned."""

    def __init__(self, sim: SimKernel, release: str) -> None:
        self.sim = sim
        self.release = release
        self.stalled: list[int] = []

    def step(self, step: Step) -> None:
        verb = step["cmd"].split()[0]
        handler = getattr(self, "do_" + verb, None)
        if handler is None:
            pytest.fail(f"step {step['name']}: no replay for {verb!r}: compare it or drop it")
        handler(step, step["cmd"].split()[1:])

    # --- the guest's scenario helpers, one method each --------------------------------------

    def do_reset_livepatches(self, step: Step, args: list[str]) -> None:
        assert "stays:" not in step["stdout"], "the real kernel kept modules the sim cannot"
        assert not list((self.sim.root / LP).iterdir()), step["name"]

    def do_modinfo(self, step: Step, args: list[str]) -> None:
        name = args[-1]
        ko = self.sim.module_dir / "extra" / f"{name}.ko"
        info = read_modinfo(ko)
        if args[:2] == ["-F", "depends"]:
            assert step["stdout"].strip() == ",".join(info.get("depends", [])), step["name"]
            return
        real = dict(
            (k.strip(), v.strip())
            for k, _, v in (ln.partition(":") for ln in step["stdout"].splitlines())
        )
        for key in ("livepatch", "klpd_series", "klpd_version", "klpd_cve", "depends"):
            want = real.get(key, "")
            got = ",".join(info.get(key, [])) if key == "depends" else _first(info, key)
            assert (key, got) == (key, want), step["name"]

    def do_read_value(self, step: Step, args: list[str]) -> None:
        assert sim_values(self.sim).get("klpd_target") == step["stdout"].strip(), step["name"]

    def do_read_cmdline(self, step: Step, args: list[str]) -> None:
        want = real_values({"values": {"cmdline": step["stdout"].strip()}})["cmdline"]
        assert sim_values(self.sim)["cmdline"] == want, step["name"]

    def do_modprobe(self, step: Step, args: list[str]) -> None:
        self._tool(step, "modprobe", args[:1])  # module parameters change nothing here

    def do_rmmod(self, step: Step, args: list[str]) -> None:
        self._tool(step, "rmmod", args[:1])

    def do_modprobe_at_once(self, step: Step, args: list[str]) -> None:
        """The second load right after the first: EBUSY if the first one's transition was
        still running then (the guest printed whether it was), else it loads."""
        m = re.search(r"transition before modprobe \S+: (\S+)", step["stdout"])
        assert m, step["stdout"]
        first = self.sim.modprobe(args[0], check=False)
        assert first["rc"] == 0, step["name"]
        if m.group(1) != "1":  # the kernel had finished it: so must the sim
            self.sim.wait_idle(TIMEOUT)
        self._tool(step, "modprobe", args[1:])

    def _tool(self, step: Step, tool: str, names: list[str]) -> None:
        # through the sim's socket, not its CLI: a process start can outlast a transition
        call = self.sim.modprobe if tool == "modprobe" else self.sim.rmmod
        for module in names:
            r = call(module, check=False)
        assert (r["rc"], r["stderr"]) == (step["rc"], step["stderr"]), step["name"]

    def do_wait_transitions(self, step: Step, args: list[str]) -> None:
        assert step["rc"] == 0, step["name"]
        self.sim.wait_idle(60)

    def do_attrs(self, step: Step, args: list[str]) -> None:
        """``find /sys/kernel/livepatch -mindepth 1 -maxdepth 3``: every path, none extra."""
        base = self.sim.root / LP
        got = sorted(
            "/sys/kernel/livepatch/" + str(p.relative_to(base))
            for p in base.rglob("*")
            if len(p.relative_to(base).parts) <= 3
        )
        assert got == sorted(step["stdout"].split()), step["name"]

    def do_sysfs_write(self, step: Step, args: list[str]) -> None:
        value, path = args
        if path.startswith("/sys/kernel/livepatch/"):
            patch, attr = path.split("/")[4:6]
            marker = f"write '{value}' to {patch}/{attr}:"
            before = self.sim.log().count(f"to {patch}/{attr}:")
            self.sim.write_attr(patch, attr, value)
            wait_for(lambda: self.sim.log().count(f"to {patch}/{attr}:") > before, TIMEOUT)
            line = [ln for ln in self.sim.log().splitlines() if marker in ln][-1]
            errtext = line.split(marker, 1)[1].strip()
            if step["rc"] == 0:
                assert errtext in ("ok", "0", "Success"), (step["name"], line)
            else:
                assert errtext and errtext in step["stderr"], (step["name"], line, step["stderr"])
        elif path == "/proc/klpd_target_sleep" and value == "wake":
            assert step["rc"] == 0, step["name"]
            if self.stalled:
                self.sim.unstall("klpd_target")
                self.stalled.clear()
        elif re.fullmatch(r"/sys/module/\w+/parameters/hold", path) and value == "0":
            # lpstall's new function stops holding its sleeper: the sleeper leaves it
            assert step["rc"] == 0, step["name"]
            self.sim.unstall("klpd_target")
            self.stalled.clear()
        else:
            pytest.fail(f"step {step['name']}: no replay for a write to {path}")

    def do_wait_sleepers(self, step: Step, args: list[str]) -> None:
        assert step["rc"] == 0, step["name"]
        # stall3's sleeper sleeps interruptibly (echo sleepi)
        self.stalled.append(
            self.sim.stall("klpd_target", interruptible=step["name"].startswith("stall3"))
        )

    def do_wait_stack(self, step: Step, args: list[str]) -> None:
        assert step["rc"] == 0 and args[1] in step["stdout"], step["name"]
        self.stalled.append(self.sim.stall("klpd_target"))

    def do_expect_transition_stays(self, step: Step, args: list[str]) -> None:
        """Real: still in transition after N s. Sim: still in transition well after its own
        transition time (a stalled one never ends by itself)."""
        time.sleep(1.0)
        got = sorted(
            f"/sys/kernel/livepatch/{d.name}/transition"
            for d in (self.sim.root / LP).iterdir()
            if self.sim.read(f"{LP}/{d.name}/transition") == "1"
        )
        assert (0 if got else 1, got) == (step["rc"], step["stdout"].split()), step["name"]

    def do_task_state(self, step: Step, args: list[str]) -> None:
        want = re.search(r"^patch_state (-?\d+)$", step["stdout"], re.M)
        assert want, step["stdout"]
        pid = self.stalled[-1]
        assert self.sim.read(f"proc/{pid}/patch_state") == want.group(1), step["name"]
        assert "klpd_target" in (self.sim.read(f"proc/{pid}/stack") or ""), step["name"]

    def do_test(self, step: Step, args: list[str]) -> None:
        """``test ! -e /proc/PID``: the woken sleeper is gone."""
        assert args[:2] == ["!", "-e"], step["cmd"]
        sim_gone = not any((self.sim.root / "proc" / str(p)).exists() for p in self.stalled)
        assert (0 if sim_gone else 1) == step["rc"], step["name"]

    def do_grep(self, step: Step, args: list[str]) -> None:
        """``grep '^M ' /proc/modules``: whether module M is loaded."""
        m = re.fullmatch(r"\^(\w+)", args[0])  # the recorded command lost the quotes
        assert m and args[-1] == "/proc/modules", step["cmd"]
        loaded = (self.sim.root / "sys/module" / m.group(1)).exists()
        assert (0 if loaded else 1) == step["rc"], step["name"]

    def do_sleepers(self, step: Step, args: list[str]) -> None:
        sleeping = [t for t in self.sim.status()["tasks"] if t["obj"] == "klpd_target"]
        assert str(len(sleeping)) == step["stdout"].strip(), step["name"]

    def do_initstate_at_add(self, step: Step, args: list[str]) -> None:
        monitor = _monitor()
        r = self.sim.run_cli("modprobe", "--", args[0])
        assert r.returncode == step["rc"], step["name"]
        events = uevents_seen(monitor, self.sim.root, 1)
        assert events[:1] == [f"add /module/{args[0]} (module)"], step["name"]
        # the sim records what a reader saw when the add uevent went out
        state = "coming" if self.sim_profile_add_before_init() else "live"
        assert f"initstate at add uevent: {state}\n" == step["stdout"], step["name"]

    def sim_profile_add_before_init(self) -> bool:
        from klpd_sim.profile import profile_for

        return bool(profile_for(self.release).add_uevent_before_init)

    def do_uevents_during(self, step: Step, args: list[str]) -> None:
        monitor = _monitor()
        self.step({**step, "cmd": " ".join(args)})
        want = [" ".join(line.split()) for line in step["stdout"].splitlines()]
        assert uevents_seen(monitor, self.sim.root, len(want)) == want, step["name"]


def _first(info: dict[str, list[str]], key: str) -> str:
    vals = info.get(key) or [""]
    return vals[0]


def _monitor() -> Any:
    monitor = pyudev.Monitor.from_netlink(pyudev.Context(), "udev")
    monitor.filter_by("module")
    monitor.start()
    return monitor


def uevents_seen(monitor: Any, root: Path, expected: int) -> list[str]:
    """This sim's uevents as ``udevadm monitor --kernel`` prints them (sans timestamp):
    wait for ``expected`` of them, then a little longer for any extra."""
    seen: list[str] = []
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        dev = monitor.poll(timeout=0.3 if len(seen) >= expected else 1)
        if dev is None:
            if len(seen) >= expected:
                break
            continue
        if dev.properties.get("KLPD_SIM_ROOT") == str(root):
            seen.append(f"{dev.action} {dev.properties['DEVPATH']} ({dev.subsystem})")
    return seen


# ---- the test ---------------------------------------------------------------------------


@pytest.mark.parametrize("line", LINES)
def test_sim_replays_the_kernel_line(line: str, request: pytest.FixtureRequest) -> None:
    """Every step of the line's kernel_facts run, done to the sim with the line's release:
    the same results, and the same sysfs tree, modules and function outputs after it."""
    trace = load_trace(line, request.session)
    steps: list[Step] = trace["scenarios"]["kernel_facts"]["steps"]
    release = trace["kernel"]
    assert len(steps) > 100
    # long enough that a snapshot right after a step still sees its transition running;
    # fake signals well before wait_transitions' own limit, as the kernel's 15 s
    with SimKernel(
        release=release, spec=realkernel_spec(release), transition_ms=600, fake_signal_ms=1500
    ) as sim:
        replay = Replay(sim, release)
        for i, step in enumerate(steps):
            replay.step(step)
            wanted = [real_state(step)]
            if any(p["transition"] == "1" for p in step["livepatch"].values()):
                # the sim may be ahead within a transition (a forced one ends at once
                # here, on the next 1 s retry there): then it must show the settled state
                settled = next(s for s in steps[i:] if s["cmd"].startswith("wait_transitions"))
                wanted.append(real_state(settled))
                # and which version a task runs is open while tasks switch
                wanted = [(t, m, {}) for t, m, _ in wanted]
            try:
                wait_for(functools.partial(_shown, sim, wanted), 3.0, what=step["name"])
            except TimeoutError:
                assert (step["name"], sim_state(sim)) == (step["name"], wanted[0])


def _shown(sim: SimKernel, wanted: list[State]) -> bool:
    tree, mods, vals = sim_state(sim)
    return any((tree, mods) == (t, m) and (not v or vals == v) for t, m, v in wanted)
