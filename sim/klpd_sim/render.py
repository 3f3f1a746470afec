"""How the simulated kernel's state shows in sysfs and procfs, and in ``status``."""

from __future__ import annotations

from typing import Any

from klpd_sim.kernel import VMLINUX, Kernel
from klpd_sim.tree import Unit

_RO, _RW, _WO = 0o444, 0o644, 0o200


def render(kernel: Kernel) -> dict[str, Unit]:
    """sysfs and procfs as the kernel shows ``kernel``'s state."""
    units: dict[str, Unit] = {}
    for mod in kernel.modules.values():
        taint = mod.taint
        units[f"sys/module/{mod.name}"] = Unit(
            files={
                "initstate": (mod.initstate + "\n", _RO),
                "refcnt": (f"{mod.refcnt}\n", _RO),
                "taint": (taint + "\n", _RO),
            },
            dirs=frozenset({"holders"}),
            links={f"holders/{h}": f"../../{h}" for h in mod.holders},
        )
    transition = kernel.transition.patch if kernel.transition else None
    for patch in kernel.patches.values():
        files: dict[str, tuple[str, int]] = {
            "enabled": (f"{int(patch.enabled)}\n", _RW),
            "transition": (f"{int(patch.module == transition)}\n", _RO),
            "force": ("", _WO),
        }
        if kernel.profile.replace_attr:
            files["replace"] = (f"{int(patch.replace)}\n", _RO)
        if kernel.profile.stack_order_attr:
            files["stack_order"] = (f"{kernel.stack_order(patch.module)}\n", _RO)
        dirs: set[str] = set()
        for o in patch.objects.values():
            if kernel.profile.object_patched_attr:
                files[f"{o.name}/patched"] = (f"{int(o.patched)}\n", _RO)
            dirs.add(o.name)
            dirs.update(f"{o.name}/{f},1" for f in [*o.funcs, *o.nop_funcs])
        units[f"sys/kernel/livepatch/{patch.module}"] = Unit(files, frozenset(dirs))
    for task in kernel.tasks.values():
        where = "" if task.obj == VMLINUX else f" [{task.obj}]"
        stack = (
            "[<0>] __schedule+0x2f4/0x880\n"
            "[<0>] schedule+0x5a/0xd0\n"
            f"[<0>] {task.func}+0x4c/0x120{where}\n"
            "[<0>] do_syscall_64+0x55/0xb0\n"
            "[<0>] entry_SYSCALL_64_after_hwframe+0x6e/0xd8\n"
        )
        units[f"proc/{task.pid}"] = Unit(
            files={
                "comm": (task.comm + "\n", _RO),
                "patch_state": (f"{task.patch_state}\n", _RO),
                "stack": (stack, 0o400),
            }
        )
    return units


def snapshot(kernel: Kernel) -> dict[str, Any]:
    """The state as plain data, for ``klpd-sim status``."""
    tr = kernel.transition
    return {
        "release": kernel.release,
        "modules": {
            m.name: {
                "initstate": m.initstate,
                "refcnt": m.refcnt,
                "holders": sorted(m.holders),
                "livepatch": m.livepatch,
            }
            for m in kernel.modules.values()
        },
        "livepatches": {
            p.module: {
                "enabled": p.enabled,
                "replace": p.replace,
                "forced": p.forced,
                "transition": tr is not None and tr.patch == p.module,
                "objects": {o.name: o.patched for o in p.objects.values()},
            }
            for p in kernel.patches.values()
        },
        "transition": None if tr is None else {"patch": tr.patch, "target": tr.target},
        "functions": _functions(kernel),
        "tasks": [
            {"pid": t.pid, "comm": t.comm, "obj": t.obj, "patch_state": t.patch_state}
            for t in kernel.tasks.values()
        ],
    }


def _functions(kernel: Kernel) -> dict[str, dict[str, str | None]]:
    """Every function some patch patches, ``obj:func`` -> which patch's version runs (for a
    task not in transition) and what it returns (``None``: the original)."""
    out: dict[str, dict[str, str | None]] = {}
    for p in kernel.patches.values():
        for o in p.objects.values():
            for f in [*o.funcs, *o.nop_funcs]:
                live = kernel.live_version(o.name, f)
                out[f"{o.name}:{f}"] = {
                    "patch": live,
                    "output": kernel.patches[live].output if live else None,
                }
    return out
