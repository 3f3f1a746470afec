"""``klpd-sim``: set up, run and drive a simulated kernel.

klpd-sim --root DIR init [--release R] [--spec FILE]
klpd-sim --root DIR run [--transition-ms 100] [--no-uevents]
klpd-sim --root DIR modprobe [--] NAME      # kmod's messages and exit codes
klpd-sim --root DIR rmmod [--] NAME
klpd-sim --root DIR stall OBJ [--comm NAME] [--func FUNC]
klpd-sim --root DIR unstall OBJ
klpd-sim --root DIR status
klpd-sim --root DIR stop
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
from enum import StrEnum
from pathlib import Path
from typing import Any

# Clients (modprobe, rmmod) start often: they import neither asyncio nor the spec code.
BUILTIN_NAMES = ["demo", "realkernel"]  # klpd_sim.spec.BUILTIN_SPECS


class Verb(StrEnum):
    INIT = "init"
    RUN = "run"
    MODPROBE = "modprobe"
    RMMOD = "rmmod"
    STALL = "stall"
    UNSTALL = "unstall"
    STATUS = "status"
    EVENTS = "events"
    STOP = "stop"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="klpd-sim", description="A simulated kernel for klpd.")
    p.add_argument("--root", type=Path, required=True, help="the simulated machine's root")
    p.add_argument("--debug", action="store_true", help="log at debug level")
    sub = p.add_subparsers(dest="verb", required=True)
    init = sub.add_parser(Verb.INIT, help="create the directory layout and module files")
    init.add_argument("--release", default=None, help="kernel release (6.1.0-sim)")
    init.add_argument("--spec", type=Path, default=None, help="a TOML spec file")
    init.add_argument(
        "--builtin",
        choices=BUILTIN_NAMES,
        default="demo",
        help="built-in module set when there is no --spec (default: demo)",
    )
    run = sub.add_parser(Verb.RUN, help="run the simulated kernel until SIGTERM")
    run.add_argument(
        "--transition-ms",
        type=float,
        default=100.0,
        help="shortest transition (6.1 under qemu TCG, with --retry-ms 1000: ~800)",
    )
    run.add_argument(
        "--retry-ms",
        type=float,
        default=0.0,
        help="complete transitions only on multiples of this (kernel: 1000); 0: at once",
    )
    run.add_argument(
        "--fake-signal-ms",
        type=float,
        default=15000.0,
        help="when a stalled transition wakes interruptible sleepers (kernel: ~15 s)",
    )
    run.add_argument("--no-uevents", action="store_true", help="send no netlink uevents")
    for verb in (Verb.MODPROBE, Verb.RMMOD):
        sp = sub.add_parser(verb, help=f"{verb} a module, as kmod's {verb} does")
        sp.add_argument("name", help="module name (after an optional --)")
    stall = sub.add_parser(Verb.STALL, help="put a task to sleep in OBJ's patched function")
    stall.add_argument("obj")
    stall.add_argument("--comm", default="klpd-sim-stall")
    stall.add_argument("--func", default=None)
    stall.add_argument(
        "--interruptible", action="store_true", help="a fake signal from the kernel wakes it"
    )
    unstall = sub.add_parser(Verb.UNSTALL, help="wake the tasks sleeping in OBJ")
    unstall.add_argument("obj")
    status = sub.add_parser(Verb.STATUS, help="print the modules, livepatches and tasks")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    events = sub.add_parser(Verb.EVENTS, help="print this sim's module uevents as they come")
    events.add_argument("--count", type=int, default=0, help="stop after N events")
    sub.add_parser(Verb.STOP, help="stop the running simulated kernel")
    return p


def request(root: Path, req: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """One request to the running sim; raises OSError if it does not answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(root / "sim.sock"))
        s.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    reply: dict[str, Any] = json.loads(buf)
    return reply


def _client(root: Path, req: dict[str, Any]) -> int:
    try:
        reply = request(root, req)
    except (OSError, ValueError) as e:
        print(f"klpd-sim: the simulated kernel in {root} does not answer: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(reply.get("stdout", ""))
    sys.stderr.write(reply.get("stderr", ""))
    return int(reply.get("rc", 1))


def format_status(state: dict[str, Any]) -> str:
    """``klpd-sim status`` for a person."""
    tr = state.get("transition")
    lines = [f"kernel {state['release']}"]
    if tr:
        what = "patching" if tr["target"] == 1 else "unpatching"
        lines[0] += f", transition: {tr['patch']} ({what})"
    lines.append("modules:")
    for name, m in sorted(state["modules"].items()):
        extra = "  livepatch" if m["livepatch"] else ""
        if m["holders"]:
            extra += "  used by " + ",".join(m["holders"])
        lines.append(f"  {name:<24} {m['initstate']:<7} refcnt {m['refcnt']}{extra}")
    lines.append("livepatches:")
    for name, p in state["livepatches"].items():
        objs = " ".join(f"{o}:{'patched' if v else 'unpatched'}" for o, v in p["objects"].items())
        flags = "".join(f" {f}" for f in ("replace", "forced", "transition") if p[f])
        lines.append(f"  {name:<24} enabled={int(p['enabled'])}{flags}  {objs}")
    if state["tasks"]:
        lines.append("sleeping tasks:")
        for t in state["tasks"]:
            lines.append(
                f"  {t['pid']:<6} {t['comm']:<16} in {t['obj']}  patch_state {t['patch_state']}"
            )
    return "\n".join(lines) + "\n"


def _status(root: Path, as_json: bool) -> int:
    try:
        reply = request(root, {"cmd": "status"})
    except (OSError, ValueError) as e:
        print(f"klpd-sim: the simulated kernel in {root} does not answer: {e}", file=sys.stderr)
        return 1
    out = reply.get("stdout", "")
    sys.stdout.write(out if as_json else format_status(json.loads(out)))
    return 0


def _events(root: Path, count: int) -> int:
    import pyudev

    monitor = pyudev.Monitor.from_netlink(pyudev.Context(), "udev")
    monitor.filter_by("module")
    monitor.start()
    mine = str(root.resolve())
    seen = 0
    try:
        for dev in iter(monitor.poll, None):
            if dev.properties.get("KLPD_SIM_ROOT") != mine:
                continue
            print(f"{dev.properties.get('SEQNUM')} {dev.action} {dev.sys_name}", flush=True)
            seen += 1
            if count and seen >= count:
                break
    except KeyboardInterrupt:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s.%(msecs)03d klpd-sim: %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    root: Path = args.root
    verb = Verb(args.verb)
    if verb is Verb.INIT:
        from klpd_sim.spec import BUILTIN_SPECS, DEFAULT_RELEASE, init_root, load_spec

        spec = (
            load_spec(args.spec, args.release)
            if args.spec
            else BUILTIN_SPECS[args.builtin](args.release or DEFAULT_RELEASE)
        )
        init_root(root, spec)
        return 0
    if verb is Verb.RUN:
        import asyncio

        from klpd_sim.server import SimServer

        server = SimServer(
            root,
            args.transition_ms / 1000.0,
            uevents=not args.no_uevents,
            fake_signal_s=args.fake_signal_ms / 1000.0,
            retry_s=args.retry_ms / 1000.0,
        )
        asyncio.run(server.run())
        return 0
    if verb in (Verb.MODPROBE, Verb.RMMOD):
        return _client(root, {"cmd": verb.value, "name": args.name})
    if verb is Verb.STALL:
        return _client(
            root,
            {
                "cmd": "stall",
                "name": args.obj,
                "comm": args.comm,
                "func": args.func,
                "interruptible": args.interruptible,
            },
        )
    if verb is Verb.UNSTALL:
        return _client(root, {"cmd": "unstall", "name": args.obj})
    if verb is Verb.STATUS:
        return _status(root, args.json)
    if verb is Verb.EVENTS:
        return _events(root, args.count)
    return _client(root, {"cmd": verb.value})


if __name__ == "__main__":
    sys.exit(main())
