"""A simulated kernel for tests: ``with SimKernel() as sim: ...``.

It lays out a fresh root (``klpd-sim init``), starts ``klpd-sim run`` as a subprocess,
waits until it answers, and stops it on exit. Methods drive it as a person with a shell
would; :meth:`SimKernel.config_overrides` points a klpd configuration at it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from klpd_sim.cli import request
from klpd_sim.spec import DEFAULT_RELEASE, Spec, demo_spec, init_root

T = TypeVar("T")


class SimError(RuntimeError):
    pass


def wait_for(
    condition: Callable[[], T], timeout: float = 10.0, what: str = "", *, interval: float = 0.02
) -> T:
    """Poll ``condition`` until it returns something true, and return that; raise
    :class:`TimeoutError` after ``timeout`` seconds. The one wait of the tests, the demo and
    the benchmarks: they wait on things outside their own process, with a deadline."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)
    return value


class SimKernel:
    """A running simulated kernel under a temporary (or given) root."""

    def __init__(
        self,
        root: Path | None = None,
        *,
        release: str = DEFAULT_RELEASE,
        spec: Spec | None = None,
        transition_ms: float = 100.0,
        fake_signal_ms: float = 15000.0,
        retry_ms: float = 0.0,
        uevents: bool = True,
        start_timeout: float = 20.0,
    ) -> None:
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="klpd-sim-")) if root is None else root
        self.root = self.root.resolve()
        self.spec = spec or demo_spec(release)
        self.release = self.spec.release
        self.transition_ms = transition_ms
        self.fake_signal_ms = fake_signal_ms
        self.retry_ms = retry_ms
        self.uevents = uevents
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / "sim.log"

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def cli(self) -> list[str]:
        """The argv prefix of ``klpd-sim --root ROOT`` (this interpreter, no PATH lookup)."""
        return [sys.executable, "-m", "klpd_sim.cli", "--root", str(self.root)]

    def start(self) -> SimKernel:
        init_root(self.root, self.spec)
        argv = [
            *self.cli,
            "run",
            "--transition-ms",
            str(self.transition_ms),
            "--fake-signal-ms",
            str(self.fake_signal_ms),
            "--retry-ms",
            str(self.retry_ms),
        ]
        if not self.uevents:
            argv.append("--no-uevents")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        wait_for(self._answers, self.start_timeout, "the simulated kernel to start")
        return self

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise SimError(f"klpd-sim run exited with {self.proc.returncode}: {self.log()}")
        if not (self.root / "sim.pid").exists():
            return False
        try:
            request(self.root, {"cmd": "status"}, timeout=5.0)
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> SimKernel:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.stop()
        if self._own_root and not os.environ.get("KLPD_SIM_KEEP"):
            shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    # --- paths and configuration ---------------------------------------------------------

    @property
    def sys(self) -> Path:
        return self.root / "sys"

    @property
    def proc_root(self) -> Path:
        return self.root / "proc"

    @property
    def livepatch_dir(self) -> Path:
        return self.sys / "kernel/livepatch"

    @property
    def module_dir(self) -> Path:
        """The catalog directory: ``<root>/lib/modules/<release>``."""
        return self.root / "lib/modules" / self.release

    @property
    def softdep_file(self) -> Path:
        return self.root / "run/modprobe.d/klpd.conf"

    def config_overrides(self) -> dict[str, Any]:
        """klpd configuration sections (``klpd.service.config.Config``) that point at this sim."""
        return {
            "kernel": {
                "sysfs_root": str(self.sys),
                "proc_root": str(self.proc_root),
                "modprobe": [*self.cli, "modprobe"],
                "rmmod": [*self.cli, "rmmod"],
            },
            "catalog": {"directories": [str(self.module_dir)]},
            "softdep": {"path": str(self.softdep_file)},
        }

    # --- driving it ----------------------------------------------------------------------

    def run_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``klpd-sim --root ROOT ARGS...`` as a subprocess (what klpd itself runs)."""
        return subprocess.run(
            [*self.cli, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL
        )

    def _call(self, req: dict[str, Any], check: bool) -> dict[str, Any]:
        reply = request(self.root, req)
        if check and reply.get("rc") != 0:
            raise SimError(f"{req}: {reply.get('stderr', '').strip()}")
        return reply

    def modprobe(self, name: str, check: bool = True) -> dict[str, Any]:
        """Load ``name``: returns ``{"rc", "stdout", "stderr"}``; raises if ``check`` fails."""
        return self._call({"cmd": "modprobe", "name": name}, check)

    def rmmod(self, name: str, check: bool = True) -> dict[str, Any]:
        return self._call({"cmd": "rmmod", "name": name}, check)

    def stall(self, obj: str, comm: str = "klpd-sim-stall", interruptible: bool = False) -> int:
        """A task sleeps in ``obj``'s patched function; returns its pid. An interruptible
        one is woken by the kernel's fake signal (``fake_signal_ms``) during a transition."""
        req = {"cmd": "stall", "name": obj, "comm": comm, "interruptible": interruptible}
        return int(self._call(req, True)["stdout"])

    def unstall(self, obj: str) -> list[int]:
        out = self._call({"cmd": "unstall", "name": obj}, True)["stdout"]
        return [int(p) for p in out.split()]

    def kill_after_writes(self, pid: int, count: int) -> None:
        """SIGKILL process ``pid`` right after the ``count``-th write to a livepatch's
        ``enabled``/``force`` has taken effect (its transition started); 0 disarms."""
        self._call({"cmd": "kill_after_writes", "pid": pid, "count": count}, True)

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self._call({"cmd": "status"}, True)["stdout"])
        return data

    def install(self, name: str, modinfo: dict[str, str], compression: str = "none") -> Path:
        """Add a module file to the catalog directory (the sim finds it at the next
        modprobe); e.g. ``install("lpc__ext4", {"livepatch": "Y"})``."""
        from klpd_sim.kofile import write_ko
        from klpd_sim.spec import vermagic

        suffix = {"none": ".ko", "xz": ".ko.xz", "gz": ".ko.gz", "zst": ".ko.zst"}[compression]
        path = self.module_dir / "extra" / f"{name}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_ko(path, {"vermagic": vermagic(self.release), "depends": "", **modinfo}, compression)
        return path

    # --- reading what klpd reads ----------------------------------------------------------

    def read(self, relpath: str) -> str | None:
        """A file under the root, stripped; None if it does not exist."""
        try:
            return (self.root / relpath).read_text().strip()
        except FileNotFoundError:
            return None

    def write_attr(self, patch: str, attr: str, value: str) -> None:
        """``echo VALUE > /sys/kernel/livepatch/PATCH/ATTR`` (as klpd does it)."""
        with (self.livepatch_dir / patch / attr).open("w") as f:
            f.write(value + "\n")

    def transitioning(self) -> bool:
        """Whether any ``sys/kernel/livepatch/*/transition`` reads 1."""
        for d in self.livepatch_dir.iterdir():
            try:
                if (d / "transition").read_text().strip() == "1":
                    return True
            except FileNotFoundError:
                continue  # the patch went away while we looked
        return False

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until no transition is in progress."""
        wait_for(lambda: not self.transitioning(), timeout, what="transitions to finish")
