"""modprobe and rmmod, and what their failures mean.

The module name has been validated (:mod:`klpd.core.names`) before it gets here, and ``--``
separates it from the options all the same.

Which file modprobe loads for a name is depmod's choice (its search order: ``updates/``
first by default, ``depmod.d`` can say otherwise). klpd vets the file it catalogued, so the
two must be the same file: :func:`klpd.kernel.catalog.scan_catalog` refuses a patch whose
module is installed more than once (naming every copy) instead of modelling depmod's order
(issue 11, point 8). With the default catalog (all of ``/lib/modules/$(uname -r)``) every
file modprobe could pick for that name is seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from klpd.core.names import validate_module_name
from klpd.kernel.run import RunResult, run


class Failure(StrEnum):
    NONE = ""
    BUSY = "busy"  # EBUSY: another transition runs; retry with backoff
    NOT_FOUND = "not-found"  # no such module file
    IN_USE = "in-use"  # rmmod: still referenced (enabled, or forced)
    NOT_LOADED = "not-loaded"  # rmmod: already gone (fine)
    OTHER = "other"


# kmod prints strerror() texts; LANG=C.UTF-8 keeps them in English.
_MARKERS: tuple[tuple[str, Failure], ...] = (
    ("Device or resource busy", Failure.BUSY),
    ("not found in directory", Failure.NOT_FOUND),
    ("is in use", Failure.IN_USE),
    ("is not currently loaded", Failure.NOT_LOADED),
)


@dataclass(frozen=True, slots=True)
class ModprobeResult:
    result: RunResult
    failure: Failure

    @property
    def ok(self) -> bool:
        return self.failure in (Failure.NONE, Failure.NOT_LOADED)

    def describe(self) -> str:
        return self.result.describe()


def classify(result: RunResult) -> Failure:
    if result.ok:
        return Failure.NONE
    for marker, failure in _MARKERS:
        if marker in result.stderr:
            return failure
    return Failure.OTHER


async def modprobe(cmd: Sequence[str], module: str, *, timeout: float) -> ModprobeResult:
    name = validate_module_name(module)
    res = await run([*cmd, "--", name], timeout=timeout)
    return ModprobeResult(res, classify(res))


async def rmmod(cmd: Sequence[str], module: str, *, timeout: float) -> ModprobeResult:
    name = validate_module_name(module)
    res = await run([*cmd, "--", name], timeout=timeout)
    return ModprobeResult(res, classify(res))
