"""The boot-loop guard: a patch module that crashed the machine is not loaded again.

klpd starts early in boot and loads every patch; a module that panics the kernel would be
loaded again on every boot. So, as Canonical's Livepatch client does with its lockfile:

- before each load, klpd records durably (write, fsync, rename, fsync the directory) which
  module it is loading and the boot id (``/proc/sys/kernel/random/boot_id``, new on every
  boot);
- once the module is applied and the machine has stayed up ``grace_period`` seconds, the
  record is closed;
- klpd starting in a *new* boot that finds a record still open knows the machine went down
  while, or shortly after, that module was loaded: the module is **quarantined** (never
  loaded again) until an operator clears it. The decision is logged with its evidence.

When several records are open (loads a few seconds apart, then a crash), only the most
recent load is quarantined: it is the likeliest culprit, and quarantining every patch
loaded in the first minute after any crash (a power cut, an unrelated panic) would leave
the host unpatched. A module that crashes later keeps being caught, one per crashing boot.

Nothing here runs the loop; the orchestrator calls :meth:`BootGuard.opening`,
:meth:`BootGuard.applied`, :meth:`BootGuard.settle` and reads :attr:`quarantined`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from klpd.core.model import PatchModule
from klpd.service.atomicfile import make_private_directory, write_atomic

log = logging.getLogger(__name__)

FILE_NAME = "bootguard.json"


@dataclass(frozen=True, slots=True)
class OpenLoad:
    module: str
    boot_id: str
    started_at: float  # unix time the load began
    applied_at: float | None = None  # unix time it was applied (None: not yet)


@dataclass(frozen=True, slots=True)
class Quarantine:
    module: str
    boot_id: str  # the boot that went down
    detected_boot_id: str  # the boot that noticed
    started_at: float
    applied_at: float | None
    detected_at: float

    @property
    def reason(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started_at))
        stage = "after it was applied" if self.applied_at is not None else "while it was loading"
        return (
            f"quarantined: the machine went down {stage} (loaded {when} in boot "
            f"{self.boot_id}); `klpctl enable` of its patch clears it"
        )


def read_boot_id(proc_root: str | os.PathLike[str]) -> str:
    """This boot's id; "" if the kernel does not say (the guard then cannot tell boots
    apart and never quarantines)."""
    try:
        return (Path(proc_root) / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


class BootGuard:
    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        boot_id: str,
        *,
        grace_period: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(state_dir) / FILE_NAME
        self.boot_id = boot_id
        self.grace_period = grace_period
        self._clock = clock
        self._open: dict[str, OpenLoad] = {}
        self.quarantined: dict[str, Quarantine] = {}
        self._start()

    # --- start-up: what the last boot left ---------------------------------------------------

    def _start(self) -> None:
        data = self._read()
        for entry in _entries(data, "quarantined"):
            try:
                self.quarantined[entry["module"]] = Quarantine(**entry)
            except (TypeError, KeyError):
                log.error("%s: ignoring a malformed quarantine entry %r", self.path, entry)
        left: list[OpenLoad] = []
        for entry in _entries(data, "open"):
            try:
                left.append(OpenLoad(**entry))
            except TypeError:
                log.error("%s: ignoring a malformed open record %r", self.path, entry)
        same_boot = [o for o in left if o.boot_id == self.boot_id]
        earlier = [o for o in left if o.boot_id != self.boot_id]
        # klpd restarted in the same boot: the machine did not go down; keep watching them,
        # from now if klpd died before it saw the module applied.
        now = self._clock()
        self._open = {
            o.module: o
            if o.applied_at is not None
            else OpenLoad(o.module, o.boot_id, o.started_at, now)
            for o in same_boot
        }
        if earlier and self.boot_id:
            culprit = max(earlier, key=lambda o: o.started_at)
            q = Quarantine(
                culprit.module,
                culprit.boot_id,
                self.boot_id,
                culprit.started_at,
                culprit.applied_at,
                self._clock(),
            )
            self.quarantined[culprit.module] = q
            log.error(
                "boot guard: quarantining %s: boot %s ended with its load record open "
                "(load began %.3f, applied %s, this boot %s, noticed %.3f); other open "
                "records, not quarantined: %s",
                culprit.module,
                culprit.boot_id,
                culprit.started_at,
                "never" if culprit.applied_at is None else f"{culprit.applied_at:.3f}",
                self.boot_id,
                q.detected_at,
                ", ".join(f"{o.module} ({o.started_at:.3f})" for o in earlier if o is not culprit)
                or "none",
                extra={"MODULE": culprit.module, "ACTION": "quarantine"},
            )
        if earlier or data.get("boot_id", self.boot_id) != self.boot_id:
            self._write()

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.error("boot guard: ignoring unreadable %s: %s", self.path, e)
            return {}
        if not isinstance(data, dict):
            log.error("boot guard: ignoring %s: not a JSON object", self.path)
            return {}
        return data

    def _write(self) -> None:
        """Durably: the record must be on disk before the load it describes begins. A state
        directory that cannot be written is logged, not fatal: patches still load (they
        are security fixes); only the guard cannot protect against a boot loop."""
        payload = {
            "boot_id": self.boot_id,
            "open": [asdict(o) for o in self._open.values()],
            "quarantined": [asdict(q) for q in self.quarantined.values()],
        }
        try:
            make_private_directory(self.path.parent)
            write_atomic(self.path, json.dumps(payload, indent=1, sort_keys=True) + "\n")
        except OSError as e:
            log.error("boot guard: cannot write %s: %s; loads are not guarded", self.path, e)

    # --- the orchestrator's verbs ----------------------------------------------------------

    def opening(self, module: str) -> None:
        """Before loading ``module``: record it (durably) as open."""
        self._open[module] = OpenLoad(module, self.boot_id, self._clock())
        self._write()

    def applied(self, module: str) -> None:
        """``module`` is applied: its grace period starts now."""
        o = self._open.get(module)
        if o is not None:
            self._open[module] = OpenLoad(o.module, o.boot_id, o.started_at, self._clock())
            self._write()

    def failed(self, module: str) -> None:
        """The load failed cleanly (the machine is up): nothing to watch."""
        if self._open.pop(module, None) is not None:
            self._write()

    def settle(self) -> float | None:
        """Close the records whose grace period is over; seconds until the next one is due
        (None: nothing left to watch)."""
        now = self._clock()
        due = [
            m
            for m, o in self._open.items()
            if o.applied_at is not None and now - o.applied_at >= self.grace_period
        ]
        for m in due:
            del self._open[m]
        if due:
            self._write()
        waits = [
            o.applied_at + self.grace_period - now
            for o in self._open.values()
            if o.applied_at is not None
        ]
        return max(0.0, min(waits)) if waits else None

    @property
    def open_modules(self) -> tuple[str, ...]:
        return tuple(self._open)

    def clear(self, module: str) -> bool:
        """An operator lifts ``module``'s quarantine; False if it was not quarantined."""
        if self.quarantined.pop(module, None) is None:
            return False
        log.warning("boot guard: quarantine of %s cleared", module, extra={"MODULE": module})
        self._write()
        return True


def _entries(data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key, [])
    return value if isinstance(value, list) else []


class BootGuardHook:
    """The guard as an orchestrator load hook: a record opened before each load, its grace
    period started when the module is applied, closed by a timer on the running loop (no
    polling: one timer for the next record due)."""

    __slots__ = ("_timer", "guard")

    def __init__(self, guard: BootGuard) -> None:
        self.guard = guard
        self._timer: asyncio.TimerHandle | None = None

    def before_load(self, module: PatchModule) -> str | None:
        self.guard.opening(module.module)
        return None

    def applied(self, module: PatchModule) -> None:
        self.guard.applied(module.module)
        self.schedule()

    def schedule(self) -> None:
        """Close what is due; arm the timer for the next record (if any)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = self.guard.settle()
        if due is not None:
            self._timer = asyncio.get_running_loop().call_later(due, self.schedule)
