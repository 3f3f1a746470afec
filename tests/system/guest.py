"""A Debian 13 guest that runs klpd the way a host does, and reads back what happened.

- the package: ``scripts/build-deb.sh`` (``make deb``) in a trixie chroot;
- the root: ``mmdebstrap --variant=minbase`` of trixie with systemd, dbus, polkitd, udev,
  kmod, Debian's kernel and klpd's dependencies from Debian (``guest-packages.txt``; cached
  under build/roots/), then ``apt-get install ./klpd_*.deb`` inside it;
- the test modules: ``build-modules.sh``, trixie's gcc against that kernel's headers;
- the disk: ``mkfs.ext4 -d`` of the root; the guest boots its own kernel and initrd under
  qemu (TCG, ``thread=single``: see DOMAIN.md on int3 oopses) with systemd as PID 1;
  ``guest/klpd-test.service`` runs ``guest/scenario.sh`` after multi-user.target and
  reboots or powers off; ``debugfs`` reads the results back without mounting the image.

Two qemu runs, three boots: stages 1 and 2 (a reboot inside the guest), then stage 3 with
``klpd.enable=0`` on the kernel command line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from guestslots import guest_slot

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BUILD = REPO / "build" / "system"
GUEST_TAR = REPO / "build" / "roots" / "trixie-guest.tar"
# Installed into the guest's catalog: two patches for vmlinux and klpd_target, and lpstall,
# which stalls on a task sleeping in klpd_target_sleep().
GUEST_MODULES = (
    "klpd_target",
    "lpa__vmlinux",
    "lpa__klpd_target",
    "lpb__vmlinux",
    "lpb__klpd_target",
    "lpstall__vmlinux",
    "lpstall__klpd_target",
)
# two boots and the scenarios take ~6 min on an idle 2-core host, >15 min on a busy one
QEMU_TIMEOUT = 2700.0


class GuestError(RuntimeError):
    """The package, the image or a boot failed; the message says where to look."""


@dataclass(frozen=True)
class Image:
    disk: Path
    kernel: Path
    initrd: Path
    kver: str
    deb: Path
    apt_log: str


@dataclass(frozen=True)
class Boot:
    console: str
    seconds: float


def _run(argv: list[str], what: str) -> str:
    proc = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env={**os.environ, "LANG": "C.UTF-8"},
    )
    if proc.returncode != 0:
        raise GuestError(
            f"{what} failed ({proc.returncode}):\n{proc.stderr[-4000:]}{proc.stdout[-2000:]}"
        )
    return proc.stdout


def build_deb() -> Path:
    """``make deb``'s work: the package, built and lintian-checked in a trixie chroot."""
    out = _run([str(REPO / "scripts" / "build-deb.sh")], "scripts/build-deb.sh")
    return Path(out.strip().splitlines()[-1])


def guest_root_tarball() -> Path:
    packages = [
        line.strip()
        for line in (HERE / "guest-packages.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    argv = [str(REPO / "scripts/debian-root.sh"), str(GUEST_TAR), "trixie", "minbase", *packages]
    return Path(_run(argv, "scripts/debian-root.sh (guest)").strip().splitlines()[-1])


def _chroot(root: Path, script: str, what: str) -> str:
    """Run ``sh -c script`` in root with /proc mounted, in a private mount namespace."""
    outer = (
        'mount -t proc proc "$1/proc" && '
        'chroot "$1" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 '
        'DEBIAN_FRONTEND=noninteractive sh -eu -c "$2"'
    )
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-eu", "-c", outer]
    return _run([*argv, "sh", str(root), script], what)


def make_image(deb: Path) -> Image:
    """The guest's disk: the cached root, klpd installed by apt, test modules, scenario."""
    tarball = guest_root_tarball()
    BUILD.mkdir(parents=True, exist_ok=True)
    root = BUILD / "root"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir()
    _run(["tar", "-C", str(root), "-xf", str(tarball)], "unpacking the guest root")
    kvers = sorted(p.name for p in (root / "lib/modules").iterdir())
    if len(kvers) != 1:
        raise GuestError(f"the guest root has kernels {kvers}, expected exactly one")
    kver = kvers[0]

    ko_dir = BUILD / "modules" / kver
    if not all((ko_dir / f"{m}.ko").exists() for m in GUEST_MODULES) or _newer_sources(ko_dir):
        _run([str(HERE / "build-modules.sh"), kver, str(ko_dir)], "build-modules.sh")

    shutil.copy2(deb, root / "tmp" / deb.name)
    # apt may fetch what the guest lacks (Debian's own packages) through the host's resolver
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    shutil.copy2("/etc/resolv.conf", resolv)
    apt_log = _chroot(
        root,
        f"cd / && apt-get install -y /tmp/{deb.name} 2>&1; rm /tmp/{deb.name}",
        "apt-get install ./klpd.deb in the guest root",
    )
    extra = root / "lib/modules" / kver / "updates" / "klpd-test"
    extra.mkdir(parents=True)
    for m in GUEST_MODULES:
        shutil.copy2(ko_dir / f"{m}.ko", extra / f"{m}.ko")
    guest = HERE / "guest"
    lib = root / "usr/local/lib/klpd-test"
    lib.mkdir(parents=True)
    shutil.copy2(guest / "scenario.sh", lib / "scenario.sh")
    for unit in ("klpd-test.service", "klpd-probe.service"):
        shutil.copy2(guest / unit, root / "etc/systemd/system" / unit)
    shutil.copy2(guest / "50-klpd-test.rules", root / "etc/polkit-1/rules.d/50-klpd-test.rules")
    dropin = root / "etc/systemd/system/klpd.service.d"
    dropin.mkdir(parents=True)
    shutil.copy2(guest / "metrics.conf", dropin / "metrics.conf")
    # The administrator's configuration (the package's conffile, edited).
    shutil.copy2(guest / "klpd.toml", root / "etc/klpd/klpd.toml")
    (root / "etc/hostname").write_text("klpd-guest\n")
    (root / "etc/fstab").write_text("/dev/vda / ext4 rw,errors=remount-ro 0 1\n")
    (root / "etc/machine-id").write_text("6b6c70642d67756573742d3133000001\n")
    _chroot(
        root,
        f"depmod -a {kver}; groupadd klpdadm; useradd -m -G klpdadm alice; useradd -m bob; "
        "systemctl enable klpd-test.service; systemctl mask serial-getty@ttyS0.service "
        "getty@tty1.service",
        "preparing the guest root",
    )
    kernel = BUILD / f"vmlinuz-{kver}"
    initrd = BUILD / f"initrd.img-{kver}"
    shutil.copy2(root / "boot" / f"vmlinuz-{kver}", kernel)
    shutil.copy2(root / "boot" / f"initrd.img-{kver}", initrd)
    disk = BUILD / "disk.img"
    disk.unlink(missing_ok=True)
    _run(["mkfs.ext4", "-q", "-F", "-d", str(root), "-L", "root", str(disk), "3G"], "mkfs.ext4")
    shutil.rmtree(root)
    return Image(disk, kernel, initrd, kver, deb, apt_log)


@dataclass(frozen=True)
class Run:
    image: Image
    first: Boot  # boots 1 and 2 (a reboot inside the guest)
    second: Boot  # boot 3, klpd.enable=0


def run() -> Run:
    """The package, the guest's disk, and the two qemu runs (three boots)."""
    image = make_image(build_deb())
    first = boot(image, log_name="console-boot1-2.log")
    second = boot(image, "klpd.enable=0", log_name="console-boot3.log")
    return Run(image, first, second)


_RUN: Future[Run] | None = None
_RUN_LOCK = threading.Lock()


def run_soon() -> Future[Run]:
    """:func:`run`, once, in a background thread: tests/conftest.py starts it when the
    session has collected these tests, so that the package, the disk and the boots overlap
    the tests before them (the boots wait for a guest slot: tests/guestslots.py)."""
    global _RUN
    with _RUN_LOCK:
        if _RUN is None:
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="system-guest")
            _RUN = pool.submit(run)
            pool.shutdown(wait=False)
        return _RUN


def _newer_sources(ko_dir: Path) -> bool:
    sources = REPO / "tests/realkernel/modules"
    built = min((p.stat().st_mtime for p in ko_dir.glob("*.ko")), default=0.0)
    return any(p.stat().st_mtime > built for p in sources.iterdir())


def boot(image: Image, extra_append: str = "", log_name: str = "console.log") -> Boot:
    """Boot until the guest powers off (a reboot inside the guest boots again)."""
    append = f"console=ttyS0 root=/dev/vda rw panic=-1 {extra_append}".strip()
    argv = [
        "qemu-system-x86_64",
        "-accel", "tcg,thread=single",
        "-cpu", "max",
        "-smp", "2",
        "-m", "2048",
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-serial", "stdio",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initrd),
        "-drive", f"file={image.disk},format=raw,if=virtio",
        "-append", append,
    ]  # fmt: skip
    with guest_slot():  # at most two guests at once in a test session (tests/guestslots.py)
        start = time.monotonic()
        proc = _qemu(argv, log_name)
        seconds = time.monotonic() - start
    (BUILD / log_name).write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise GuestError(f"qemu exited {proc.returncode}: {BUILD / log_name}")
    return Boot(proc.stdout, seconds)


def _qemu(argv: list[str], log_name: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=QEMU_TIMEOUT,
        )
    except subprocess.TimeoutExpired as e:
        out = e.stdout if isinstance(e.stdout, str) else (e.stdout or b"").decode(errors="replace")
        (BUILD / log_name).write_text(out)
        raise GuestError(
            f"the guest did not power off in {QEMU_TIMEOUT:.0f} s: {BUILD / log_name}"
        ) from e


def read_results(image: Image, dest: Path) -> Path:
    """Copy /var/lib/klpd-test/results out of the (powered-off) guest's disk."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    _run(
        ["debugfs", "-R", f"rdump /var/lib/klpd-test/results {dest}", str(image.disk)],
        "debugfs rdump",
    )
    return dest / "results"
