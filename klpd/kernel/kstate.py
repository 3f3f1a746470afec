"""Read the kernel's module and livepatch state from sysfs and procfs.

Only attributes that exist are read: ``patched`` appeared in 6.1, ``replace`` in 6.11,
``stack_order`` in 6.14. Every reader tolerates a directory vanishing under it (a patch
that finishes disabling removes its sysfs directory while we read it).
"""

from __future__ import annotations

import os
from pathlib import Path

from klpd.core.model import BlockingTask, KernelState, LivePatchState, LoadedModule, ObjectState

# /proc/<pid>/patch_state: -1 KLP_UNDEFINED (no transition), 0 unpatched, 1 patched.
PATCH_STATE_UNDEFINED = -1


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError, ProcessLookupError, PermissionError):
        return None
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _read_bool(path: Path) -> bool | None:
    value = _read_int(path)
    return None if value is None else value != 0


def _subdirs(path: Path) -> list[str]:
    try:
        with os.scandir(path) as it:
            return [e.name for e in it if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def read_release(proc_root: Path) -> str:
    return _read(proc_root / "sys/kernel/osrelease") or os.uname().release


def livepatch_supported(sysfs_root: Path) -> bool:
    return (sysfs_root / "kernel/livepatch").is_dir()


def read_modules(sysfs_root: Path) -> dict[str, LoadedModule]:
    """Loadable modules only: built-ins have a /sys/module dir but no ``initstate``."""
    out: dict[str, LoadedModule] = {}
    for name in _subdirs(sysfs_root / "module"):
        state = _read(sysfs_root / "module" / name / "initstate")
        if state is None:
            continue
        out[name] = LoadedModule(name, state, _read_int(sysfs_root / "module" / name / "refcnt"))
    return out


def _read_object(d: Path, name: str) -> ObjectState:
    funcs = tuple(sorted(f for f in _subdirs(d) if "," in f))
    return ObjectState(name=name, patched=_read_bool(d / "patched"), functions=funcs)


def read_livepatch(sysfs_root: Path, name: str) -> LivePatchState | None:
    d = sysfs_root / "kernel/livepatch" / name
    enabled = _read_bool(d / "enabled")
    if enabled is None:
        return None
    objects = {o: _read_object(d / o, o) for o in _subdirs(d)}
    return LivePatchState(
        name=name,
        enabled=enabled,
        transition=bool(_read_bool(d / "transition")),
        replace=_read_bool(d / "replace"),
        stack_order=_read_int(d / "stack_order"),
        objects=objects,
    )


def read_livepatches(sysfs_root: Path) -> dict[str, LivePatchState]:
    out: dict[str, LivePatchState] = {}
    for name in _subdirs(sysfs_root / "kernel/livepatch"):
        lp = read_livepatch(sysfs_root, name)
        if lp is not None:
            out[name] = lp
    return out


def read_kernel_state(sysfs_root: Path, proc_root: Path, release: str = "") -> KernelState:
    return KernelState(
        release=release or read_release(proc_root),
        modules=read_modules(sysfs_root),
        livepatches=read_livepatches(sysfs_root),
    )


def transition_in_progress(sysfs_root: Path, module: str) -> bool:
    """The one file polled while a transition runs (and only then)."""
    return bool(_read_bool(sysfs_root / "kernel/livepatch" / module / "transition"))


def write_attr(sysfs_root: Path, module: str, attr: str, value: str) -> None:
    """Write ``enabled`` or ``force``; raises OSError (EBUSY, EINVAL, ENOENT) as the kernel says."""
    if attr not in ("enabled", "force"):
        raise ValueError(f"refusing to write livepatch attribute {attr!r}")
    path = sysfs_root / "kernel/livepatch" / module / attr
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _task_dirs(proc_root: Path) -> list[tuple[int, Path]]:
    """Every task (thread), not only thread-group leaders: ``patch_state`` is per task and
    a transition can be blocked by any thread. Falls back to ``/proc/<pid>`` where there is
    no ``task/`` directory."""
    out: list[tuple[int, Path]] = []
    try:
        pids = [e for e in os.listdir(proc_root) if e.isdigit()]
    except FileNotFoundError:
        return out
    for pid in pids:
        tasks = proc_root / pid / "task"
        try:
            tids = [t for t in os.listdir(tasks) if t.isdigit()]
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            out.append((int(pid), proc_root / pid))
            continue
        out += [(int(t), tasks / t) for t in tids]
    return sorted(out)


def blocking_tasks(proc_root: Path, target_patched: bool) -> tuple[BlockingTask, ...]:
    """Tasks whose ``patch_state`` is not the target state while a transition runs."""
    target = 1 if target_patched else 0
    out: list[BlockingTask] = []
    for tid, d in _task_dirs(proc_root):
        state = _read_int(d / "patch_state")
        if state is None or state in (PATCH_STATE_UNDEFINED, target):
            continue
        out.append(
            BlockingTask(
                pid=tid,
                comm=_read(d / "comm") or "?",
                patch_state=state,
                stack=_read(d / "stack"),
            )
        )
    return tuple(out)
