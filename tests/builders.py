"""Small builders for catalogs and kernel states, shared by the pure-logic tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from klpd.core.model import (
    Catalog,
    KernelState,
    LivePatchState,
    LoadedModule,
    ObjectState,
    Patch,
    PatchModule,
)


def patch(
    name: str,
    objects: Iterable[str] = (),
    *,
    series: str = "",
    version: int = 1,
    replace: bool = False,
) -> Patch:
    mods = {}
    for obj in ("vmlinux", *objects):
        mods[obj] = PatchModule(
            module=f"{name}__{obj}",
            patch=name,
            obj=obj,
            path=f"/lib/modules/x/extra/{name}__{obj}.ko",
            series=series or name,
            version=version,
            replace=replace,
        )
    return Patch(name=name, modules=mods, series=series or name, version=version)


def catalog(*patches: Patch) -> Catalog:
    return Catalog(patches={p.name: p for p in patches})


def state(
    targets: Iterable[str] = (),
    applied: Iterable[str] = (),
    *,
    stale: Iterable[str] = (),
    coming: Iterable[str] = (),
    transition: Mapping[str, bool] | None = None,
    disabled: Iterable[str] = (),
    forced_stale: Iterable[str] = (),
) -> KernelState:
    """``applied`` livepatch modules are loaded and enabled; ``stale`` are loaded with no
    livepatch left; ``disabled`` are being disabled (enabled=0, transition=1)."""
    modules: dict[str, LoadedModule] = {}
    lps: dict[str, LivePatchState] = {}
    for t in targets:
        modules[t] = LoadedModule(t, "live", 0)
    for t in coming:
        modules[t] = LoadedModule(t, "coming", 0)
    for m in applied:
        modules[m] = LoadedModule(m, "live", 1)
        obj = m.split("__", 1)[1]
        lps[m] = LivePatchState(
            m,
            enabled=True,
            transition=bool((transition or {}).get(m)),
            objects={obj: ObjectState(obj, patched=obj == "vmlinux" or obj in modules)},
        )
    for m in disabled:
        modules[m] = LoadedModule(m, "live", 1)
        lps[m] = LivePatchState(m, enabled=False, transition=True)
    for m in stale:
        modules[m] = LoadedModule(m, "live", 0)
    for m in forced_stale:
        modules[m] = LoadedModule(m, "live", 1)
    return KernelState(release="6.1.0-test", modules=modules, livepatches=lps)
