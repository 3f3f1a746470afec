"""Softdep pre-arming seen from the removal policy.

With softdeps, kmod inserts ``P__m`` and then ``m``: between the two the object is absent,
and the ``remove`` policy would take ``P__m`` away again (seen on Debian's 7.3: klpd, woken
by ``P__m``'s add uevent, disabled it, and ``m`` came up unpatched). A ``P__m`` that appears
while softdeps are on is left alone for :data:`ARMING_GRACE` seconds; then the policy
applies again (a reconcile is asked for when the grace ends).

The grace starts at ``P__m``'s add uevent or at the first reading of the kernel that shows
``P__m`` loaded and ``m`` absent, whichever comes first: on Debian's 6.12 the pass woken by
the first softdep module's uevent read the second one (its uevent not yet heard), found its
object absent and disabled it; ``m`` then came up without that patch until klpd loaded it
again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from klpd.core.model import Catalog, KernelState
from klpd.core.names import VMLINUX

# kmod inserts m right after P__m: a second at most, even in a loaded TCG guest.
ARMING_GRACE = 10.0


class Arming:
    def __init__(
        self,
        on_expiry: Callable[[str], None],
        grace: float = ARMING_GRACE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._until: dict[str, float] = {}
        self._on_expiry = on_expiry
        self._grace = grace
        self._clock = clock
        self._last: KernelState | None = None  # the previous reading (see observed)

    def added(self, module: str, catalog: Catalog, softdep: bool) -> None:
        """A module appeared: an object module ``P__m`` of the catalog, with softdeps on,
        gets its grace."""
        pm = catalog.by_module().get(module)
        if softdep and pm is not None and pm.obj != VMLINUX:
            self.note(module)

    def observed(
        self, state: KernelState, catalog: Catalog, softdep: bool, heard: Iterable[str] = ()
    ) -> None:
        """A new reading of the kernel, made after udev told of ``heard`` (added or removed
        modules): each object module ``P__m`` of the catalog among them that it shows loaded
        gets its grace; so does one absent from the previous reading, with ``m`` absent (its
        add uevent may not have been heard yet; the first reading arms none that way)."""
        prev, self._last = self._last, state
        for module in heard:
            if module in state.modules:
                self.added(module, catalog, softdep)
        if prev is None or not softdep:
            return
        by_module = catalog.by_module()
        names = state.reread_since(prev)
        for module in state.modules if names is None else names:
            pm = by_module.get(module)
            if (
                pm is not None
                and pm.obj != VMLINUX
                and module in state.modules
                and module not in prev.modules
                and pm.obj not in state.modules
            ):
                self.note(module)

    def note(self, module: str) -> None:
        """``module`` (an object module ``P__m``) just appeared."""
        self._until[module] = self._clock() + self._grace
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.call_later(self._grace + 0.05, self._on_expiry, f"{module} armed long enough")

    def now(self) -> frozenset[str]:
        """The modules still within their grace."""
        t = self._clock()
        self._until = {m: u for m, u in self._until.items() if u > t}
        return frozenset(self._until)
