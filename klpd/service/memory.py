"""What the orchestrator remembers between passes that sysfs cannot tell again.

Everything else is read from the kernel on every pass (that is what makes klpd crash-only);
this is the rest, each set with its own meaning and its own verbs:

- ``failures``: module -> why its last attempt failed (shown in reports, LastError);
- ``avoided``: modules whose last load failed; the planner does not try them again until
  their object comes again, an operator enables the patch, or a reload (``forget``);
- ``incompatible``: modules built for another kernel (vermagic): never tried;
- ``refused``: patch -> why klpd will not load it at all (atomic-replace seen at run time,
  a refusal of a pre-load hook); lasts until klpd restarts;
- ``quarantined``: module -> why the boot-loop guard will not load it (the machine went
  down right after its load); until an operator enables its patch (persisted by the guard);
- ``pinned``: modules disabled but still referenced (a forced unpatching): they can never be
  removed, nothing waits for them any more; lasts until reboot (and survives a reload).

Operator overrides are not here: they are persisted (:mod:`klpd.service.overrides`).
"""

from __future__ import annotations

from collections.abc import Iterable

from klpd.core.model import Catalog


class Memory:
    __slots__ = ("avoided", "failures", "incompatible", "pinned", "quarantined", "refused")

    def __init__(self) -> None:
        self.failures: dict[str, str] = {}
        self.avoided: set[str] = set()
        self.incompatible: set[str] = set()
        self.refused: dict[str, str] = {}
        self.pinned: set[str] = set()
        self.quarantined: dict[str, str] = {}

    # --- modules ----------------------------------------------------------------------

    def record_failure(self, module: str, message: str) -> None:
        """``module`` failed (to load, to apply, to disable, to unload): say why, and do not
        load it again until :meth:`retry` or :meth:`forget`."""
        self.failures[module] = message
        self.avoided.add(module)

    def record_success(self, module: str) -> None:
        """``module`` was loaded: its last failure is history."""
        self.failures.pop(module, None)

    def module_came(self, module: str, catalog: Catalog) -> None:
        """A module came: every patch's failed ``P__<module>`` gets another chance (its object
        came again), and ``module`` itself, if it had failed, loaded after all."""
        for patch in catalog.patches.values():
            pm = patch.modules.get(module)
            if pm is not None:
                self.retry(pm.module)
        self.loaded_after_all(module)

    def loaded_after_all(self, module: str) -> None:
        """``module``'s add uevent came: it loaded. A failure recorded for it (a modprobe that
        timed out while the kernel still loaded it, seen on 6.12 under TCG) is history,
        unless it is quarantined."""
        if module in self.failures and module not in self.quarantined:
            self.failures.pop(module)
            self.avoided.discard(module)

    def retry(self, module: str) -> None:
        """Give a failed module another chance (its object came again)."""
        self.avoided.discard(module)

    def forget(self, modules: Iterable[str]) -> None:
        """Everything about these modules (an operator enabled their patch)."""
        for module in modules:
            self.avoided.discard(module)
            self.failures.pop(module, None)

    def forget_failures(self) -> None:
        """A reload: every failed module gets another chance; a pinned one stays a fact."""
        self.avoided.clear()
        keep = self.pinned | set(self.quarantined)
        self.failures = {k: v for k, v in self.failures.items() if k in keep}

    def mark_incompatible(self, incompatible: dict[str, str]) -> None:
        """After a catalog scan: module -> why it cannot load on this kernel."""
        self.incompatible = set(incompatible)
        self.failures.update(incompatible)

    def pin(self, module: str, message: str) -> bool:
        """A disabled module that stays referenced for good; True the first time."""
        if module in self.pinned:
            return False
        self.pinned.add(module)
        self.failures[module] = message
        return True

    def quarantine(self, module: str, why: str) -> None:
        self.quarantined[module] = why
        self.failures[module] = why

    def release(self, module: str) -> None:
        """An operator cleared ``module``'s quarantine."""
        if self.quarantined.pop(module, None) is not None:
            self.failures.pop(module, None)

    def not_to_load(self) -> frozenset[str]:
        return frozenset(self.avoided | self.incompatible | set(self.quarantined))

    # --- patches ----------------------------------------------------------------------

    def refuse(self, patch: str, why: str) -> bool:
        """Never load ``patch`` again (until restart); True the first time."""
        if patch in self.refused:
            return False
        self.refused[patch] = why
        return True

    def unrefuse(self, patch: str) -> None:
        """A refusal that no longer holds (the module file was replaced by a good one)."""
        self.refused.pop(patch, None)

    def refused_patches(self) -> frozenset[str]:
        return frozenset(self.refused)
