"""A hostile catalog next to a good patch, end to end in-process: the real orchestrator
scans it, lists every bad file in the catalog's problems with a message, and applies the
good patch all the same (the soak's invariants hold at the quiescent point)."""

from __future__ import annotations

import os
from pathlib import Path

from klpd_sim.kofile import compress, elf_relocatable, modinfo_bytes
from soakspec import catalog_dir
from soakworld import Figures, World, run_steps


def hostile(d: Path) -> list[Path]:
    """One file per way a module file can be bad; the paths the catalog must name."""
    good = elf_relocatable(modinfo_bytes("lpx__vmlinux", {"livepatch": "Y"}))
    files = {
        "lpt__vmlinux.ko": good[:100],  # truncated ELF
        "lpx__vmlinux.ko.xz": b"\xfd7zXZ\x00" + os.urandom(64),  # corrupt xz
        "lpz__vmlinux.ko.zst": compress(good, "zst")[:20],  # truncated zstd
        "lpg__vmlinux.ko.gz": compress(good, "gz")[:30],  # truncated gzip
        "lpe__vmlinux.ko": b"",  # zero bytes
        "lpn__vmlinux.ko": b"#!/bin/sh\necho not an ELF\n",  # not ELF, a __ name
        ("l" * 50 + "__vmlinux.ko"): good,  # a 59-byte module name (at most 55)
    }
    out = []
    for name, data in files.items():
        (d / name).write_bytes(data)
        out.append(d / name)
    (d / "lpl__vmlinux.ko").symlink_to("lpl__vmlinux.ko")  # a symlink loop
    (d / "lpd__vmlinux.ko").symlink_to("gone/lpd__vmlinux.ko")  # dangling (unreadable)
    # a FIFO: opening it to read would block forever; the scan passes it by (not a file)
    os.mkfifo(d / "lpf__vmlinux.ko")
    return [*out, d / "lpl__vmlinux.ko", d / "lpd__vmlinux.ko"]


async def test_hostile_files_are_problems_and_the_rest_applies(tmp_path: Path) -> None:
    fig = Figures()
    await run_steps(tmp_path / "clock", [], fig)  # installs the virtual clock
    world = World(tmp_path / "world", fig)
    await world.step(("config", "keep", "revert"))
    await world.step(("load", "ext4"))
    await world.step(("install", "lpa"))
    bad = hostile(catalog_dir(world.moddir))
    await world.step(("reload",))
    await world.quiesce()  # every invariant: lpa applied on vmlinux and ext4
    assert world.orch is not None
    assert {"lpa__vmlinux", "lpa__ext4"} <= set(world.kernel.patches)
    problems = {p.path: p.message for p in world.orch.catalog.problems}
    missing = [str(p) for p in bad if str(p) not in problems]
    assert not missing, (missing, problems)
    for path, message in problems.items():
        assert message and "Traceback" not in message, (path, message)
    assert set(world.orch.catalog.patches) == {"lpa"}
    await world.stop()
