"""Benchmark: the worst a hostile module file costs klpd's catalog scan (issue 11, point 3).

    python bench/hostile_modules.py [--repeat 3]

For each compression, a file whose section headers sit just below ``MAX_IMAGE_BYTES`` makes
klpd decompress as much as it ever will; the filling is zeros (the cheapest to inflate),
random bytes (stored blocks) and text-like bytes (real compression work). Baseline in the
same run: ``read_modinfo`` of an ordinary 48 KB livepatch module. Prints seconds and peak
traced memory per file; a scan spends about that per new or changed hostile file, in its
worker thread (the event loop is not held: bench/scan_loop_block.py); unchanged files come
from the ModinfoCache.
"""

from __future__ import annotations

import argparse
import gzip
import lzma
import random
import struct
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import zstandard
from klpd_sim.kofile import elf_relocatable, modinfo_bytes, write_ko

from klpd.kernel.modinfo import MAX_IMAGE_BYTES, ModinfoError, read_modinfo

LP = {"livepatch": "Y", "vermagic": "6.1.0-13-amd64 SMP "}
COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "zst": lambda d: zstandard.ZstdCompressor(level=3).compress(d),
    "xz": lambda d: lzma.compress(d, preset=1),
    "gz": lambda d: gzip.compress(d, compresslevel=1),
}


def filling(kind: str, n: int) -> bytes:
    rng = random.Random(11)
    if kind == "zeros":
        return b"\0" * n
    if kind == "random":
        return rng.randbytes(n)
    words = [rng.randbytes(rng.randint(2, 12)) for _ in range(4096)]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words)
    return bytes(out[:n])


def hostile_image(fill: str) -> bytes:
    head = bytearray(elf_relocatable(modinfo_bytes("lp__vmlinux", LP)))
    shoff = MAX_IMAGE_BYTES - 64 * 8  # the table ends just inside the cap
    struct.pack_into("<Q", head, 0x28, shoff)
    return bytes(head) + filling(fill, MAX_IMAGE_BYTES - len(head))


def measure(path: Path, repeat: int) -> tuple[float, int, str]:
    best, peak, outcome = float("inf"), 0, ""
    for _ in range(repeat):
        tracemalloc.start()
        start = time.perf_counter()
        try:
            read_modinfo(path)
            outcome = "read"
        except ModinfoError as e:
            outcome = e.reason[:60]
        best = min(best, time.perf_counter() - start)
        peak = max(peak, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return best, peak, outcome


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "lpa__vmlinux.ko.xz"
        write_ko(base, LP, "xz")
        baseline, _, _ = measure(base, args.repeat)
        print(f"cap: MAX_IMAGE_BYTES = {MAX_IMAGE_BYTES >> 20} MiB decompressed per file")
        print(f"baseline: an ordinary livepatch .ko.xz: {baseline * 1e3:.2f} ms")
        print(f"{'file':<14} {'on disk':>10} {'seconds':>8} {'x base':>8} {'peak MiB':>9}  outcome")
        for fill in ("zeros", "text", "random"):
            image = hostile_image(fill)
            for kind, compress in COMPRESS.items():
                path = Path(tmp) / f"lp_{fill}__vmlinux.ko.{kind}"
                path.write_bytes(compress(image))
                seconds, peak, outcome = measure(path, args.repeat)
                print(
                    f"{fill + '.' + kind:<14} {path.stat().st_size >> 10:>8}KB {seconds:>8.3f} "
                    f"{seconds / baseline:>8.0f} {peak / 2**20:>9.1f}  {outcome}"
                )
                path.unlink()


if __name__ == "__main__":
    main()
