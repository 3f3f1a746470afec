"""The kernel as the orchestrator sees it: a small port (read state, modprobe, rmmod, write
an attribute) and its real implementation over sysfs, procfs and kmod.

Everything the orchestrator, the executor and the transition watcher do to the kernel goes
through :class:`KernelPort`, so in-process tests drive them with a fake kernel
deterministically (``tests/unit/fakeport.py``), and the real daemon uses :class:`SysfsPort`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from klpd.core.model import BlockingTask, KernelState, LivePatchState
from klpd.kernel import kstate
from klpd.kernel.kview import KernelView
from klpd.kernel.modprobe import ModprobeResult, modprobe, rmmod
from klpd.service.config import KernelConfig


class KernelPort(Protocol):
    """What klpd reads from and does to the kernel. Writes raise ``OSError`` as the kernel
    says (``EBUSY``, ``EINVAL``, ``ENOENT``); modprobe/rmmod never raise for a failure, they
    return it classified."""

    def supported(self) -> bool:
        """``/sys/kernel/livepatch`` exists."""

    def read_state(self) -> KernelState:
        """Everything, read again."""

    def read_changes(self, touched: Iterable[str]) -> KernelState:
        """The state after klpd's own action on ``touched`` modules: what can have changed
        since the last read (see :mod:`klpd.kernel.kview`), at the cost of that."""

    def read_livepatch(self, module: str) -> LivePatchState | None: ...

    def in_transition(self, module: str) -> bool:
        """The one attribute polled while a transition runs (and only then)."""

    def blocking_tasks(self, target_patched: bool) -> tuple[BlockingTask, ...]: ...

    async def modprobe(self, module: str) -> ModprobeResult: ...

    async def rmmod(self, module: str) -> ModprobeResult: ...

    def write_attr(self, module: str, attr: str, value: str) -> None:
        """Write ``enabled`` or ``force`` of livepatch ``module``."""


class SysfsPort:
    """The real kernel: :mod:`klpd.kernel.kstate` and :mod:`klpd.kernel.modprobe`."""

    __slots__ = ("_kernel", "_release", "_timeout", "_view")

    def __init__(self, kernel: KernelConfig, release: str, modprobe_timeout: float) -> None:
        self.configure(kernel, release, modprobe_timeout)

    def configure(self, kernel: KernelConfig, release: str, modprobe_timeout: float) -> None:
        """A reloaded configuration may move the roots or change the commands."""
        self._kernel, self._release, self._timeout = kernel, release, modprobe_timeout
        self._view = KernelView(Path(kernel.sysfs_root), release)

    @property
    def _sysfs(self) -> Path:
        return Path(self._kernel.sysfs_root)

    def supported(self) -> bool:
        return kstate.livepatch_supported(self._sysfs)

    def read_state(self) -> KernelState:
        return self._view.full()

    def read_changes(self, touched: Iterable[str]) -> KernelState:
        self._view.touch(touched)
        return self._view.refresh()

    def read_livepatch(self, module: str) -> LivePatchState | None:
        return kstate.read_livepatch(self._sysfs, module)

    def in_transition(self, module: str) -> bool:
        return kstate.transition_in_progress(self._sysfs, module)

    def blocking_tasks(self, target_patched: bool) -> tuple[BlockingTask, ...]:
        return kstate.blocking_tasks(Path(self._kernel.proc_root), target_patched)

    async def modprobe(self, module: str) -> ModprobeResult:
        return await modprobe(self._kernel.modprobe, module, timeout=self._timeout)

    async def rmmod(self, module: str) -> ModprobeResult:
        return await rmmod(self._kernel.rmmod, module, timeout=self._timeout)

    def write_attr(self, module: str, attr: str, value: str) -> None:
        kstate.write_attr(self._sysfs, module, attr, value)
