#!/usr/bin/env python3
"""The kernel lines the real-kernel suite runs on, each Debian release's own kernel.

For each line: a `mmdebstrap --variant=buildd` chroot of the release with its
linux-headers-amd64 (scripts/debian-chroot.sh, cached as build/realkernel/chroots/<line>.tar),
whose customize hook (chroot-hook.sh) downloads the matching linux-image package from the
release's archive; the image is extracted with dpkg-deb into
build/realkernel/kernels/<kernel-release>/, and the test modules are built in the chroot by the
release's own compiler into build/realkernel/modules/<kernel-release>/ (the layout other tests
iterate over). Everything is cached under build/ and rebuilt when missing or when its inputs
changed; nothing depends on the cache. A line whose chroot or image cannot be had raises
HarnessError: the suite fails, it never skips a line.

Standard library only; usable as a script:
    python3 tests/realkernel/lines.py [LINE...]     # prepare (default: every line)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BUILD_DIR = REPO / "build" / "realkernel"
MODULE_SOURCES = HERE / "modules"
CHROOT_SCRIPT = REPO / "scripts" / "debian-chroot.sh"
CHROOT_HOOK = HERE / "chroot-hook.sh"


class HarnessError(RuntimeError):
    """A kernel line could not be prepared or booted."""


@dataclass(frozen=True)
class Line:
    """One kernel line: where Debian ships it and how its guest runs under TCG."""

    name: str  # "5.10", "6.1", "6.12", "7.x"
    suite: str  # the Debian suite whose linux-headers-amd64 / linux-image pick the kernel
    headers: str = "linux-headers-amd64"
    # qemu's accelerator and vCPUs. Multi-threaded TCG (one host thread per vCPU) and the
    # kernel's int3-based text patching oopsed on 6.12 and 7.3 (docs/realkernel.md): every
    # line runs two vCPUs on one host thread.
    accel: str = "tcg,thread=single"
    smp: int = 2

    @property
    def chroot_tar(self) -> Path:
        return BUILD_DIR / "chroots" / f"{self.name}.tar"


LINES: tuple[Line, ...] = (
    Line("5.10", "bullseye"),
    Line("6.1", "bookworm"),
    Line("6.12", "trixie"),
    Line("7.x", "trixie-backports", headers="linux-headers-amd64/trixie-backports"),
)
BY_NAME = {line.name: line for line in LINES}


@dataclass(frozen=True)
class Build:
    """A prepared line: its kernel, the kernel's modules and the built test modules."""

    line: Line
    kver: str
    kernel: Path  # vmlinuz
    moddir: Path  # the image's lib/modules/<kver> (kernel/, modules.builtin, modules.order)
    ko_dir: Path  # build/realkernel/modules/<kver>/*.ko


def _run(argv: list[str], what: str) -> str:
    proc = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env={**os.environ, "LANG": "C.UTF-8"},
        check=False,
    )
    if proc.returncode != 0:
        raise HarnessError(f"{what} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc.stdout


def ensure_chroot(line: Line) -> Path:
    """The line's build chroot tarball (built when missing: about a minute)."""
    _run(
        [
            "sh",
            str(CHROOT_SCRIPT),
            line.suite,
            str(line.chroot_tar),
            line.headers,
            "--",
            f"--customize-hook={CHROOT_HOOK}",
        ],
        f"chroot of {line.name} ({line.suite})",
    )
    return line.chroot_tar


def _tar_extract(tar: Path, dest: Path, *members: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    _run(["tar", "-xf", str(tar), "-C", str(dest), "--numeric-owner", *members], f"tar {tar}")


def _find_moddir(root: Path, kver: str) -> Path:
    for cand in (root / "lib" / "modules" / kver, root / "usr" / "lib" / "modules" / kver):
        if (cand / "kernel").is_dir():
            return cand
    raise HarnessError(f"no lib/modules/{kver}/kernel in the image extracted to {root}")


def ensure_kernel(line: Line, tar: Path) -> tuple[str, Path, Path]:
    """(kernel release, vmlinuz, lib/modules/<kver>) extracted from the image packages the
    chroot hook downloaded (linux-image-<kver>, and linux-binary/linux-modules where the
    image is split into them)."""
    with tempfile.TemporaryDirectory(prefix="klpd-line-", dir=BUILD_DIR) as tmp:
        _tar_extract(tar, Path(tmp), "./klpd")
        kver = (Path(tmp) / "klpd" / "kernel-release").read_text().strip()
        debs = sorted((Path(tmp) / "klpd").glob("linux-*.deb"))
        if not debs:
            raise HarnessError(f"{line.name}: the chroot holds no linux-image package")
        names = " ".join(d.name for d in debs)
        dest = BUILD_DIR / "kernels" / kver
        stamp = dest / ".from"
        if not (stamp.exists() and stamp.read_text() == names):
            if dest.exists():
                shutil.rmtree(dest)
            dest.mkdir(parents=True)
            for deb in debs:
                _run(["dpkg-deb", "-x", str(deb), str(dest)], f"dpkg-deb -x {deb.name}")
            stamp.write_text(names)
    moddir = _find_moddir(dest, kver)
    if not (moddir / "modules.builtin").exists():
        # Split images (7.x) leave modules.builtin* to the headers' side: the chroot has them.
        with tempfile.TemporaryDirectory(prefix="klpd-line-", dir=BUILD_DIR) as tmp:
            _tar_extract(tar, Path(tmp), "--wildcards", f"*lib/modules/{kver}/modules.*")
            for f in Path(tmp).rglob(f"modules/{kver}/modules.*"):
                shutil.copy2(f, moddir / f.name)
        if not (moddir / "modules.builtin").exists():
            raise HarnessError(f"{line.name}: no modules.builtin for {kver}")
    # boot/vmlinuz-<kver>, or (split images, 7.x) lib/modules/<kver>/vmlinuz
    for vmlinuz in (dest / "boot" / f"vmlinuz-{kver}", moddir / "vmlinuz"):
        if vmlinuz.exists():
            return kver, vmlinuz, moddir
    raise HarnessError(f"{line.name}: {names} hold no vmlinuz for {kver}")


def _sources_digest(tar: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(MODULE_SOURCES.iterdir()):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    h.update(tar.with_name(tar.name + ".args").read_bytes())
    return h.hexdigest()


def ensure_modules(line: Line, tar: Path, kver: str) -> Path:
    """The test modules built in the line's chroot by its own compiler."""
    ko_dir = BUILD_DIR / "modules" / kver
    stamp = ko_dir / ".sources"
    digest = _sources_digest(tar)
    if stamp.exists() and stamp.read_text() == digest and any(ko_dir.glob("*.ko")):
        return ko_dir
    root = BUILD_DIR / "chroot-root" / line.name
    proc_dir = root / "proc"
    if os.path.ismount(proc_dir):  # an earlier build killed mid-way, or one running now
        raise HarnessError(f"{proc_dir} is mounted: another build of {line.name} is running?")
    if root.exists():
        shutil.rmtree(root)
    _tar_extract(tar, root)
    src = root / "klpd" / "src"
    shutil.copytree(MODULE_SOURCES, src)
    _run(["mount", "-t", "proc", "proc", str(proc_dir)], "mount /proc in the chroot")
    try:
        _run(
            [
                "chroot",
                str(root),
                "make",
                "-s",
                "-C",
                f"/lib/modules/{kver}/build",
                "M=/klpd/src",
                "modules",
            ],
            f"{line.name}: building the test modules",
        )
    finally:
        subprocess.run(["umount", str(proc_dir)], check=False)
    if ko_dir.exists():
        shutil.rmtree(ko_dir)
    ko_dir.mkdir(parents=True)
    for ko in sorted(src.glob("*.ko")):
        shutil.copy2(ko, ko_dir / ko.name)
    if not any(ko_dir.glob("*.ko")):
        raise HarnessError(f"{line.name}: the build left no .ko")
    stamp.write_text(digest)
    shutil.rmtree(root)
    return ko_dir


def prepare(line: Line) -> Build:
    """Chroot, kernel image and test modules of one line (each cached under build/)."""
    tar = ensure_chroot(line)
    kver, vmlinuz, moddir = ensure_kernel(line, tar)
    ko_dir = ensure_modules(line, tar, kver)
    return Build(line=line, kver=kver, kernel=vmlinuz, moddir=moddir, ko_dir=ko_dir)


# Builds started ahead of need (tests/conftest.py starts them when the session has collected
# real-kernel tests, so that they overlap the tests before them), two at a time; every user
# of a line's build waits on the same one. A failed build fails each of its users.
_BUILDS: dict[str, Future[Build]] = {}
_BUILDS_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None


def prepare_soon(line: Line) -> Future[Build]:
    """The line's build, started on the shared pool unless it was already."""
    global _POOL
    with _BUILDS_LOCK:
        if line.name not in _BUILDS:
            if _POOL is None:
                _POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="line-build")
            _BUILDS[line.name] = _POOL.submit(prepare, line)
        return _BUILDS[line.name]


def prepared(line: Line) -> Build:
    """The line's build, waiting for the shared one (started now if it was not)."""
    return prepare_soon(line).result()


def main(argv: list[str]) -> int:
    names = argv or [line.name for line in LINES]
    for name in names:
        if name not in BY_NAME:
            print(f"lines.py: unknown line {name!r} (known: {', '.join(BY_NAME)})", file=sys.stderr)
            return 2
        try:
            b = prepare(BY_NAME[name])
        except HarnessError as e:
            print(f"lines.py: {name}: {e}", file=sys.stderr)
            return 1
        print(f"{name} {b.kver} {b.kernel} {b.ko_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
