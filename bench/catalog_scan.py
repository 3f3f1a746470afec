"""Benchmark: klpd's catalog scan against the shell-script way, on generated module trees.

    python bench/catalog_scan.py [--sizes 1000 20000] [--sample 150]

For each size N it writes N fake modules (klpd_sim.kofile) into a temp dir: about 1% are
split livepatch modules (a main module plus object modules per patch), the rest ordinary
names; suffixes mixed like distribution trees (.ko 40%, .ko.xz 30%, .ko.zst 30%). Then,
in the same run:

- klpd cold: ``scan_catalog`` with an empty ModinfoCache (best of 3, as are warm and floor);
- klpd warm: the rescan with that cache (nothing changed, nothing read);
- baseline: kmod's ``modinfo -F livepatch`` on every file klpd had to inspect (a shell loop
  over the ``*__*`` files), and on every module file (the loop without that filter).
  Measured on a sample of at most ``--sample`` files and extrapolated;
- floor: ``find DIR -name '*.ko*' | wc -l``.

Files are freshly written, so everything is in the page cache: these are CPU costs.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from klpd_sim.kofile import write_ko

from klpd.kernel.catalog import Modinfo, ModinfoCache, scan_catalog
from klpd.kernel.modinfo import read_modinfo

SUFFIXES = ((".ko", "none", 0.4), (".ko.xz", "xz", 0.3), (".ko.zst", "zst", 0.3))
SUBSYSTEMS = ("drivers/net", "drivers/gpu", "drivers/usb", "fs", "net", "sound/pci", "crypto")
WORDS = (
    "snd",
    "hda",
    "usb",
    "net",
    "intel",
    "amd",
    "i2c",
    "hid",
    "nf",
    "xt",
    "crypto",
    "codec",
    "realtek",
    "virtio",
    "blk",
    "scsi",
    "mlx5",
    "core",
    "bridge",
    "tcp",
)
LIVEPATCH_TEXT = 48 * 1024  # a livepatch module is tens of KB
ORDINARY_TEXT = 2 * 1024  # never read by klpd; kept small so generation stays fast


@dataclass(frozen=True, slots=True)
class Result:
    n: int
    candidates: int
    inspected: int
    cold: float
    warm: float
    modinfo_per_file: float
    floor: float


def pick_suffix(rng: random.Random) -> tuple[str, str]:
    r = rng.random()
    for suffix, compression, share in SUFFIXES:
        if r < share:
            return suffix, compression
        r -= share
    return SUFFIXES[-1][0], SUFFIXES[-1][1]


def generate(root: Path, n: int, rng: random.Random) -> None:
    livepatch = max(2, n // 100)
    written = 0
    patch_no = 0
    while written < livepatch:
        patch = f"lp_cve_2026_{1000 + patch_no}_v{rng.randint(1, 3)}"
        objects = ["vmlinux", *rng.sample(WORDS, rng.randint(1, 4))]
        for obj in objects[: livepatch - written]:
            suffix, compression = pick_suffix(rng)
            info = {
                "livepatch": "Y",
                "vermagic": "6.1.0-13-amd64 SMP mod_unload ",
                "klpd_cve": f"CVE-2026-{1000 + patch_no}",
            }
            path = root / "updates" / "livepatch" / f"{patch}__{obj}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_ko(path, info, compression, text_size=LIVEPATCH_TEXT)
            written += 1
        patch_no += 1
    seen: set[str] = set()
    while written < n:
        name = "_".join(rng.sample(WORDS, rng.randint(1, 3))) + f"{rng.randint(0, 999)}"
        if rng.random() < 0.002:
            name = name.replace("_", "__", 1)  # a few ordinary modules do contain "__"
        if name in seen:
            continue
        seen.add(name)
        suffix, compression = pick_suffix(rng)
        path = root / "kernel" / rng.choice(SUBSYSTEMS) / f"{name}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_ko(
            path,
            {"description": name, "alias": [f"a-{name}"]},
            compression,
            text_size=ORDINARY_TEXT,
        )
        written += 1


def seconds(f: Callable[[], object]) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def kmod_modinfo_each(paths: list[str]) -> None:
    for path in paths:
        subprocess.run(["modinfo", "-F", "livepatch", path], capture_output=True, check=True)


def measure(n: int, sample: int, rng: random.Random) -> Result:
    with tempfile.TemporaryDirectory(prefix="klpd-bench-") as tmp:
        root = Path(tmp)
        generate(root, n, rng)
        inspected: list[str] = []

        def reader(path: str) -> Modinfo:
            inspected.append(path)
            return read_modinfo(path)

        # Best of three for the in-process scans: the machine may be shared.
        cold = warm = float("inf")
        for _ in range(3):
            inspected.clear()
            cache = ModinfoCache(reader)
            start = time.perf_counter()
            catalog = scan_catalog([root], cache=cache)
            cold = min(cold, time.perf_counter() - start)
            start = time.perf_counter()
            again = scan_catalog([root], previous=catalog, cache=cache)
            warm = min(warm, time.perf_counter() - start)
            assert again == catalog and cache.reads == len(inspected)

        every = sorted(str(p) for p in root.rglob("*.ko*"))
        candidates = [p for p in every if "__" in Path(p).name]
        chosen = rng.sample(inspected, min(sample, len(inspected)))
        per_file = seconds(lambda: kmod_modinfo_each(chosen)) / len(chosen)
        shell = ["sh", "-c", f"find '{root}' -name '*.ko*' | wc -l"]
        floor = min(
            seconds(lambda: subprocess.run(shell, capture_output=True, check=True))
            for _ in range(3)
        )
        return Result(n, len(candidates), len(inspected), cold, warm, per_file, floor)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 20000])
    parser.add_argument("--sample", type=int, default=150, help="files run through modinfo")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    def ms(s: float) -> str:
        return f"{s * 1000:9.1f} ms"

    for n in args.sizes:
        r = measure(n, args.sample, rng)
        loop_inspected = r.modinfo_per_file * r.inspected
        loop_all = r.modinfo_per_file * r.n
        print(
            f"\n== {r.n} module files, {r.inspected} inspected by klpd ({r.candidates} named *__*)"
        )
        print(f"  klpd cold scan                        {ms(r.cold)}")
        print(f"  klpd warm rescan (cache)              {ms(r.warm)}")
        print(
            f"  modinfo -F livepatch on klpd's files  {ms(loop_inspected)}   (extrapolated "
            f"from {min(args.sample, r.inspected)} files, {r.modinfo_per_file * 1000:.2f} "
            "ms each)"
        )
        print(f"  modinfo -F livepatch on every file    {ms(loop_all)}   (extrapolated)")
        print(f"  floor: find -name '*.ko*' | wc -l      {ms(r.floor)}")
        print(
            f"  ratios: modinfo-loop/klpd-cold {loop_inspected / r.cold:6.1f}x   "
            f"all-files-loop/klpd-cold {loop_all / r.cold:6.1f}x   "
            f"klpd-cold/floor {r.cold / r.floor:5.2f}x   "
            f"klpd-warm/floor {r.warm / r.floor:5.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
