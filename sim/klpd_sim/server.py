"""``klpd-sim run``: the simulated kernel as a process with one asyncio loop.

- requests from the ``klpd-sim`` clients arrive on ``<root>/sim.sock`` (one JSON object a
  line each way);
- writes to ``enabled``/``force`` under ``<root>/sys/kernel/livepatch`` are seen through
  inotify (``IN_CLOSE_WRITE`` on the patch directories) and acted on like the kernel's
  store functions would;
- transitions end on loop timers; uevents go out on netlink.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from inotify_simple import INotify, flags

from klpd_sim.kernel import Kernel
from klpd_sim.kmod import ToolResult, modprobe, rmmod
from klpd_sim.render import render, snapshot
from klpd_sim.tree import TreeWriter
from klpd_sim.uevent import send_module_uevent

log = logging.getLogger(__name__)

LIVEPATCH_DIR = "sys/kernel/livepatch"
_WATCHED_ATTRS = ("enabled", "force")


class SimServer:
    def __init__(
        self,
        root: Path,
        transition_s: float,
        uevents: bool = True,
        fake_signal_s: float = 15.0,
        retry_s: float = 0.0,
    ) -> None:
        self.root = root.resolve()
        self.release = (self.root / "proc/sys/kernel/osrelease").read_text().strip()
        self.moddir = self.root / "lib/modules" / self.release
        self.conf_dirs = [
            self.root / d for d in ("etc/modprobe.d", "run/modprobe.d", "lib/modprobe.d")
        ]
        self.transition_s = transition_s
        self.fake_signal_s = fake_signal_s
        self.retry_s = retry_s
        self.uevents = uevents
        self.tree = TreeWriter(self.root)
        self.inotify = INotify(nonblocking=True)
        self._watches: dict[int, str] = {}  # wd -> livepatch name
        self._wd_of: dict[str, int] = {}
        self.kernel: Kernel | None = None
        self._stop = asyncio.Event()
        self._kill_after: tuple[int, int] | None = None  # (pid, writes left): a test's SIGKILL

    # --- kernel hooks --------------------------------------------------------------

    def _emit(self, action: str, module: str, seqnum: int) -> None:
        if not self.uevents:
            return
        try:
            send_module_uevent(action, module, seqnum, {"KLPD_SIM_ROOT": str(self.root)})
        except OSError as e:
            log.error("cannot send the %s uevent for %s: %s", action, module, e)

    def _sync(self) -> None:
        assert self.kernel is not None
        _, removed = self.tree.apply(render(self.kernel), self._watch_new_unit)
        prefix = LIVEPATCH_DIR + "/"
        for unit in removed:
            if unit.startswith(prefix):
                self._unwatch(unit[len(prefix) :])

    def _watch_new_unit(self, unit: str, staged: Path) -> None:
        """Watch a new patch directory before it is published (no write can slip by)."""
        prefix = LIVEPATCH_DIR + "/"
        if not unit.startswith(prefix):
            return
        patch = unit[len(prefix) :]
        wd = self.inotify.add_watch(str(staged), flags.CLOSE_WRITE)
        self._watches[wd] = patch
        self._wd_of[patch] = wd

    def _unwatch(self, patch: str) -> None:
        wd = self._wd_of.pop(patch, None)
        if wd is None:
            return
        self._watches.pop(wd, None)
        with contextlib.suppress(OSError):
            self.inotify.rm_watch(wd)

    # --- sysfs writes -----------------------------------------------------------------

    def _on_inotify(self) -> None:
        assert self.kernel is not None
        for event in self.inotify.read(timeout=0):
            patch = self._watches.get(event.wd)
            if patch is None or event.name not in _WATCHED_ATTRS:
                continue
            path = self.root / LIVEPATCH_DIR / patch / event.name
            try:
                text = path.read_text()
            except OSError:
                continue
            # The file holds what the writer wrote: the next sync shows the kernel's value
            # again, together with what the write changed (and before `transition`, so a
            # writer who saw the transition start can write again without being
            # overwritten by a late restore).
            self.tree.invalidate(f"{LIVEPATCH_DIR}/{patch}", event.name)
            if event.name == "enabled":
                err = self.kernel.write_enabled(patch, text)
            else:
                err = self.kernel.write_force(patch, text)
            self._sync()
            # Logged once the tree shows the outcome (tests wait for this line).
            log.info(
                "write %r to %s/%s: %s",
                text.strip(),
                patch,
                event.name,
                os.strerror(err) if err else "ok",
            )
            self._count_write()

    def _count_write(self) -> None:
        """SIGKILL the writer a test named once its n-th write took effect (``kill_after``)."""
        if self._kill_after is None:
            return
        pid, left = self._kill_after
        self._kill_after = (pid, left - 1) if left > 1 else None
        if left <= 1:
            log.info("SIGKILL to %d after its write", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # --- client requests ------------------------------------------------------------

    def _dispatch(self, req: dict[str, Any]) -> ToolResult:
        k = self.kernel
        assert k is not None
        cmd = req.get("cmd")
        name = str(req.get("name", ""))
        if cmd == "modprobe":
            return modprobe(k, self.moddir, self.conf_dirs, name)
        if cmd == "rmmod":
            return rmmod(k, name)
        if cmd == "stall":
            func = req.get("func")
            task = k.stall(
                name,
                str(req.get("comm") or "klpd-sim-stall"),
                str(func) if func else None,
                interruptible=bool(req.get("interruptible")),
            )
            return ToolResult(0, stdout=f"{task.pid}\n")
        if cmd == "unstall":
            pids = k.unstall(name)
            return ToolResult(0, stdout="".join(f"{p}\n" for p in pids))
        if cmd == "kill_after_writes":
            pid, count = int(req["pid"]), int(req["count"])
            self._kill_after = (pid, count) if count > 0 else None
            return ToolResult(0)
        if cmd == "status":
            return ToolResult(0, stdout=json.dumps(snapshot(k), indent=2) + "\n")
        if cmd == "stop":
            self._stop.set()
            return ToolResult(0)
        return ToolResult(2, stderr=f"klpd-sim: unknown request {cmd!r}\n")

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            line = await reader.readline()
            try:
                req = json.loads(line)
                res = self._dispatch(req) if isinstance(req, dict) else ToolResult(2)
            except Exception as e:  # a bug in the sim: answer, log it, keep running
                log.exception("request %r failed", line)
                res = ToolResult(2, stderr=f"klpd-sim: internal error: {e!r}\n")
            writer.write(
                json.dumps({"rc": res.rc, "stdout": res.stdout, "stderr": res.stderr}).encode()
                + b"\n"
            )
            await writer.drain()
        finally:
            writer.close()

    def _boot(self) -> None:
        """A fresh kernel: forget what an earlier run left in sysfs and procfs."""
        for parent in (self.root / "sys/module", self.root / LIVEPATCH_DIR):
            parent.mkdir(parents=True, exist_ok=True)
            for d in parent.iterdir():
                shutil.rmtree(d, ignore_errors=True)
        for d in (self.root / "proc").iterdir():
            if d.name.isdigit():
                shutil.rmtree(d, ignore_errors=True)

    # --- main ------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.kernel = Kernel(
            self.release,
            self.transition_s,
            loop,
            self._emit,
            self._sync,
            fake_signal_s=self.fake_signal_s,
            retry_s=self.retry_s,
        )
        self._boot()
        self._sync()
        sock = self.root / "sim.sock"
        sock.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(self._serve_client, path=str(sock))
        loop.add_reader(self.inotify.fileno(), self._on_inotify)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        pidfile = self.root / "sim.pid"
        pidfile.write_text(f"{os.getpid()}\n")
        log.info("simulated kernel %s running in %s", self.release, self.root)
        try:
            await self._stop.wait()
        finally:
            loop.remove_reader(self.inotify.fileno())
            server.close()
            await server.wait_closed()
            sock.unlink(missing_ok=True)
            pidfile.unlink(missing_ok=True)
            self.inotify.close()
            log.info("simulated kernel stopped")
