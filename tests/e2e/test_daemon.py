"""End to end: the real klpd process on the simulated kernel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from klpd_harness import KlpdProcess, MakeKlpd, applied, loaded, wait_for
from klpd_sim.harness import SimKernel
from klpd_sim.spec import Spec

LPA = {"patches": {"desired": ["lpa"]}}
MAIN = {"lpa__vmlinux"}


def test_start_with_targets_already_loaded(sim: SimKernel, make_klpd: MakeKlpd) -> None:
    sim.modprobe("ext4")
    sim.modprobe("klpd_target")
    k = make_klpd(LPA).start()
    k.wait_state("converged")
    assert applied(sim) == {"lpa__vmlinux", "lpa__ext4", "lpa__klpd_target"}
    # STATUS= may come a moment after the metrics file said converged: waited for, not read
    k.wait_message(lambda m: "STATUS=converged: 1 patches, 3 objects" in m)


def test_target_loaded_later_is_patched(sim: SimKernel, make_klpd: MakeKlpd) -> None:
    k = make_klpd(LPA).start()
    k.wait_state("converged")
    assert applied(sim) == MAIN
    sim.modprobe("ext4")
    wait_for(lambda: "lpa__ext4" in applied(sim), 30, "lpa__ext4 applied")
    k.wait_state("converged")
    assert applied(sim) == {"lpa__vmlinux", "lpa__ext4"}


def test_two_patches_on_one_object(sim: SimKernel, make_klpd: MakeKlpd) -> None:
    sim.modprobe("ext4")
    k = make_klpd({"patches": {"desired": ["lpa", "lpb"]}}).start()
    k.wait_state("converged")
    assert applied(sim) == {"lpa__vmlinux", "lpa__ext4", "lpb__vmlinux", "lpb__ext4"}


def test_target_removed_keep_policy_stays_armed(sim: SimKernel, make_klpd: MakeKlpd) -> None:
    sim.modprobe("ext4")
    k = make_klpd({**LPA, "policy": {"on_object_removed": "keep"}}).start()
    k.wait_state("converged")
    sim.rmmod("ext4")
    wait_for(lambda: "ext4" not in loaded(sim), 10, "ext4 gone")
    k.wait_state("converged")
    assert applied(sim) == {"lpa__vmlinux", "lpa__ext4"}
    assert (sim.livepatch_dir / "lpa__ext4/ext4/patched").read_text().strip() == "0"
    # the next load of ext4 is patched by the kernel itself, before ext4's init
    sim.modprobe("ext4")
    assert (sim.livepatch_dir / "lpa__ext4/ext4/patched").read_text().strip() == "1"


def test_target_removed_remove_policy_takes_module_away(
    sim: SimKernel, make_klpd: MakeKlpd
) -> None:
    sim.modprobe("ext4")
    k = make_klpd({**LPA, "policy": {"on_object_removed": "remove"}}).start()
    k.wait_state("converged")
    assert "lpa__ext4" in applied(sim)
    sim.rmmod("ext4")
    wait_for(lambda: "lpa__ext4" not in loaded(sim), 30, "lpa__ext4 removed")
    k.wait_state("converged")
    assert applied(sim) == MAIN
    sim.modprobe("ext4")
    wait_for(lambda: "lpa__ext4" in applied(sim), 30, "lpa__ext4 back")


def test_bad_module_is_reported_and_others_are_unaffected(
    sim: SimKernel, make_klpd: MakeKlpd
) -> None:
    sim.modprobe("ext4")
    k = make_klpd({"patches": {"desired": ["lpa", "lpbad"]}}).start()
    k.wait_state("degraded")
    assert applied(sim) == {"lpa__vmlinux", "lpa__ext4", "lpbad__vmlinux"}
    assert "could not insert 'lpbad__ext4': Invalid argument" in k.log()
    k.wait_message(lambda m: "STATUS=degraded" in m and "lpbad__ext4" in m)


def test_missing_module_file_is_reported(sim: SimKernel, make_klpd: MakeKlpd) -> None:
    k = make_klpd(LPA).start()
    k.wait_state("converged")
    (sim.module_dir / "extra/lpa__klpd_target.ko").unlink()  # removed after the scan
    sim.modprobe("klpd_target")
    k.wait_state("degraded")
    assert "lpa__klpd_target not found in directory" in k.log()
    assert applied(sim) == MAIN


def test_cumulative_upgrade_never_leaves_object_unpatched(
    sim: SimKernel, make_klpd: MakeKlpd
) -> None:
    import threading

    sim.modprobe("ext4")
    k = make_klpd({"patches": {"pin": {"lpa": 1}, "exclude": ["lpb", "lpbad"]}}).start()
    k.wait_state("converged")
    assert applied(sim) == {"lpa__vmlinux", "lpa__ext4"}

    samples: list[bool] = []
    done = threading.Event()

    def covered() -> bool:
        for name in ("lpa__ext4", "lpa_v2__ext4"):
            d = sim.livepatch_dir / name
            try:
                if (d / "enabled").read_text().strip() == "1" and (
                    d / "ext4/patched"
                ).read_text().strip() == "1":
                    return True
            except FileNotFoundError:
                continue
        return False

    def sample() -> None:
        while not done.is_set():
            samples.append(covered())

    t = threading.Thread(target=sample)
    t.start()
    try:
        k.configure({"patches": {"pin": {}}})
        k.process.send_signal(1)  # SIGHUP: reload configuration
        wait_for(lambda: applied(sim) == {"lpa_v2__vmlinux", "lpa_v2__ext4"}, 60, "upgrade")
        k.wait_state("converged")
    finally:
        done.set()
        t.join()
    assert len(samples) > 100
    assert all(samples), f"ext4 unpatched in {samples.count(False)} of {len(samples)} samples"
    log = k.log()
    assert log.index("load lpa_v2__ext4") < log.index("disable lpa__ext4")
    assert log.index("disable lpa__ext4") < log.index("disable lpa__vmlinux")


def _foreign_spec() -> Spec:
    from klpd_sim.spec import _livepatch, demo_spec

    spec = demo_spec()
    mods = dict(spec.modules)
    # another tool's livepatch: not a split module, klpd leaves it alone
    mods["kpatch_foreign"] = _livepatch("vmlinux", "kpatch", 1, "", "cmdline_proc_show")
    return Spec(release=spec.release, modules=mods)


def test_ebusy_from_a_concurrent_transition_is_retried(tmp_path: Path) -> None:
    with SimKernel(transition_ms=400, spec=_foreign_spec()) as sim:
        sim.modprobe("ext4")
        # A task asleep in vmlinux holds every vmlinux transition until the test wakes it:
        # the other tool's transition is still running when klpd's modprobe comes, however
        # slowly a loaded machine spawns them (no race against the 400 ms of a transition).
        sim.stall("vmlinux", comm="sleeper")
        mark = tmp_path / "raced"
        wrapper = tmp_path / "modprobe-racing"
        cli = " ".join(sim.cli)
        # Another tool starts a transition right before klpd's first modprobe runs.
        wrapper.write_text(
            "#!/bin/sh\n"
            f"if [ ! -e {mark} ]; then touch {mark}; {cli} modprobe kpatch_foreign; fi\n"
            f'exec {cli} modprobe "$@"\n'
        )
        wrapper.chmod(0o755)
        k = KlpdProcess(sim, tmp_path, {**LPA, "kernel": {"modprobe": [str(wrapper)]}})
        try:
            k.start()
            wait_for(lambda: ": busy, retry 1 in" in k.log(), 60, "klpd's EBUSY retry")
            sim.unstall("vmlinux")
            k.wait_state("converged", 60)
            assert applied(sim) == {"kpatch_foreign", "lpa__vmlinux", "lpa__ext4"}
        finally:
            k.close()


STALL = {"transition": {"stall_timeout": 0.5, "revert_timeout": 10.0}}


def _stalled_setup(sim: SimKernel, make_klpd: MakeKlpd, policy: str) -> tuple[KlpdProcess, int]:
    sim.modprobe("ext4")
    pid = sim.stall("ext4", comm="sleepy-writer")
    k = make_klpd({**LPA, **merge_transition(policy)}).start()
    return k, pid


def merge_transition(policy: str) -> dict[str, dict[str, Any]]:
    return {"transition": {**STALL["transition"], "on_stall": policy}}


def test_stalled_transition_revert_policy(sim: SimKernel, make_klpd: MakeKlpd) -> None:
    k, pid = _stalled_setup(sim, make_klpd, "revert")
    k.wait_state("degraded")
    log = k.log()
    assert "transition of lpa__ext4 stalled for" in log and f"sleepy-writer[{pid}]" in log
    assert "reverting stalled transition of lpa__ext4" in log
    assert applied(sim) == MAIN and "lpa__ext4" not in loaded(sim)
    # the task wakes up; an operator's reload tries again and succeeds
    sim.unstall("ext4")
    k.process.send_signal(1)
    try:
        wait_for(lambda: "lpa__ext4" in applied(sim), 30, "lpa__ext4 applied after unstall")
    except TimeoutError:
        raise AssertionError(k.log()[-5000:]) from None
    k.wait_state("converged")


def test_stalled_transition_wait_policy(sim: SimKernel, make_klpd: MakeKlpd) -> None:
    k, pid = _stalled_setup(sim, make_klpd, "wait")
    k.wait_message(lambda m: "lpa__ext4 -> patched (stalled)" in m)
    assert k.metric_state() == "converging"
    assert f"sleepy-writer[{pid}]" in k.log()
    sim.unstall("ext4")
    k.wait_state("converged")
    assert applied(sim) == {"lpa__vmlinux", "lpa__ext4"}


def test_stalled_transition_force_policy(sim: SimKernel, make_klpd: MakeKlpd) -> None:
    k, _ = _stalled_setup(sim, make_klpd, "force")
    k.wait_state("converged")
    assert applied(sim) == {"lpa__vmlinux", "lpa__ext4"}
    assert (sim.livepatch_dir / "lpa__ext4/force").exists()
    assert "forcing transition of lpa__ext4" in k.log()
    # klp_force_transition() marks a patch forced (unremovable) only when forcing an
    # *unpatching* transition (or, for a replace patch, the patches it replaces).
    assert sim.status()["livepatches"]["lpa__ext4"]["transition"] is False


UPGRADE_FINAL = {"lpa_v2__vmlinux", "lpa_v2__ext4", "lpb__vmlinux", "lpb__ext4"}


def _killing_wrapper(
    tmp_path: Path, sim: SimKernel, tool: str, counter: Path, kill_at: int
) -> Path:
    """A modprobe/rmmod that SIGKILLs klpd (its parent) right after call number ``kill_at``,
    while the transition that call started is still running."""
    w = tmp_path / f"{tool}-killer"
    cli = " ".join(sim.cli)
    w.write_text(
        "#!/bin/sh\n"
        f'{cli} {tool} "$@"; rc=$?\n'
        f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}\n"
        f"if [ $n -eq {kill_at} ]; then kill -9 $PPID; fi\n"
        "exit $rc\n"
    )
    w.chmod(0o755)
    return w


def test_killed_after_each_step_converges_on_restart(
    sim: SimKernel, make_klpd: MakeKlpd, tmp_path: Path
) -> None:
    """Upgrade lpa v1 -> v2 next to lpb: 4 loads, 2 disables, 2 unloads. SIGKILL klpd
    after each modprobe/rmmod call in turn; a plain restart must converge every time."""
    sim.modprobe("ext4")
    base: dict[str, dict[str, Any]] = {
        "patches": {"exclude": ["lpbad"]},
        "transition": {"poll_interval": 0.02},
    }
    k = make_klpd({"patches": {"pin": {"lpa": 1}, "exclude": ["lpbad"]}}).start()
    k.wait_state("converged")
    k.stop()
    start = {"lpa__vmlinux", "lpa__ext4", "lpb__vmlinux", "lpb__ext4"}
    assert applied(sim) == start
    kills = 0
    for step in range(1, 7):
        counter = tmp_path / f"count-{step}"
        mp = _killing_wrapper(tmp_path, sim, "modprobe", counter, step)
        rm = _killing_wrapper(tmp_path, sim, "rmmod", counter, step)
        # back to the v1 state, then the upgrade, killed at call number `step`
        k.configure(
            {
                "patches": {"pin": {"lpa": 1}, "exclude": ["lpbad"]},
                "kernel": sim.config_overrides()["kernel"],
            }
        )
        k.start()
        k.wait_state("converged", 60)
        assert applied(sim) == start, k.log()[-4000:]
        k.stop()
        k.configure(
            {
                **base,
                "patches": {"pin": {}, "exclude": ["lpbad"]},
                "kernel": {"modprobe": [str(mp)], "rmmod": [str(rm)]},
            }
        )
        k.start()
        wait_for(lambda: k.process.poll() is not None or k.metric_state() == "converged", 60)
        killed = k.process.poll() is not None
        kills += killed
        if killed:
            k.proc = None
        else:
            k.stop()
        # restart with the real tools: converges from whatever was left
        k.configure({"kernel": sim.config_overrides()["kernel"]})
        k.start()
        k.wait_state("converged", 60)
        assert applied(sim) == UPGRADE_FINAL, f"step {step}"
        assert loaded(sim) & {"lpa__vmlinux", "lpa__ext4"} == set(), f"step {step}"
        k.stop()
    assert kills >= 4, f"only {kills} runs were killed mid-plan"


def test_burst_of_1000_events_with_tiny_buffer_converges(
    sim: SimKernel, make_klpd: MakeKlpd
) -> None:
    from klpd_sim.uevent import send_module_uevent

    k = make_klpd({**LPA, "events": {"receive_buffer": 4096}}).start()
    k.wait_state("converged")
    k.process.send_signal(19)  # SIGSTOP: the daemon cannot read while the burst arrives
    try:
        for i in range(1000):
            send_module_uevent("add" if i % 2 else "remove", f"klpd_noise_{i % 7}", 50_000 + i)
        sim.modprobe("ext4")  # the one event that matters is lost in the overflow
    finally:
        k.process.send_signal(18)  # SIGCONT
    wait_for(lambda: "lpa__ext4" in applied(sim), 60, "lpa__ext4 after the burst")
    k.wait_state("converged")
    assert "resync" in k.log() and "ENOBUFS" in k.log()


def test_softdep_prearming_follows_the_selection(sim: SimKernel, make_klpd: MakeKlpd) -> None:
    k = make_klpd({"patches": {"desired": ["lpa"]}, "softdep": {"enabled": True}}).start()
    k.wait_state("converged")
    text = sim.softdep_file.read_text()
    assert "softdep ext4 pre: lpa__ext4" in text
    assert "lpb__ext4" not in text
    # the sim's modprobe honours softdeps like kmod: ext4 comes up already patched
    sim.modprobe("ext4")
    assert "lpa__ext4" in loaded(sim)
    assert (sim.livepatch_dir / "lpa__ext4/ext4/patched").read_text().strip() == "1"
    k.wait_state("converged")
    k.configure({"patches": {"desired": ["lpa", "lpb"]}})
    k.process.send_signal(1)
    wait_for(lambda: "lpb__ext4" in sim.softdep_file.read_text(), 30, "softdep for lpb")
    k.configure({"softdep": {"enabled": False}})
    k.process.send_signal(1)
    wait_for(lambda: not sim.softdep_file.exists(), 30, "softdep file removed")


def test_module_built_for_another_kernel_is_never_tried(
    sim: SimKernel, make_klpd: MakeKlpd
) -> None:
    from klpd_sim.kofile import write_ko

    ko = sim.module_dir / "extra/lpa__klpd_target.ko"
    write_ko(
        ko,
        {
            "livepatch": "Y",
            "vermagic": "6.0.0-other SMP mod_unload ",
            "klpd_series": "lpa",
            "klpd_version": "1",
        },
    )
    sim.modprobe("klpd_target")
    k = make_klpd(LPA).start()
    k.wait_state("degraded")
    assert applied(sim) == MAIN
    assert "built for 6.0.0-other, the running kernel is 6.1.0-sim" in k.log()
    assert "modprobe -- lpa__klpd_target" not in k.log()


def test_kernel_command_line_kill_switch(sim: SimKernel, make_klpd: MakeKlpd) -> None:
    (sim.proc_root / "cmdline").write_text("BOOT_IMAGE=/vmlinuz root=/dev/vda1 klpd.enable=0\n")
    k = make_klpd(LPA).start(wait_ready=False)
    assert k.proc is not None and k.process.wait(30) == 0
    assert "klpd.enable=0 on the kernel command line" in k.log()
    assert applied(sim) == set()


def test_forced_unpatching_pins_the_module_and_is_reported(
    sim: SimKernel, make_klpd: MakeKlpd
) -> None:
    sim.modprobe("ext4")
    k = make_klpd({**LPA, **merge_transition("force")}).start()
    k.wait_state("converged")
    sim.stall("ext4", comm="sleepy-writer")  # now sleeping in the *patched* function
    k.configure({"patches": {"desired": [], "exclude": ["lpa", "lpa_v2", "lpb", "lpbad"]}})
    k.process.send_signal(1)
    k.wait_state("degraded", 60)
    # the unpatching was forced: lpa__ext4 is gone from sysfs but can never be unloaded
    assert "lpa__ext4" in loaded(sim) and not (sim.livepatch_dir / "lpa__ext4").exists()
    assert "lpa__vmlinux" not in loaded(sim)
    assert "lpa__ext4: disabled but still referenced: forced" in k.log()


def test_undeclared_replace_patch_is_named_refused_and_wiped_patches_restored(
    sim: SimKernel, make_klpd: MakeKlpd
) -> None:
    # a vendor's cumulative replace module: nothing in its modinfo says "replace"
    sim.install(
        "lpvendor__vmlinux",
        {
            "livepatch": "Y",
            "klpd_sim_object": "vmlinux",
            "klpd_sim_funcs": "cmdline_proc_show",
            "klpd_sim_replace": "Y",
        },
    )
    sim.modprobe("ext4")
    k = make_klpd({"patches": {"desired": ["lpa"]}}).start()
    k.wait_state("converged")
    sim.modprobe("lpvendor__vmlinux")  # behind klpd's back
    wait_for(lambda: "refusing atomic-replace patch lpvendor" in k.log(), 60, "refusal")
    wait_for(lambda: "lpvendor__vmlinux" not in loaded(sim), 60, "lpvendor removed")
    k.wait_state("converged")  # restored: the patch shows "refused", last_error says why
    assert applied(sim) == {"lpa__vmlinux", "lpa__ext4"}
    assert "lpvendor__vmlinux" not in loaded(sim)
    assert "were replaced by an atomic-replace patch (lpvendor__vmlinux)" in k.log()


def test_ready_only_once_the_first_reconcile_applied_the_patches(
    sim: SimKernel, make_klpd: MakeKlpd
) -> None:
    """In the Debian 13 guest READY=1 came at once and network-pre.target passed ~90 s
    before the patches were applied: READY=1 now waits for the first reconcile."""
    sim.modprobe("ext4")
    sim.modprobe("klpd_target")
    k = make_klpd({**LPA, "policy": {"ready_timeout": 60.0}}).start()  # returns at READY=1
    assert applied(sim) == {"lpa__vmlinux", "lpa__ext4", "lpa__klpd_target"}
    ready = next(m for m in k.drain() if "READY=1" in m.splitlines())
    assert "STATUS=converged" in ready


def test_ready_after_ready_timeout_when_the_first_reconcile_cannot_settle(
    sim: SimKernel, make_klpd: MakeKlpd
) -> None:
    sim.modprobe("ext4")
    sim.stall("ext4", comm="sleepy-writer")
    overrides: dict[str, dict[str, Any]] = {
        **LPA,
        "policy": {"ready_timeout": 3.0},
        "transition": {"poll_interval": 0.02, "stall_timeout": 60.0, "on_stall": "wait"},
    }
    k = make_klpd(overrides).start()  # a stalled lpa__ext4 must not hold READY=1 forever
    ready = next(m for m in k.drain() if "READY=1" in m.splitlines())
    assert "STATUS=converging" in ready
    assert (sim.livepatch_dir / "lpa__ext4/transition").read_text().strip() == "1"
