"""klpctl's verbs, declared once: :data:`VERBS` feeds the fast command-line parser, argparse
(help, usage errors, the man page and the shell completion) and the dispatch in
:func:`klpd.client.ctl.main`. A verb's facts are its :class:`Verb`: its name, its help, whether it
takes a PATCH, its options, and the function that runs it.

Plain classes with ``__slots__`` (no dataclasses, no typing, no enum at run time): each costs
milliseconds at klpctl's start, which is on the path of every fleet poll.
"""

from __future__ import annotations

import sys
import time

from klpd.client.client import (
    EXIT_BY_STATE,
    EXIT_FAILED,
    EXIT_NOT_RUNNING,
    EXIT_USAGE,
    WAIT_DEFAULT,
    Client,
    Failure,
)
from klpd.client.render import render_blocking, render_patch, render_status
from klpd.client.wire import CallError, Signal
from klpd.core.text import escape_controls
from klpd.dbus import names

TYPE_CHECKING = False  # typing costs milliseconds on every poll: not at run time
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from klpd.client.ctl import Args

    Run = Callable[[Client, Args], int]


class Option:
    """One option of one verb, as argparse would declare it: ``action`` is ``"store"`` (a
    value, converted by ``convert``), ``"store_true"`` or ``"append"`` (repeatable)."""

    __slots__ = ("action", "convert", "default", "flag", "help", "metavar")

    def __init__(
        self,
        flag: str,
        help: str,
        *,
        action: str = "store",
        convert: Callable[[str], object] = str,
        metavar: str | None = None,
        default: object = None,
    ) -> None:
        self.flag, self.help, self.action, self.convert = flag, help, action, convert
        self.metavar, self.default = metavar, default

    @property
    def dest(self) -> str:
        return self.flag[2:]

    def empty(self) -> object:
        """The value when not given."""
        if self.action == "store_true":
            return False
        if self.action == "append":
            return []
        return self.default


class Verb:
    __slots__ = ("help", "name", "options", "patch", "run")

    def __init__(
        self,
        name: str,
        help: str,
        run: Run,
        *,
        patch: bool = False,
        options: tuple[Option, ...] = (),
    ) -> None:
        self.name, self.help, self.run, self.patch, self.options = name, help, run, patch, options

    def option(self, flag: str) -> Option | None:
        return next((o for o in self.options if o.flag == flag), None)


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
        transition = escape_controls(plan["transition"])
        print(f"(a transition of {transition} is running: klpd waits for it first)")
    if not plan["actions"]:
        print("nothing to do")
    for action in plan["actions"]:
        print(escape_controls(action["text"]))  # reasons can quote module files
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


VERBS: tuple[Verb, ...] = (
    Verb(
        "status", "overall state, every patch and object, pending, failures, blockers", cmd_status
    ),
    Verb("list", "patches with their modules and per-object state", cmd_list),
    Verb("show", "one patch in detail", cmd_show, patch=True),
    Verb("blocking", "tasks blocking the current transition, with kernel stacks", cmd_blocking),
    Verb(
        "wait",
        "wait until klpd settles; exit with its state's code (for rollout gates)",
        cmd_wait,
        options=(
            Option(
                "--timeout",
                f"give up after S seconds (default {WAIT_DEFAULT:g})",
                convert=float,
                metavar="S",
                default=WAIT_DEFAULT,
            ),
        ),
    ),
    Verb(
        "plan",
        "what a reconcile would do now, in order, with reasons; does none of it",
        cmd_plan,
        options=(
            Option("--rescan", "as after a rescan of the catalog (reload)", action="store_true"),
            Option(
                "--enable",
                "as after 'klpctl enable PATCH' (repeatable)",
                action="append",
                metavar="PATCH",
            ),
            Option(
                "--disable",
                "as after 'klpctl disable PATCH' (repeatable)",
                action="append",
                metavar="PATCH",
            ),
        ),
    ),
    Verb("reload", "rescan the patch catalog and reconcile (root or polkit)", _change("Reload")),
    Verb(
        "enable",
        "make a disabled patch desired again (root or polkit)",
        _change("EnablePatch", "patch"),
        patch=True,
    ),
    Verb(
        "disable",
        "retire a patch and keep it retired (root or polkit)",
        _change("DisablePatch", "patch"),
        patch=True,
    ),
    Verb(
        "monitor",
        "follow klpd's signals live",
        cmd_monitor,
        options=(Option("--count", "exit after N events", convert=int, metavar="N"),),
    ),
)
BY_NAME = {v.name: v for v in VERBS}
