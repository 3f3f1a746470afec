"""Run the real ``klpd`` daemon process against a simulated kernel, for end-to-end tests.

Readiness is the real sd_notify protocol: the test binds a NOTIFY_SOCKET and waits for
READY=1; the daemon's STATUS= lines are collected as they come. Convergence is observed in
the simulated kernel's sysfs, bounded by a deadline.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from klpd_sim.harness import SimKernel, wait_for

__all__ = ["KlpdProcess", "MakeKlpd", "applied", "loaded", "wait_for"]

ROOT = Path(__file__).resolve().parent.parent


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def write_config(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> Path:
    lines = []
    for name, keys in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in keys.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def merge(*dicts: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for d in dicts:
        for section, keys in d.items():
            out.setdefault(section, {}).update(keys)
    return out


class KlpdProcess:
    """``klpd --config <generated>`` as a child process, pointed at ``sim``."""

    def __init__(
        self,
        sim: SimKernel,
        workdir: Path,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.sim = sim
        self.workdir = workdir
        self.config_path = workdir / "klpd.toml"
        self.metrics = workdir / "klpd.prom"
        self.sections = merge(
            sim.config_overrides(),
            {
                "dbus": {"enabled": False},
                "state": {"directory": str(workdir / "state")},
                "metrics": {"textfile": str(self.metrics)},
                "transition": {"poll_interval": 0.02, "stall_timeout": 2.0},
                # Tests wait for READY=1 and then watch klpd work; test_ready_* sets it.
                "policy": {"ready_timeout": 0},
                "retry": {"ebusy_backoff": 0.05, "modprobe_timeout": 30.0},
                "logging": {"level": "debug", "target": "stderr"},
            },
            overrides or {},
        )
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "klpd.log"
        self.notify_path = Path(tempfile.mkdtemp(prefix="klpd-notify-")) / "notify"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.messages: list[str] = []
        self._lock = threading.Lock()
        # Read every datagram as it comes, as the service manager does: a full queue would
        # block the daemon's sd_notify().
        self._reader = threading.Thread(target=self._read_notify, daemon=True)
        self._reader.start()
        self.starts = 0

    def configure(self, overrides: Mapping[str, Mapping[str, Any]]) -> None:
        self.sections = merge(self.sections, overrides)
        write_config(self.config_path, self.sections)

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The running klpd (after :meth:`start`)."""
        if self.proc is None:
            raise AssertionError("klpd was not started")
        return self.proc

    def start(self, wait_ready: bool = True) -> KlpdProcess:
        write_config(self.config_path, self.sections)
        self.metrics.unlink(missing_ok=True)  # a previous run's state is not this one's
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path), **self.extra_env}
        env.pop("JOURNAL_STREAM", None)
        with self._lock:
            self.messages.clear()
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "klpd.service.daemon", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )
        self.starts += 1
        if wait_ready:
            self.wait_message(lambda m: m.startswith("READY=1") or "\nREADY=1" in m, 60)
        return self

    def _read_notify(self) -> None:
        while True:
            try:
                data = self.notify.recv(4096)
            except OSError:
                return
            with self._lock:
                self.messages.append(data.decode())

    def drain(self) -> list[str]:
        with self._lock:
            return list(self.messages)

    def wait_message(self, pred: Callable[[str], bool], timeout: float = 30.0) -> str:
        def found() -> str | None:
            self.check_alive()
            return next((m for m in self.drain() if pred(m)), None)

        return str(wait_for(found, timeout, "an sd_notify message"))

    def statuses(self) -> list[str]:
        return [
            line[len("STATUS=") :]
            for m in self.drain()
            for line in m.splitlines()
            if line.startswith("STATUS=")
        ]

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"klpd exited with {self.proc.returncode}:\n{self.log()[-6000:]}")

    def metric_state(self) -> str | None:
        try:
            text = self.metrics.read_text()
        except FileNotFoundError:
            return None
        for line in text.splitlines():
            if line.startswith("klpd_state{") and line.endswith(" 1"):
                return line.split('state="', 1)[1].split('"', 1)[0]
        return None

    def wait_state(self, state: str, timeout: float = 30.0) -> None:
        def ok() -> bool:
            self.check_alive()
            return self.metric_state() == state

        try:
            wait_for(ok, timeout, f"klpd state {state}")
        except TimeoutError as e:
            last = self.metric_state()
            raise AssertionError(f"{e}; last state {last}\n{self.log()[-6000:]}") from e

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        self.stop()
        self.notify.shutdown(socket.SHUT_RDWR)
        self.notify.close()

    def memory_kib(self) -> dict[str, int]:
        """The running klpd's ``VmRSS`` and ``VmHWM`` (peak RSS), in KiB, from /proc."""
        wanted = ("VmRSS:", "VmHWM:")
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return {
            line.split(":")[0]: int(line.split()[1])
            for line in status.splitlines()
            if line.startswith(wanted)
        }

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""


def applied(sim: SimKernel) -> set[str]:
    """Livepatch modules enabled and not in transition, read from the sim's sysfs."""
    out = set()
    d = sim.livepatch_dir
    for e in d.iterdir() if d.is_dir() else ():
        try:
            if (e / "enabled").read_text().strip() == "1" and (
                e / "transition"
            ).read_text().strip() == "0":
                out.add(e.name)
        except FileNotFoundError:
            continue
    return out


def loaded(sim: SimKernel) -> set[str]:
    return {e.name for e in (sim.sys / "module").iterdir()}


class MakeKlpd(Protocol):
    """The ``make_klpd`` fixture: a klpd process on ``sim`` (closed after the test)."""

    def __call__(
        self,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> KlpdProcess: ...
