"""Journald fields through the JournalHandler's sender seam; the stderr format."""

from __future__ import annotations

import asyncio
import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import systemd.journal  # noqa: F401  (a test extra: missing it is a failure, not a skip)

from klpd.service.logs import (
    journal_handler,
    loop_exception_handler,
    setup_logging,
    stderr_is_journal,
)


class Journal:
    """Stands in for ``systemd.journal.send``."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def __call__(self, message: str, /, **fields: Any) -> None:
        self.entries.append({"MESSAGE": message, **fields})


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def test_structured_fields_reach_the_journal() -> None:
    journal = Journal()
    setup_logging("info", "journal", sender=journal)
    logging.getLogger("klpd.test").warning(
        "loading %s failed",
        "lpa__ext4",
        extra={
            "PATCH": "lpa",
            "OBJECT": "ext4",
            "MODULE": "lpa__ext4",
            "ACTION": "load",
            "ERRNO": 16,
            "REASON": None,
        },
    )
    [entry] = journal.entries
    assert entry["MESSAGE"] == "loading lpa__ext4 failed"
    assert entry["PATCH"] == "lpa"
    assert entry["OBJECT"] == "ext4"
    assert entry["MODULE"] == "lpa__ext4"
    assert entry["ACTION"] == "load"
    assert entry["ERRNO"] == 16
    assert entry["PRIORITY"] == "4"
    assert entry["LOGGER"] == "klpd.test"
    assert entry["SYSLOG_IDENTIFIER"] == "klpd"
    assert "REASON" not in entry  # None means "no such field"
    # LogRecord internals are not sent: journald would drop lower-case names anyway.
    assert not [k for k in entry if not k.isupper()]


def test_level_filters_journal() -> None:
    journal = Journal()
    setup_logging("warning", "journal", sender=journal)
    logging.getLogger("klpd.test").info("quiet")
    logging.getLogger("klpd.test").error("loud")
    assert [e["MESSAGE"] for e in journal.entries] == ["loud"]
    assert journal.entries[0]["PRIORITY"] == "3"


def test_exception_text_is_kept() -> None:
    journal = Journal()
    handler = journal_handler(journal)
    log = logging.getLogger("klpd.test.exc")
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            raise OSError(16, "Device or resource busy")
        except OSError:
            log.exception("modprobe failed", extra={"ERRNO": 16})
    finally:
        log.removeHandler(handler)
        log.propagate = True
    [entry] = journal.entries
    assert "Device or resource busy" in entry["MESSAGE"]
    assert "EXCEPTION_INFO" not in entry
    assert entry["ERRNO"] == 16


def test_stderr_appends_fields() -> None:
    out = io.StringIO()
    setup_logging("debug", "stderr", stream=out, environ={})
    logging.getLogger("klpd.x").debug(
        "loaded %s", "lpa__ext4", extra={"MODULE": "lpa__ext4", "PATCH": "lpa", "ACTION": "load"}
    )
    logging.getLogger("klpd.x").info("no fields")
    logging.getLogger("klpd.x").info("spaces", extra={"REASON": "object loaded", "ZED": 1})
    first, second, third = out.getvalue().splitlines()
    assert first.endswith("DEBUG klpd.x: loaded lpa__ext4 PATCH=lpa MODULE=lpa__ext4 ACTION=load")
    assert second.endswith("INFO klpd.x: no fields")
    assert third.endswith('INFO klpd.x: spaces REASON="object loaded" ZED=1')


def test_reconfigure_replaces_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", "stderr", stream=first, environ={})
    setup_logging("error", "stderr", stream=second, environ={})
    logging.getLogger("klpd.x").error("once")
    assert first.getvalue() == "" and "once" in second.getvalue()


def test_auto_picks_journal_when_stderr_is_the_journal_stream(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "w") as f:
        st = os.fstat(f.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert stderr_is_journal(env, f.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": "1:2"}, f.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": "junk"}, f.fileno())
        assert not stderr_is_journal({}, f.fileno())

    st2 = os.fstat(2)
    under_systemd = {"JOURNAL_STREAM": f"{st2.st_dev}:{st2.st_ino}"}
    journal = Journal()
    setup_logging("info", "auto", sender=journal, environ=under_systemd)
    logging.getLogger("klpd.x").info("hello", extra={"PATCH": "lpa"})
    assert journal.entries[0]["PATCH"] == "lpa"

    out = io.StringIO()
    setup_logging("info", "auto", stream=out, environ={})
    logging.getLogger("klpd.x").info("plain")
    assert "INFO klpd.x: plain" in out.getvalue()


HOSTILE = "a\nERROR klpd.fake: forged\x1b]0;owned\x07"


def test_stderr_line_cannot_be_forged() -> None:
    # issue 11, point 7: a task's comm reached stderr raw (a forged line, escape codes)
    out = io.StringIO()
    setup_logging("info", "stderr", stream=out, environ={})
    logging.getLogger("klpd.x").warning("blocked by %s", HOSTILE, extra={"REASON": HOSTILE})
    (line,) = out.getvalue().splitlines()
    assert "\x1b" not in line and "\x07" not in line
    assert "blocked by a\\nERROR klpd.fake: forged\\x1b]0;owned\\x07" in line


def test_journal_message_and_fields_are_escaped() -> None:
    journal = Journal()
    setup_logging("info", "journal", sender=journal)
    logging.getLogger("klpd.x").warning("blocked by %s", HOSTILE, extra={"REASON": HOSTILE})
    [entry] = journal.entries
    assert "\x1b" not in entry["MESSAGE"] and "\x1b" not in entry["REASON"]
    assert entry["REASON"] == "a\\nERROR klpd.fake: forged\\x1b]0;owned\\x07"


def test_loop_exceptions_are_one_line_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Seen in the daemon soak: the signal in flight when dbus-daemon died left a future
    "never retrieved", and asyncio logged it with a traceback at ERROR."""
    loop = asyncio.new_event_loop()
    try:
        loop.set_exception_handler(loop_exception_handler(tracebacks=False))
        with caplog.at_level(logging.DEBUG, logger="asyncio"):
            loop.call_exception_handler(
                {
                    "message": "Future exception was never retrieved",
                    "exception": BrokenPipeError(32, "Broken pipe"),
                }
            )
            loop.call_exception_handler({"message": "callback failed", "exception": KeyError("x")})
        lost, bug = caplog.records
        assert (lost.levelno, bug.levelno) == (logging.WARNING, logging.ERROR)
        assert lost.getMessage() == (
            "Future exception was never retrieved: BrokenPipeError(32, 'Broken pipe')"
        )
        assert lost.exc_info is None and bug.exc_info is None
        caplog.clear()
        loop.set_exception_handler(loop_exception_handler(tracebacks=True))  # --debug
        with caplog.at_level(logging.DEBUG, logger="asyncio"):
            loop.call_exception_handler({"message": "callback failed", "exception": KeyError("x")})
        assert caplog.records[0].exc_info is not None
    finally:
        loop.close()
