"""The one way klpd runs a command: explicit argv, never a shell.

stdin is /dev/null, ``LANG=C.UTF-8`` so messages are parseable, stderr captured, a timeout
that kills the child, and one result type whose ``describe()`` turns "killed by signal" and
"exit 127: not found" into specific messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunResult:
    argv: tuple[str, ...]
    returncode: int  # negative: killed by that signal; 127: not found; 124: timed out
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        """One line saying what went wrong, with the command's own words."""
        cmd = self.argv[0] if self.argv else "?"
        if self.returncode == 0:
            return f"{cmd}: ok"
        if self.returncode == 124 and not self.stderr:
            return f"{cmd}: timed out after {self.seconds:.1f}s"
        if self.returncode == 127 and not self.stderr:
            return f"{cmd}: command not found"
        if self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = str(-self.returncode)
            return f"{cmd}: killed by signal {name}"
        msg = self.stderr.strip().splitlines()
        if not msg:
            return f"{cmd}: exit {self.returncode}"
        return f"{msg[-1]} (exit {self.returncode})"  # kmod names itself: "modprobe: ERROR: …"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG"))}
    env["LANG"] = "C.UTF-8"
    return env


async def run(argv: Sequence[str], *, timeout: float) -> RunResult:
    """Run ``argv`` and return its result; never raises for the command's own failures."""
    args = tuple(argv)
    log.debug("+ %s", " ".join(args))
    start = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_env(),
            start_new_session=True,  # its own process group: a timeout kills its children too
        )
    except FileNotFoundError:
        return RunResult(args, 127, "", "", time.monotonic() - start)
    except PermissionError as e:
        return RunResult(args, 126, "", str(e), time.monotonic() - start)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        # The whole group: a wrapper's children keep the pipes open, and communicate() below
        # would wait for them. ProcessLookupError: every one of them exited as time ran out
        # (asyncio's kill() raised it once the pipes had closed, and the pass failed).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = await proc.communicate()
        return RunResult(args, 124, out.decode(errors="replace"), "", time.monotonic() - start)
    rc = proc.returncode if proc.returncode is not None else -1
    return RunResult(
        args,
        rc,
        out.decode(errors="replace"),
        err.decode(errors="replace"),
        time.monotonic() - start,
    )
