"""klpctl: klpd's command line client, over D-Bus.

Fast to start on purpose (it is on the path of every fleet poll): standard library only,
through :mod:`klpd.client.wire`; no dbus_fast, asyncio, pydantic or klpd.service.config. It works
on the JSON of ``Describe()`` as plain dicts, so it does not import klpd.core.status either.

Exit codes (docs/dbus.md): 0 converged, 1 converging (or ``wait`` timed out), 2 degraded,
3 failed, 4 klpd not running, 5 permission denied, 6 usage error or invalid argument.
``status`` and ``wait`` exit with the state's code; the other verbs exit 0 on success.
"""

from __future__ import annotations

import os
import sys
import time

from klpd.client.render import (
    MalformedJSON,
    loads,
    render_blocking,
    render_patch,
    render_status,
)
from klpd.client.wire import CallError, Connection, Signal, WireError, system_bus_address
from klpd.core.text import escape_controls
from klpd.dbus import names

TYPE_CHECKING = False  # typing and argparse cost milliseconds on every poll: not at run time
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any

EXIT_CONVERGED = 0
EXIT_CONVERGING = 1
EXIT_DEGRADED = 2
EXIT_FAILED = 3
EXIT_NOT_RUNNING = 4
EXIT_PERMISSION = 5
EXIT_USAGE = 6

EXIT_BY_STATE = {
    "converged": EXIT_CONVERGED,
    "converging": EXIT_CONVERGING,
    "degraded": EXIT_DEGRADED,
    "failed": EXIT_FAILED,
}
WAIT_DEFAULT = 300.0
_NOT_RUNNING = (
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.UnknownObject",
)
_DENIED = (names.ERROR_ACCESS_DENIED, "org.freedesktop.DBus.Error.AccessDenied")
_INVALID = (names.ERROR_INVALID_ARGUMENT, names.ERROR_UNKNOWN_PATCH)


class Failure(Exception):
    """A message for stderr and the exit code that goes with it."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Client:
    """The calls klpctl makes, each turned into a :class:`Failure` when it fails."""

    def __init__(self, address: str) -> None:
        self.address = address
        try:
            self.conn = Connection(address)
        except (WireError, OSError) as e:
            raise Failure(EXIT_NOT_RUNNING, f"klpd is not reachable: {e}") from None

    def call(self, member: str, signature: str = "", *args: Any, **kw: Any) -> list[Any]:
        try:
            return self.conn.call(
                names.BUS_NAME, names.OBJECT_PATH, names.INTERFACE, member, signature, args, **kw
            )
        except CallError as e:
            raise _failure_of(e, self.address) from None
        except (WireError, OSError) as e:
            raise Failure(EXIT_NOT_RUNNING, f"lost the bus at {self.address}: {e}") from None

    def loads(self, text: str) -> Any:
        try:
            return loads(text)
        except MalformedJSON as e:
            raise Failure(EXIT_FAILED, str(e)) from None

    def wait_for_name(self, deadline: float) -> bool:
        """True once klpd owns its bus name (at once, or by NameOwnerChanged before
        ``deadline``); False if it did not appear in time."""
        rule = (
            "type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',"
            f"arg0='{names.BUS_NAME}'"
        )
        if self._has_owner():
            return True
        self.conn.add_match(rule)  # before asking again: a start in between is not lost
        if self._has_owner():
            return True
        while (left := deadline - time.monotonic()) > 0:
            sig = self.conn.next_signal(left)
            if sig is not None and sig.member == "NameOwnerChanged" and sig.body[2]:
                return True
        return False

    def _has_owner(self) -> bool:
        try:
            reply = self.conn.call(
                "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                "NameHasOwner", "s", (names.BUS_NAME,),
            )  # fmt: skip
        except (CallError, WireError, OSError) as e:
            raise Failure(EXIT_NOT_RUNNING, f"lost the bus at {self.address}: {e}") from None
        return bool(reply[0])

    def wait_settled(self, seconds: float) -> str:
        """klpd's state once it has nothing left to do, or "converging" at the timeout."""
        try:
            return str(self.call("WaitSettled", "d", seconds, timeout=seconds + 30)[0])
        except Failure as e:
            if "UnknownMethod" not in str(e):
                raise
        # an older klpd: WaitConverged said true once idle, whatever the result
        (settled,) = self.call("WaitConverged", "d", seconds, timeout=seconds + 30)
        return str(self.describe()["state"]) if settled else "converging"

    def describe(self) -> dict[str, Any]:
        return self.describe_text()[1]

    def describe_text(self) -> tuple[str, dict[str, Any]]:
        text: str = self.call("Describe")[0]
        return text, self.loads(text)


def _failure_of(e: CallError, address: str) -> Failure:
    if e.name in _NOT_RUNNING:
        return Failure(EXIT_NOT_RUNNING, f"klpd is not running ({names.BUS_NAME} on {address})")
    if e.name in _DENIED:
        return Failure(EXIT_PERMISSION, f"permission denied: {e.message}")
    if e.name in _INVALID:
        return Failure(EXIT_USAGE, e.message)
    if e.name == "org.freedesktop.DBus.Error.NoReply" and "disconnected" in e.message:
        return Failure(EXIT_NOT_RUNNING, f"klpd went away: {e.message}")
    if e.name == "org.freedesktop.DBus.Error.NoReply":
        return Failure(EXIT_FAILED, f"klpd did not answer: {e.message}")
    return Failure(EXIT_FAILED, f"{e.name.removeprefix(names.ERROR_PREFIX)}: {e.message}")


class Args:
    """The parsed command line (from :func:`parse_fast`, or argparse as a fallback)."""

    __slots__ = (
        "bus", "count", "debug", "disable", "enable", "json", "patch", "rescan", "timeout", "verb"
    )  # fmt: skip

    def __init__(self, verb: str, **values: Any) -> None:
        self.verb = verb
        self.bus: str | None = values.get("bus")
        self.json: bool = bool(values.get("json"))
        self.debug: bool = bool(values.get("debug"))
        self.patch: str = values.get("patch") or ""
        self.timeout: float = values.get("timeout", WAIT_DEFAULT)
        self.count: int | None = values.get("count")
        self.rescan: bool = bool(values.get("rescan"))
        self.enable: list[str] = list(values.get("enable") or [])
        self.disable: list[str] = list(values.get("disable") or [])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Args) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__
        )

    def __repr__(self) -> str:
        return "Args(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__) + ")"


def _print_json(value: object) -> None:
    import json

    print(json.dumps(value, sort_keys=True), flush=True)


# --- verbs ------------------------------------------------------------------------------


def cmd_status(c: Client, a: Args) -> int:
    text, snap = c.describe_text()
    print(text if a.json else render_status(snap))  # Describe() is the --json form
    return EXIT_BY_STATE.get(snap["state"], EXIT_FAILED)


def cmd_list(c: Client, a: Args) -> int:
    snap = c.describe()
    if a.json:
        _print_json({"schema_version": snap["schema_version"], "patches": snap["patches"]})
        return 0
    for p in snap["patches"]:
        print("\n".join(render_patch(p)))
    return 0


def cmd_show(c: Client, a: Args) -> int:
    patch = c.loads(c.call("DescribePatch", "s", a.patch)[0])
    _print_json(patch) if a.json else print("\n".join(render_patch(patch, detailed=True)))
    return 0


def cmd_blocking(c: Client, a: Args) -> int:
    keys = ("pid", "comm", "patch_state", "stack")
    tasks = [dict(zip(keys, t, strict=True)) for t in c.call("ListBlockingTasks")[0]]
    for t in tasks:
        t["stack"] = t["stack"] or None
    if a.json:
        _print_json({"schema_version": 1, "blocking": tasks})
    elif tasks:
        print("\n".join(render_blocking(tasks)))
    else:
        print("no task blocks a transition")
    return 0


def cmd_wait(c: Client, a: Args) -> int:
    if not 0 <= a.timeout <= names.WAIT_MAX_SECONDS:
        raise Failure(EXIT_USAGE, f"--timeout must be 0..{names.WAIT_MAX_SECONDS:.0f} s")
    deadline = time.monotonic() + a.timeout
    while True:
        # klpd may be starting (early boot, a restart): wait for its name, within the timeout
        if not c.wait_for_name(deadline):
            raise Failure(
                EXIT_NOT_RUNNING, f"klpd did not appear on {c.address} within {a.timeout:g} s"
            )
        left = max(0.0, deadline - time.monotonic())
        try:
            state = c.wait_settled(left)
        except Failure as e:
            if e.code == EXIT_NOT_RUNNING and time.monotonic() < deadline:
                continue  # klpd went away while we waited: wait for the next one
            raise
        if state == "converging":
            message = f"not converged after {a.timeout:g} s (state: converging)"
            print(f"klpctl: {message}", file=sys.stderr)
        elif state != "converged":
            print(f"klpctl: klpd settled {state}", file=sys.stderr)
        return EXIT_BY_STATE.get(state, EXIT_FAILED)


def cmd_plan(c: Client, a: Args) -> int:
    options: dict[str, tuple[str, Any]] = {}
    if a.rescan:
        options["rescan"] = ("b", True)
    if a.enable:
        options["enable"] = ("as", a.enable)
    if a.disable:
        options["disable"] = ("as", a.disable)
    text = c.call("Plan", "a{sv}", options)[0]
    if a.json:
        print(text)
        return 0
    plan = c.loads(text)
    if plan["transition"]:
        print(f"(a transition of {plan['transition']} is running: klpd waits for it first)")
    if not plan["actions"]:
        print("nothing to do")
    for action in plan["actions"]:
        print(action["text"])
    return 0


def _change(member: str, *args: str) -> Callable[[Client, Args], int]:
    def run(c: Client, a: Args) -> int:
        values = [getattr(a, name) for name in args]
        # polkit may ask for a password through an agent only when someone is there
        c.call(member, "s" * len(values), *values, timeout=330, interactive=sys.stdin.isatty())
        return 0

    return run


def cmd_monitor(c: Client, a: Args) -> int:
    c.conn.add_match(f"type='signal',sender='{names.BUS_NAME}',path='{names.OBJECT_PATH}'")
    c.conn.add_match(
        "type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',"
        f"arg0='{names.BUS_NAME}'"
    )
    # Only the current owner of the name is believed (anyone can send anyone a signal):
    # learnt after the matches are in, so nothing sent in between is missed.
    owner = _name_owner(c)
    print(f"klpctl: following {names.BUS_NAME} on {c.address}", file=sys.stderr, flush=True)
    seen = 0
    while a.count is None or seen < a.count:
        sig = c.conn.next_signal()
        if sig is None:
            continue
        event, owner = _event_of(sig, owner)
        if event is None:
            continue
        seen += 1
        event = {"time": time.time(), **event}
        if a.json:
            _print_json(event)
        else:
            fields = " ".join(
                f"{k}={escape_controls(str(v))}"
                for k, v in event.items()
                if k not in ("time", "event")
            )
            print(f"{time.strftime('%H:%M:%S')} {event['event']} {fields}", flush=True)
    return 0


def _name_owner(c: Client) -> str:
    try:
        (owner,) = c.conn.call(
            _BUS, "/org/freedesktop/DBus", _BUS, "GetNameOwner", "s", (names.BUS_NAME,)
        )
    except CallError:
        return ""  # not running: its NameOwnerChanged will say when it starts
    return str(owner)


_BUS = "org.freedesktop.DBus"
_PROPERTIES = "org.freedesktop.DBus.Properties"


def _event_of(sig: Signal, owner: str) -> tuple[dict[str, Any] | None, str]:
    """The event a signal means, if it is believable, and the name's owner after it.

    Believed: ``NameOwnerChanged`` for io.github.Klpd1 from the bus itself, and klpd's
    own signals (right path, interface and signature) from the name's current owner.
    Anything else — another sender, an empty or mistyped body — is no event."""
    if sig.sender == _BUS:
        if (
            sig.member == "NameOwnerChanged"
            and sig.interface == _BUS
            and sig.path == "/org/freedesktop/DBus"
            and sig.signature == "sss"
            and sig.body[0] == names.BUS_NAME
        ):
            new_owner = sig.body[2]
            return {"event": "KlpdStarted" if new_owner else "KlpdStopped"}, new_owner
        return None, owner
    if not owner or sig.sender != owner or sig.path != names.OBJECT_PATH:
        return None, owner
    ours = sig.interface == names.INTERFACE and sig.member in names.SIGNALS
    if ours and sig.signature == "sss":
        patch, module, detail = sig.body
        return {"event": sig.member, "patch": patch, "module": module, "detail": detail}, owner
    changed = sig.interface == _PROPERTIES and sig.member == "PropertiesChanged"
    if changed and sig.signature == "sa{sv}as" and sig.body[0] == names.INTERFACE:
        return {"event": sig.member, **sig.body[1]}, owner
    return None, owner


VERBS: dict[str, Callable[[Client, Args], int]] = {
    "status": cmd_status,
    "list": cmd_list,
    "show": cmd_show,
    "blocking": cmd_blocking,
    "wait": cmd_wait,
    "plan": cmd_plan,
    "reload": _change("Reload"),
    "enable": _change("EnablePatch", "patch"),
    "disable": _change("DisablePatch", "patch"),
    "monitor": cmd_monitor,
}


# --- command line -----------------------------------------------------------------------

EPILOG = """\
exit codes: 0 converged, 1 converging (or wait timed out), 2 degraded, 3 failed,
4 klpd not running, 5 permission denied, 6 usage error or invalid argument.
status and wait exit with the state's code; other verbs exit 0 on success.
The bus is --bus, else $KLPD_BUS_ADDRESS, else the system bus."""


_WITH_PATCH = ("show", "enable", "disable")
_VERB_OPTIONS = {"wait": ("--timeout", float), "monitor": ("--count", int)}


def parse_fast(argv: list[str]) -> Args | None:
    """The common command lines, parsed without argparse; None for anything else.

    argparse costs ~10-25 ms per run here (building the parser looks up gettext
    catalogs); it is still what prints --help and usage errors, and a test checks that
    both parsers agree.
    """
    values: dict[str, Any] = {}
    positional: list[str] = []
    args = iter(argv)
    for arg in args:
        name, eq, inline = arg.partition("=")
        if name in ("--json", "--debug") and not eq:
            values[name[2:]] = True
            continue
        verb_option = _VERB_OPTIONS.get(positional[0]) if positional else None
        if name == "--bus" or (verb_option and name == verb_option[0]):
            value = inline if eq else next(args, None)
            if value is None or (not eq and value.startswith("-")):
                return None
            if name == "--bus":
                values["bus"] = value
                continue
            try:
                values[name[2:]] = verb_option[1](value) if verb_option else None
            except ValueError:
                return None
            continue
        if arg.startswith("-"):
            return None
        positional.append(arg)
    if not positional or positional[0] not in VERBS:
        return None
    verb, rest = positional[0], positional[1:]
    if verb in _WITH_PATCH:
        if len(rest) != 1:
            return None
        values["patch"] = rest[0]
    elif rest:
        return None
    return Args(verb, **values)


def _common(p: argparse.ArgumentParser, default: object) -> None:
    p.add_argument(
        "--bus",
        metavar="ADDRESS",
        default=default,
        help="D-Bus address, or 'system' / 'session' (default: system bus)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        default=default,
        help="machine-readable output (the schema of Describe())",
    )
    p.add_argument("--debug", action="store_true", default=default, help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="klpctl",
        description="Query and control klpd, the split-livepatch orchestrator.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(parser, None)
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    helps = {
        "status": "overall state, every patch and object, pending, failures, blockers",
        "list": "patches with their modules and per-object state",
        "show": "one patch in detail",
        "blocking": "tasks blocking the current transition, with kernel stacks",
        "wait": "wait until klpd settles; exit with its state's code (for rollout gates)",
        "plan": "what a reconcile would do now, in order, with reasons; does none of it",
        "reload": "rescan the patch catalog and reconcile (root or polkit)",
        "enable": "make a disabled patch desired again (root or polkit)",
        "disable": "retire a patch and keep it retired (root or polkit)",
        "monitor": "follow klpd's signals live",
    }
    for verb, text in helps.items():
        p = sub.add_parser(verb, help=text, description=text)
        _common(p, argparse.SUPPRESS)  # options may come after the verb too
        if verb in ("show", "enable", "disable"):
            p.add_argument("patch", metavar="PATCH")
        if verb == "wait":
            p.add_argument(
                "--timeout",
                type=float,
                default=WAIT_DEFAULT,
                metavar="S",
                help=f"give up after S seconds (default {WAIT_DEFAULT:g})",
            )
        if verb == "plan":
            p.add_argument(
                "--rescan", action="store_true", help="as after a rescan of the catalog (reload)"
            )
            for what in ("enable", "disable"):
                p.add_argument(
                    f"--{what}",
                    action="append",
                    metavar="PATCH",
                    help=f"as after 'klpctl {what} PATCH' (repeatable)",
                )
        if verb == "monitor":
            p.add_argument(
                "--count", type=int, default=None, metavar="N", help="exit after N events"
            )
    return parser


def bus_address(option: str | None) -> str:
    chosen = option or os.environ.get("KLPD_BUS_ADDRESS") or "system"
    if chosen == "system":
        return system_bus_address()
    if chosen == "session":
        address = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
        if not address:
            raise Failure(EXIT_USAGE, "no session bus: DBUS_SESSION_BUS_ADDRESS is not set")
        return address
    return chosen


def parse_args(argv: list[str]) -> Args:
    """Raises SystemExit for --help (0) and usage errors (argparse's 2)."""
    fast = parse_fast(argv)
    if fast is not None:
        return fast
    ns = build_parser().parse_args(argv)
    return Args(**{k: v for k, v in vars(ns).items() if v is not None})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["inspect"]:  # no daemon needed; imported here to keep the fast start
        from klpd.client import inspect

        return inspect.main(argv[1:])
    try:
        args = parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else 0
    try:
        client = Client(bus_address(args.bus))
        try:
            return VERBS[args.verb](client, args)
        finally:
            client.conn.close()
    except Failure as e:
        print(f"klpctl: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:
        if args.debug:
            raise
        print(
            f"klpctl: unexpected error: {type(e).__name__}: {e} (--debug shows more)",
            file=sys.stderr,
        )
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
