"""The sysfs/procfs reader on directory trees laid out like 6.1 (and 6.11+/6.14+) kernels."""

from __future__ import annotations

from pathlib import Path

from klpd.kernel import kstate


def write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_reads_only_what_exists(tmp_path: Path) -> None:
    sys = tmp_path / "sys"
    write(sys, "module/ext4/initstate", "live\n")
    write(sys, "module/ext4/refcnt", "2\n")
    (sys / "module/builtin_thing/parameters").mkdir(parents=True)  # built-in: no initstate
    write(sys, "kernel/livepatch/lpa__ext4/enabled", "1\n")
    write(sys, "kernel/livepatch/lpa__ext4/transition", "0\n")
    write(sys, "kernel/livepatch/lpa__ext4/ext4/patched", "1\n")
    (sys / "kernel/livepatch/lpa__ext4/ext4/ext4_llseek,1").mkdir()
    # a 6.14 kernel's extra attributes
    write(sys, "kernel/livepatch/lpb__vmlinux/enabled", "1\n")
    write(sys, "kernel/livepatch/lpb__vmlinux/transition", "1\n")
    write(sys, "kernel/livepatch/lpb__vmlinux/replace", "0\n")
    write(sys, "kernel/livepatch/lpb__vmlinux/stack_order", "2\n")
    write(tmp_path, "proc/sys/kernel/osrelease", "6.1.0-test\n")
    st = kstate.read_kernel_state(sys, tmp_path / "proc")
    assert st.release == "6.1.0-test"
    assert set(st.modules) == {"ext4"} and st.modules["ext4"].refcnt == 2
    a = st.livepatches["lpa__ext4"]
    assert a.enabled and not a.transition and a.replace is None and a.stack_order is None
    assert a.objects["ext4"].patched is True
    assert a.objects["ext4"].functions == ("ext4_llseek,1",)
    b = st.livepatches["lpb__vmlinux"]
    assert b.replace is False and b.stack_order == 2
    assert st.transition is b


def test_vanishing_patch_is_tolerated(tmp_path: Path) -> None:
    (tmp_path / "kernel/livepatch/gone").mkdir(parents=True)  # dir without attributes
    assert kstate.read_livepatches(tmp_path) == {}
    assert kstate.read_livepatch(tmp_path, "absent") is None


def test_blocking_tasks_are_read_per_thread(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    write(proc, "100/task/100/patch_state", "1\n")  # leader already switched
    write(proc, "100/task/100/comm", "worker\n")
    write(proc, "100/task/101/patch_state", "0\n")  # a thread still in the old code
    write(proc, "100/task/101/comm", "worker-io\n")
    write(proc, "100/task/101/stack", "[<0>] klpd_target_sleep+0x1/0x2\n")
    write(proc, "200/task/200/patch_state", "-1\n")  # no transition for it
    write(proc, "300/patch_state", "0\n")  # a tree without task/ (the simulated kernel)
    write(proc, "300/comm", "sleepy\n")
    tasks = kstate.blocking_tasks(proc, target_patched=True)
    assert [(t.pid, t.comm, t.patch_state) for t in tasks] == [
        (101, "worker-io", 0),
        (300, "sleepy", 0),
    ]
    assert tasks[0].stack == "[<0>] klpd_target_sleep+0x1/0x2"
    assert kstate.blocking_tasks(proc, target_patched=False)[0].pid == 100


def test_write_attr_refuses_other_attributes(tmp_path: Path) -> None:
    import pytest

    with pytest.raises(ValueError):
        kstate.write_attr(tmp_path, "lpa__ext4", "transition", "0")
