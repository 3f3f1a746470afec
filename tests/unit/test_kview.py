"""KernelView: an incremental refresh reads the same state as a full read, after any
sequence of the changes a kernel makes (and the writes klpd says it made)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from klpd.kernel import kstate
from klpd.kernel.kview import KernelView

TARGETS = ["ext4", "xfs", "t1"]
PATCHES = ["lpa", "lpb"]
MODULES = TARGETS + [f"{p}__{o}" for p in PATCHES for o in ["vmlinux", *TARGETS]]


@dataclass
class Tree:
    """A sysfs tree changed the way the kernel changes it; ``touched`` is what klpd itself
    wrote (the only value changes not visible in a directory listing or a moving state);
    ``uevents`` the modules that came or went, in order, as udev tells them (later)."""

    sys: Path
    touched: set[str] = field(default_factory=set)
    uevents: list[str] = field(default_factory=list)

    def w(self, rel: str, text: str) -> None:
        p = self.sys / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text + "\n")

    def module_dir(self, m: str) -> Path:
        return self.sys / "module" / m

    def lp_dir(self, m: str) -> Path:
        return self.sys / "kernel/livepatch" / m

    def load(self, m: str, live: bool) -> None:
        if self.module_dir(m).exists():
            return
        self.uevents.append(m)
        self.w(f"module/{m}/initstate", "live" if live else "coming")
        self.w(f"module/{m}/refcnt", "0")
        if "__" in m:
            obj = m.split("__", 1)[1]
            self.w(f"module/{m}/refcnt", "1")
            self.w(f"kernel/livepatch/{m}/enabled", "1")
            self.w(f"kernel/livepatch/{m}/transition", "1")
            present = obj == "vmlinux" or self.module_dir(obj).exists()
            self.w(f"kernel/livepatch/{m}/{obj}/patched", str(int(present)))
            (self.lp_dir(m) / obj / f"{obj}_fix,1").mkdir()

    def unload(self, m: str) -> None:
        if self.lp_dir(m).exists() or not self.module_dir(m).exists():
            return  # still a livepatch: the kernel refuses
        self.uevents.append(m)
        shutil.rmtree(self.module_dir(m))
        for lp in (self.sys / "kernel/livepatch").iterdir():
            patched = lp / m / "patched"
            if patched.exists():
                patched.write_text("0\n")

    def live(self, m: str) -> None:
        if self.module_dir(m).exists():
            (self.module_dir(m) / "initstate").write_text("live\n")
            for lp in (self.sys / "kernel/livepatch").iterdir():
                if (lp / m / "patched").exists():
                    (lp / m / "patched").write_text("1\n")

    def transition_ends(self, m: str) -> None:
        if (self.lp_dir(m) / "transition").exists():
            (self.lp_dir(m) / "transition").write_text("0\n")

    def disable(self, m: str) -> None:  # klpd writes enabled=0: it touches the module
        if (self.lp_dir(m) / "enabled").exists():
            (self.lp_dir(m) / "enabled").write_text("0\n")
            (self.lp_dir(m) / "transition").write_text("1\n")
            self.touched.add(m)

    def freed(self, m: str) -> None:  # the transition of a disabled patch ended
        d = self.lp_dir(m)
        if (d / "enabled").exists() and (d / "enabled").read_text().strip() == "0":
            shutil.rmtree(d)

    def put(self, m: str) -> None:  # the reference drops after the directory went
        if not self.lp_dir(m).exists() and self.module_dir(m).exists():
            (self.module_dir(m) / "refcnt").write_text("0\n")

    def wipe(self, m: str) -> None:  # an atomic-replace patch m wiped every other one
        if not self.lp_dir(m).exists():
            return
        for lp in list((self.sys / "kernel/livepatch").iterdir()):
            if lp.name != m:
                shutil.rmtree(lp)


OPS = ["load", "load_coming", "unload", "live", "transition_ends", "disable", "freed", "put"]
OPS.append("wipe")


def apply(tree: Tree, op: str, m: str) -> None:
    if op == "load":
        tree.load(m, True)
    elif op == "load_coming":
        tree.load(m, False)
    else:
        getattr(tree, op)(m)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.sampled_from(OPS), st.sampled_from(MODULES)), max_size=4),
        max_size=12,
    ),
    st.data(),
)
def test_refresh_reads_what_a_full_read_reads(
    tmp_path_factory: pytest.TempPathFactory,
    rounds: list[list[tuple[str, str]]],
    data: st.DataObject,
) -> None:
    """After every refresh once udev told every module that came or went (the orchestrator
    touches them); udev may tell late: then a refresh may miss a module that came while
    another went, never more, and the next refresh after udev told is right again."""
    sys = tmp_path_factory.mktemp("sys")
    (sys / "module/builtin_thing/parameters").mkdir(parents=True)
    (sys / "kernel/livepatch").mkdir(parents=True)
    tree = Tree(sys)
    view = KernelView(sys, "6.1.0-test")
    last = view.full()
    tree.uevents.clear()
    for ops in [*rounds, []]:
        for op, m in ops:
            apply(tree, op, m)
        told = data.draw(st.integers(0, len(tree.uevents))) if ops else len(tree.uevents)
        view.touch(tree.touched | set(tree.uevents[:told]))
        tree.touched.clear()
        del tree.uevents[:told]
        got = view.refresh()
        reread = got.reread_since(last)  # what it says it read again; the rest is as it was
        assert reread is not None
        for name in {*got.modules, *last.modules} - reread:
            assert got.modules.get(name) is last.modules.get(name), name
        for name in {*got.livepatches, *last.livepatches} - reread:
            assert got.livepatches.get(name) is last.livepatches.get(name), name
        last = got
        if tree.uevents:
            continue  # udev has not told everything yet
        want = kstate.read_kernel_state(sys, sys, "6.1.0-test")
        assert dict(got.modules) == dict(want.modules), ops
        assert dict(got.livepatches) == dict(want.livepatches), ops


def test_a_module_udev_did_not_tell_yet_is_read_when_the_count_says_so(tmp_path: Path) -> None:
    """A dependency modprobe pulled in, a patch an atomic-replace patch wiped: nothing
    touched them, the link counts show them."""
    tree = Tree(tmp_path)
    (tmp_path / "kernel/livepatch").mkdir(parents=True)
    for m in ["ext4", "lpa__vmlinux", "lpb__vmlinux"]:
        tree.load(m, True)
        tree.transition_ends(m)
    view = KernelView(tmp_path, "6.1.0-test")
    view.full()
    before = view.reads
    view.refresh()
    assert view.reads == before  # nothing moved, nothing touched: nothing read, not listed
    tree.load("xfs", True)  # its uevent is not here yet
    assert "xfs" in view.refresh().modules
    tree.wipe("lpb__vmlinux")
    assert sorted(view.refresh().livepatches) == ["lpb__vmlinux"]


def test_refresh_reads_only_what_can_have_changed(tmp_path: Path) -> None:
    tree = Tree(tmp_path)
    (tmp_path / "kernel/livepatch").mkdir(parents=True)
    for t in TARGETS:
        tree.load(t, True)
    for m in MODULES[len(TARGETS) :]:
        tree.load(m, True)
        tree.transition_ends(m)
    view = KernelView(tmp_path, "6.1.0-test")
    view.full()
    before = view.reads
    view.refresh()
    assert view.reads == before  # nothing moved: nothing read but the two listings
    tree.disable("lpa__ext4")
    view.touch(tree.touched)
    view.refresh()
    assert view.reads == before + 2  # the one patch klpd wrote to: its module and livepatch
    tree.unload("xfs")
    before = view.reads
    st_ = view.refresh()
    # xfs went (its dir is gone: nothing to read), the two livepatches with an xfs object,
    # and lpa__ext4 still in transition
    assert view.reads == before + 3
    assert st_.livepatches["lpa__xfs"].objects["xfs"].patched is False


def test_a_freed_patch_module_is_read_until_its_reference_drops(tmp_path: Path) -> None:
    """Its livepatch directory goes first, its module's reference after: nothing else
    moves meanwhile, and no listing or link count changes when the reference drops."""
    tree = Tree(tmp_path)
    (tmp_path / "kernel/livepatch").mkdir(parents=True)
    tree.load("lpa__vmlinux", True)
    tree.transition_ends("lpa__vmlinux")
    view = KernelView(tmp_path, "6.1.0-test")
    view.full()
    tree.disable("lpa__vmlinux")
    view.touch(tree.touched)
    view.refresh()
    tree.freed("lpa__vmlinux")
    assert view.refresh().modules["lpa__vmlinux"].refcnt == 1
    tree.put("lpa__vmlinux")
    assert view.refresh().modules["lpa__vmlinux"].refcnt == 0
