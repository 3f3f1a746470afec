"""Logging: structured journald entries under systemd, plain lines on stderr otherwise.

Callers log with ``logging.getLogger(__name__)`` and ``%s`` arguments, and put facts in
UPPER_CASE extras, which become journal fields (``journalctl -u klpd PATCH=lpa``)::

    log.info("loaded %s", module, extra={"PATCH": p, "MODULE": module, "ACTION": "load"})

On stderr the same fields are appended as ``KEY=value``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any, Literal, TextIO

from klpd.core.text import escape_controls

Level = Literal["debug", "info", "warning", "error"]
Target = Literal["auto", "journal", "stderr"]
Sender = Callable[..., Any]

#: The fields klpd's modules use; any other UPPER_CASE extra is passed on as well.
FIELDS = ("PATCH", "OBJECT", "MODULE", "ACTION", "ERRNO", "REASON", "TRANSITION")
SYSLOG_IDENTIFIER = "klpd"

# journald silently drops a field whose name is not upper case letters, digits and "_",
# or that starts with "_" (trusted fields) or a digit, or is longer than 64 bytes.
_FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
# Sent by systemd-python's handler but useless in the journal: the repr of a tuple.
_DROPPED = frozenset({"EXCEPTION_INFO", "MESSAGE"})
_MARK = "_klpd_handler"


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The UPPER_CASE extras of ``record`` that have a value."""
    return {
        k: v
        for k, v in vars(record).items()
        if _FIELD_NAME.fullmatch(k) and v is not None and k not in _DROPPED
    }


def journal_fields_only(send: Sender) -> Sender:
    """Wrap a journal sender so that only valid field names reach it.

    systemd-python's ``JournalHandler.emit`` forwards the whole ``LogRecord.__dict__``
    (``msg``, ``args``, ``created``, ...); journald would drop those lower-case names
    anyway, after they were serialised and sent.
    """

    def send_fields(message: str, /, **fields: Any) -> Any:
        kept = {
            k: (
                escape_controls(v if isinstance(v, str) else str(v))
                if not isinstance(v, int)
                else v
            )
            for k, v in fields.items()
            if _FIELD_NAME.fullmatch(k) and v is not None and k not in _DROPPED
        }
        return send(_escape_keeping_lines(message), **kept)

    return send_fields


def journal_handler(sender: Sender | None = None) -> logging.Handler:
    """systemd-python's JournalHandler; ``sender`` replaces ``journal.send`` (tests)."""
    from systemd import journal

    return journal.JournalHandler(  # type: ignore[no-any-return]  # systemd-python: untyped
        sender_function=journal_fields_only(sender or journal.send),
        SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER,
    )


def _escape_keeping_lines(text: str) -> str:
    """Controls escaped, line breaks kept: journald stores the message as one field, so a
    line cannot forge an entry, and tracebacks stay readable."""
    return "\n".join(escape_controls(line) for line in text.split("\n"))


def _value(v: Any) -> str:
    text = escape_controls(str(v))
    if not text or any(c.isspace() or c in "\"'=" for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


class FieldsFormatter(logging.Formatter):
    """``LEVEL logger: message KEY=value ...``, fields in a stable order.

    The message is one line whatever its arguments hold: control characters (a task's
    comm, a module's description) are escaped, so nobody can forge a log line or send
    escape codes to the terminal reading it. A traceback follows on its own lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        copy = logging.makeLogRecord(record.__dict__)
        copy.message = escape_controls(record.message)
        return super().formatMessage(copy)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = record_fields(record)
        order = [k for k in FIELDS if k in fields] + sorted(k for k in fields if k not in FIELDS)
        if not order:
            return text
        line, sep, rest = text.partition("\n")  # keep fields on the message's first line
        pairs = " ".join(f"{k}={_value(fields[k])}" for k in order)
        return f"{line} {pairs}{sep}{rest}"


def stderr_is_journal(environ: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """True if ``fd`` is the stream systemd connected to the journal (JOURNAL_STREAM)."""
    env = os.environ if environ is None else environ
    dev, sep, ino = env.get("JOURNAL_STREAM", "").partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError):
        return False


def _journal_available() -> bool:
    try:
        from systemd import journal  # noqa: F401
    except ImportError:
        return False
    return True


def setup_logging(
    level: Level = "info",
    target: Target = "auto",
    *,
    stream: TextIO | None = None,
    sender: Sender | None = None,
    environ: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Configure the root logger; calling it again (a reload) replaces klpd's handler."""
    use_journal = target == "journal" or (target == "auto" and stderr_is_journal(environ))
    fallback = use_journal and sender is None and not _journal_available()
    handler: logging.Handler
    if use_journal and not fallback:
        handler = journal_handler(sender)
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
        # Under systemd (target "stderr"), journald already stamps each line.
        stamp = "" if stderr_is_journal(environ) else "%(asctime)s "
        handler.setFormatter(FieldsFormatter(stamp + "%(levelname)s %(name)s: %(message)s"))
    setattr(handler, _MARK, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    if fallback:
        logging.getLogger(__name__).warning(
            "logging.target = %r but systemd-python is not installed; logging to stderr",
            target,
        )
    return handler


__all__ = [
    "FIELDS",
    "FieldsFormatter",
    "journal_fields_only",
    "journal_handler",
    "record_fields",
    "setup_logging",
    "stderr_is_journal",
]


LoopHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]


def loop_exception_handler(tracebacks: bool) -> LoopHandler:
    """asyncio's last resort (a future's exception nobody retrieved, a callback that raised)
    as one line in klpd's log like every other error; the traceback only with ``--debug``.

    A connection error there is a D-Bus message cut short by dbus-daemon going away:
    dbus-fast drops the future of each signal it sends, so the one in flight when the bus
    died ends "never retrieved". klpd reconnects; that is a warning, not an error."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if tracebacks:
            loop.default_exception_handler(context)
            return
        exc = context.get("exception")
        message = str(context.get("message") or "unhandled exception in the event loop")
        level = logging.WARNING if isinstance(exc, ConnectionError) else logging.ERROR
        logging.getLogger("asyncio").log(level, "%s: %r", message, exc)

    return handle
