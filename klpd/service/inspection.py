"""The daemon's side of module inspection: every catalog module is read before it is loaded.

:class:`ModuleInspector` inspects each module file once per file version (keyed like the
catalog's modinfo cache: mtime, size, inode), with the struct layout of the running kernel
(its BTF), and screens it by :func:`klpd.core.screen.screen`. The orchestrator asks it for
the refusals after each catalog scan (so status shows them from the start) and again right
before each load (a file replaced since the scan is read again).

The screening after a scan runs in a worker thread (off the event loop) while the loop may
ask about one module (before a load): the cache is guarded by a lock held only around the
dictionary, never while a file is read, so the loop never waits for the worker's files.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from klpd.core.model import Catalog, PatchModule
from klpd.core.screen import KlpFacts, Undeterminable, Verdict, screen
from klpd.kernel.klpinspect import InspectError, Inspection, KlpLayout, inspect_module

log = logging.getLogger(__name__)

_FileKey = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class Inspected:
    key: _FileKey
    inspection: Inspection | None  # None: unreadable (``error`` says why)
    error: str = ""

    @property
    def facts(self) -> KlpFacts:
        i = self.inspection
        if i is None:
            return KlpFacts(None, None, self.error)
        return KlpFacts(i.replace, i.object_names if i.objects else None, i.why_unknown)


class ModuleInspector:
    __slots__ = ("_cache", "_layout", "_lock", "undeterminable")

    def __init__(self, layout: KlpLayout, undeterminable: Undeterminable) -> None:
        self._layout = layout
        self.undeterminable = undeterminable
        self._cache: dict[str, Inspected] = {}
        self._lock = threading.Lock()

    def inspect(self, pm: PatchModule) -> Inspected:
        try:
            st = os.stat(pm.path)
        except OSError as e:
            return Inspected((0, 0, 0), None, e.strerror or str(e))
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            cached = self._cache.get(pm.path)
        if cached is not None and cached.key == key:
            return cached
        try:
            got = Inspected(key, inspect_module(pm.path, self._layout))
        except InspectError as e:
            got = Inspected(key, None, e.reason)
        with self._lock:
            self._cache[pm.path] = got
        return got

    def verdict(self, pm: PatchModule) -> Verdict:
        return screen(pm.obj, self.inspect(pm).facts, self.undeterminable)

    def is_replace(self, pm: PatchModule) -> bool:
        i = self.inspect(pm).inspection
        return i is not None and bool(i.replace)

    def screen_catalog(self, catalog: Catalog) -> dict[str, str]:
        """Patch -> why it is refused, for every catalog module that fails inspection
        (a patch is refused as a whole: its main module cannot go without the others'
        guarantees, and a replace module anywhere in it is refused). Warnings are logged."""
        paths = {pm.path for pm in catalog.by_module().values()}
        with self._lock:
            for gone in self._cache.keys() - paths:
                del self._cache[gone]
        out: dict[str, str] = {}
        for pm in sorted(catalog.by_module().values(), key=lambda m: m.module):
            v = self.verdict(pm)
            for w in v.warnings:
                log.warning("%s: %s", pm.module, w, extra={"MODULE": pm.module})
            if v.refused and pm.patch not in out:
                out[pm.patch] = f"{pm.module}: {'; '.join(v.refusals)}"
        return out

    # --- the orchestrator's load hook -----------------------------------------------------

    def before_load(self, module: PatchModule) -> str | None:
        if not os.path.exists(module.path):
            return None  # gone since the scan: modprobe fails and says so (not a refusal)
        v = self.verdict(module)
        return f"{module.module}: {'; '.join(v.refusals)}" if v.refused else None

    def applied(self, module: PatchModule) -> None:
        pass

    def replace_modules(self, modules: Mapping[str, PatchModule]) -> set[str]:
        """Of ``modules`` (name -> module), those whose file says atomic-replace."""
        return {name for name, pm in modules.items() if self.is_replace(pm)}
