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

from klpd.client.client import (
    EXIT_CONVERGED,
    EXIT_CONVERGING,
    EXIT_DEGRADED,
    EXIT_FAILED,
    EXIT_NOT_RUNNING,
    EXIT_PERMISSION,
    EXIT_USAGE,
    Client,
    Failure,
)
from klpd.client.verbs import BY_NAME, VERBS
from klpd.client.wire import system_bus_address

TYPE_CHECKING = False  # typing and argparse cost milliseconds on every poll: not at run time
if TYPE_CHECKING:
    import argparse
    from typing import Any

__all__ = [
    "EXIT_CONVERGED",
    "EXIT_CONVERGING",
    "EXIT_DEGRADED",
    "EXIT_FAILED",
    "EXIT_NOT_RUNNING",
    "EXIT_PERMISSION",
    "EXIT_USAGE",
    "Args",
    "build_parser",
    "main",
    "parse_fast",
]

_COMMON = ("bus", "debug", "json", "patch", "verb")
_OPTIONS = {o.dest: o for v in VERBS for o in v.options}


class Args:
    """The parsed command line (from :func:`parse_fast`, or argparse as a fallback); its
    fields are the common options and every verb's options (:data:`~klpd.client.verbs.VERBS`)."""

    __slots__ = (*_COMMON, *sorted(_OPTIONS))

    def __init__(self, verb: str, **values: Any) -> None:
        self.verb = verb
        self.bus: str | None = values.get("bus")
        self.json: bool = bool(values.get("json"))
        self.debug: bool = bool(values.get("debug"))
        self.patch: str = values.get("patch") or ""
        for dest, option in _OPTIONS.items():
            setattr(self, dest, values.get(dest, option.empty()))

    def __getattr__(self, name: str) -> Any:  # the verbs' options, for mypy
        raise AttributeError(name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Args) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__
        )

    def __repr__(self) -> str:
        return "Args(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__) + ")"


EPILOG = """\
exit codes: 0 converged, 1 converging (or wait timed out), 2 degraded, 3 failed,
4 klpd not running, 5 permission denied, 6 usage error or invalid argument.
status and wait exit with the state's code; other verbs exit 0 on success.
The bus is --bus, else $KLPD_BUS_ADDRESS, else the system bus."""


def parse_fast(argv: list[str]) -> Args | None:
    """The common command lines, parsed without argparse; None for anything else.

    argparse costs ~10-25 ms per run here (building the parser looks up gettext
    catalogs); it is still what prints --help and usage errors, and a test checks that
    both parsers, fed by the same :data:`~klpd.client.verbs.VERBS`, agree.
    """
    values: dict[str, Any] = {}
    positional: list[str] = []
    args = iter(argv)
    for arg in args:
        name, eq, inline = arg.partition("=")
        if name in ("--json", "--debug") and not eq:
            values[name[2:]] = True
            continue
        verb = BY_NAME.get(positional[0]) if positional else None
        option = verb.option(name) if verb is not None else None
        if option is not None and option.action == "store_true":
            if eq:
                return None
            values[option.dest] = True
            continue
        if name == "--bus" or option is not None:
            value = inline if eq else next(args, None)
            if value is None or (not eq and value.startswith("-")):
                return None
            if option is None:
                values["bus"] = value
            elif option.action == "append":
                values.setdefault(option.dest, []).append(value)
            else:
                try:
                    values[option.dest] = option.convert(value)
                except ValueError:
                    return None
            continue
        if arg.startswith("-"):
            return None
        positional.append(arg)
    if not positional or positional[0] not in BY_NAME:
        return None
    verb_name, rest = positional[0], positional[1:]
    if BY_NAME[verb_name].patch:
        if len(rest) != 1:
            return None
        values["patch"] = rest[0]
    elif rest:
        return None
    return Args(verb_name, **values)


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
    for verb in VERBS:
        p = sub.add_parser(verb.name, help=verb.help, description=verb.help)
        _common(p, argparse.SUPPRESS)  # options may come after the verb too
        if verb.patch:
            p.add_argument("patch", metavar="PATCH")
        for o in verb.options:
            if o.action == "store":
                p.add_argument(
                    o.flag, type=o.convert, default=o.default, metavar=o.metavar, help=o.help
                )
            elif o.action == "append":
                p.add_argument(o.flag, action="append", metavar=o.metavar, help=o.help)
            else:
                p.add_argument(o.flag, action=o.action, help=o.help)
    # inspect needs no daemon: it is not in VERBS (dispatched in main, imported lazily)
    p = sub.add_parser("inspect", help=INSPECT_HELP, description=INSPECT_HELP)
    add_inspect_arguments(p)
    return parser


INSPECT_HELP = (
    "would klpd load these module files? every check klpd makes before a load; no daemon "
    "needed (exit 0: all would load, 1: problems, each listed)"
)


def add_inspect_arguments(p: argparse.ArgumentParser) -> None:
    """``klpctl inspect``'s own arguments (the verb runs in :mod:`klpd.client.inspect`)."""
    p.add_argument("targets", nargs="+", metavar="FILE|MODULE")
    p.add_argument("--kernel", metavar="RELEASE", help="check vermagic against RELEASE")
    p.add_argument("--config", default=None, help="klpd's configuration (catalog, kernel)")
    p.add_argument("--btf", metavar="FILE", help="vmlinux BTF to take struct layouts from")


def _inspect_argv(argv: list[str]) -> list[str] | None:
    """The arguments of ``klpctl [OPTIONS] inspect ...`` for the inspect verb (global
    ``--json`` kept, ``--bus``/``--debug`` dropped: no bus is used); None for other verbs."""
    i, kept = 0, []
    while i < len(argv) and argv[i].startswith("-"):
        if argv[i] == "--json":
            kept.append("--json")
        i += 2 if argv[i] == "--bus" else 1
    if i >= len(argv) or argv[i] != "inspect":
        return None
    return kept + argv[i + 1 :]


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
    inspect_argv = _inspect_argv(argv)
    if inspect_argv is not None:  # no daemon needed; imported here to keep the fast start
        from klpd.client import inspect

        return inspect.main(inspect_argv)
    try:
        args = parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else 0
    try:
        client = Client(bus_address(args.bus))
        try:
            return BY_NAME[args.verb].run(client, args)
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
