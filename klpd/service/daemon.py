"""``klpd``: the daemon's entry point and wiring. One asyncio loop; catalog scans (file
reads) run in a worker thread so the loop keeps answering while hostile files are read.

Order at start-up matters for crash-only behaviour: the uevent monitor is armed *before*
the first reconcile reads sysfs, so a module that comes while we read is seen either in
sysfs or as an event; READY=1 is sent once the bus name is owned (or the bus found absent:
klpd joins it when it comes), the monitor is armed and the first reconcile is planned.
Stopping never unloads anything (kpatch learnt why).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from klpd import __version__
from klpd.core.status import Event, EventKind, Snapshot
from klpd.kernel.kstate import livepatch_supported
from klpd.kernel.udev import ModuleEvent, UdevSource
from klpd.service.config import DEFAULT_PATH, Config, ConfigError, load_config
from klpd.service.controls import Control
from klpd.service.logs import loop_exception_handler, setup_logging
from klpd.service.orchestrator import Orchestrator
from klpd.service.screening import host_guards
from klpd.service.sdnotify import Notifier

TYPE_CHECKING = False  # dbus_fast is imported only when D-Bus is enabled
if TYPE_CHECKING:
    from klpd.dbus.service import DbusService

log = logging.getLogger("klpd")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_UNSUPPORTED = 3


def status_line(snap: Snapshot) -> str:
    """What ``systemctl status`` shows: "converged: 2 patches, 5 objects"."""
    applied = [p for p in snap.patches if p.desired]
    objects = {m.obj for p in applied for m in p.modules if m.status == "applied"}
    text = f"{snap.state}: {len(applied)} patches, {len(objects)} objects"
    if snap.transition is not None:
        text += f"; transition {snap.transition.module} -> {snap.transition.target}"
        if snap.transition.stalled:
            text += " (stalled)"
    elif snap.last_error and snap.state != "converged":
        text += f"; {snap.last_error}"
    return text[:200]


class Daemon:
    def __init__(
        self, config: Config, config_path: Path | None, *, tracebacks: bool = False
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.tracebacks = tracebacks
        self.notifier = Notifier()
        inspector, bootguard = host_guards(config)
        self.orchestrator = Orchestrator(config, inspector=inspector, bootguard=bootguard)
        self.control = Control(self.orchestrator, config_loader=self._load_config)
        self._stop = asyncio.Event()
        self._dbus: DbusService | None = None
        self._status = ""
        self._softdeps = ""

    def _load_config(self) -> Config:
        self.config = load_config(self.config_path)
        return self.config

    def _on_module_event(self, ev: ModuleEvent) -> None:
        if ev.action == "add":
            self.orchestrator.module_added(ev.module)
        else:
            self.orchestrator.module_removed(ev.module)

    def _on_event(self, ev: Event) -> None:
        if ev.kind is EventKind.STATE_CHANGED:
            snap = self.control.snapshot()
            line = status_line(snap)
            if line != self._status:  # the manager reads every datagram: send only news
                self._status = line
                self.notifier.status(line)
            self._write_metrics(snap)
            if self.config.softdep.enabled:
                self._write_softdeps()

    def _write_metrics(self, snap: Snapshot) -> None:
        path = self.config.metrics.textfile
        if not path:
            return
        from klpd.service.metrics import render_metrics, write_textfile

        try:
            write_textfile(Path(path), render_metrics(snap))
        except OSError as e:
            log.warning("cannot write metrics to %s: %s", path, e)

    def _write_softdeps(self, previous_path: str = "") -> None:
        """Pre-arm modprobe: ``softdep <m> pre: P__<m>`` for the patches being applied, so a
        modprobe-driven load of ``<m>`` is patched before its init (opt-in, see README)."""
        from klpd.kernel.softdep import remove_softdeps, render_softdeps, write_softdeps

        sd = self.config.softdep
        try:
            stale = previous_path if previous_path != sd.path else ""
            if (stale or not sd.enabled) and remove_softdeps(stale or sd.path):
                self._softdeps = ""
            if sd.enabled:
                text = render_softdeps(self.orchestrator.catalog, self.orchestrator.desired)
                if text != self._softdeps:  # selection changes are rare; writes rarer
                    write_softdeps(Path(sd.path), text)
                    self._softdeps = text
        except OSError as e:
            log.warning("cannot write %s: %s", sd.path, e)

    async def _reload(self) -> None:
        self.notifier.reloading()
        previous = self.config.softdep.path
        try:
            await self.control.reload()
            setup_logging(self.config.logging.level, self.config.logging.target)
            self._write_softdeps(previous)
            log.info("configuration reloaded")
        except Exception as e:
            log.error("reload failed, keeping the previous configuration: %s", e)
        self.notifier.ready(status_line(self.control.snapshot()))

    async def _watchdog(self, interval: float) -> None:
        # Pinged from the event loop itself: a wedged loop stops the pings.
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval / 2)

    async def _stay_on_bus(self) -> None:
        """dbus-daemon went away (restarted, crashed): the kernel work goes on from udev
        events meanwhile, nothing is unloaded, and klpd connects again (every second) once
        the bus is back."""
        from klpd.dbus.service import start_dbus

        while True:
            if self._dbus is not None:
                # Shielded: dbus-fast hands every waiter one shared future, and cancelling
                # this task at stop would cancel it under DbusService.close() (exit 1).
                with contextlib.suppress(Exception):  # how it ended does not matter
                    await asyncio.shield(self._dbus.bus.wait_for_disconnect())  # type: ignore[no-untyped-call]  # dbus_fast: untyped
                log.warning("lost the D-Bus connection; orchestrating on, reconnecting")
                self._dbus.lost()
                self._dbus = None
            try:
                self._dbus = await start_dbus(self.control, self.config.dbus.bus)
                log.info("back on the bus %s", self.config.dbus.bus)
            except Exception as e:  # not back yet
                log.debug("bus not back yet: %s", e)
                await asyncio.sleep(1.0)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(loop_exception_handler(self.tracebacks))
        orch = self.orchestrator
        self.control.subscribe(self._on_event)
        tasks: list[asyncio.Task[None]] = []
        interval = self.notifier.watchdog_interval()
        if interval:  # pinging already while the first scan reads the catalog
            tasks.append(loop.create_task(self._watchdog(interval), name="watchdog"))
        await orch.rescan_off_loop()
        self._write_softdeps()

        source = UdevSource(
            self._on_module_event,
            orch.resync,
            receive_buffer=self.config.events.receive_buffer,
        )
        source.start(loop)

        if self.config.dbus.enabled:
            from klpd.dbus.service import BusUnreachableError, start_dbus

            try:
                self._dbus = await start_dbus(self.control, self.config.dbus.bus)
            except BusUnreachableError as e:
                # As after a bus loss: patch from udev events meanwhile, join the bus when it
                # is back. Exiting left the host unpatched until dbus-daemon was (found by
                # the daemon soak: klpd restarted while dbus-daemon was down exited 1).
                log.warning("%s; orchestrating without it, connecting every second", e)
            tasks.append(loop.create_task(self._stay_on_bus(), name="bus"))

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self._reload()))

        first = orch.plan_now(orch.read_state())
        log.info("start-up: %d actions planned", len(first))
        runner = loop.create_task(orch.run(), name="reconcile")
        tasks.append(runner)
        if self.config.policy.ready_timeout > 0:
            # Measured in the Debian 13 guest: READY=1 sent at once let network-pre.target
            # pass about 90 s before the patches were applied. Units ordered after klpd
            # should start patched; a stall or a slow load only delays them this long.
            state = await self.control.wait_settled(self.config.policy.ready_timeout)
            log.info("first reconcile: %s", state.value)
        self.notifier.ready(status_line(self.control.snapshot()))

        stop_wait = loop.create_task(self._stop.wait())
        await asyncio.wait([stop_wait, runner], return_when=asyncio.FIRST_COMPLETED)
        self.notifier.stopping()
        log.info("stopping; livepatches stay as they are")
        orch.stop()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        source.stop()
        if self._dbus is not None:
            await self._dbus.close()
        return EXIT_OK


def kill_switch(proc_root: Path) -> bool:
    """``klpd.enable=0`` on the kernel command line (like kpatch's ``kpatch.enable=0``); the
    unit checks it too, this covers starts outside systemd."""
    try:
        words = (proc_root / "cmdline").read_text().split()
    except OSError:
        return False
    return "klpd.enable=0" in words


def build_parser() -> argparse.ArgumentParser:
    """klpd's options (also the source of the klpd(8) man page)."""
    p = argparse.ArgumentParser(
        prog="klpd", description="Orchestrate split kernel livepatch modules."
    )
    p.add_argument("--config", type=Path, help=f"configuration file (default {DEFAULT_PATH})")
    p.add_argument(
        "--check-config", action="store_true", help="validate the configuration and exit"
    )
    p.add_argument("--bus", help="D-Bus bus: system, session, or an address (overrides dbus.bus)")
    p.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    p.add_argument("--version", action="version", version=f"klpd {__version__}")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
        if args.bus:
            config = config.with_overrides({"dbus": {"bus": args.bus}})
    except ConfigError as e:
        print(f"klpd: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        print(f"klpd: configuration {args.config or DEFAULT_PATH} is valid")
        return EXIT_OK

    setup_logging("debug" if args.debug else config.logging.level, config.logging.target)
    if kill_switch(Path(config.kernel.proc_root)):
        log.warning("klpd.enable=0 on the kernel command line: not starting")
        return EXIT_OK
    if not livepatch_supported(Path(config.kernel.sysfs_root)):
        log.error(
            "this kernel has no livepatch support (%s/kernel/livepatch is missing)",
            config.kernel.sysfs_root,
        )
        return EXIT_UNSUPPORTED
    try:
        return asyncio.run(Daemon(config, args.config, tracebacks=args.debug).run())
    except Exception as e:
        if args.debug:
            raise
        log.error("klpd failed: %s", e)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
