"""The blocking half of a rescan, kept off the event loop.

A catalog scan reads module files, and a hostile ``*__*`` file costs up to ~0.5 s to
refuse (issue 11, docs/security.md); the inspection of new or changed modules reads them
again. :class:`Scanner` does both in a worker thread (:func:`asyncio.to_thread`), one scan
at a time, and hands the result back to the loop, which adopts it
(:meth:`klpd.service.orchestrator.Orchestrator.rescan_off_loop`): meanwhile the loop keeps
answering D-Bus, uevents and the watchdog. The worker touches nothing but files and the two
file caches (:class:`~klpd.kernel.catalog.ModinfoCache`,
:class:`~klpd.service.inspection.ModuleInspector`), each locked around its dictionary only.
Crash-only as before: nothing is adopted until a scan is whole, and reconcile plans from
sysfs and the adopted catalog.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

from klpd.core.model import Catalog
from klpd.kernel.catalog import ModinfoCache, scan_catalog
from klpd.service.screening import Screening

ScanFn = Callable[[Sequence[Path], Catalog], Catalog]
Found = tuple[Catalog, dict[str, str] | None]  # the catalog, the inspection's refusals


class Scanner:
    __slots__ = ("_cache", "_lock", "_scan", "_screening", "directories")

    def __init__(self, screening: Screening, scan: ScanFn | None = None) -> None:
        self._cache = ModinfoCache()
        self._scan: ScanFn = scan or (lambda dirs, prev: scan_catalog(dirs, prev, self._cache))
        self._screening = screening
        self._lock = asyncio.Lock()
        self.directories: list[Path] = []

    def scan(self, previous: Catalog, dirs: Sequence[Path] | None = None) -> Found:
        """Scan and inspect here and now (blocking): in-process tests, benches, the worker."""
        catalog = self._scan(self.directories if dirs is None else dirs, previous)
        return catalog, self._screening.inspect(catalog)

    async def off_loop(self, previous: Catalog) -> Found:
        """:meth:`scan` in a worker thread; scans are serialised."""
        async with self._lock:
            return await asyncio.to_thread(self.scan, previous, list(self.directories))

    async def catalog_only(self, previous: Catalog) -> Catalog:
        """The catalog alone (a dry run's), in a worker thread."""
        return await asyncio.to_thread(self._scan, list(self.directories), previous)
