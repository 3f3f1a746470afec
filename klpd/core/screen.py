"""Whether klpd may load a module, from what its ``struct klp_patch`` says. Pure.

A split livepatch module ``<patch>__<object>`` must patch exactly the object its name says,
and must not be an atomic-replace patch (one of those replaces every livepatch on the
system, not only its own series: measured on 6.1 and 6.12). The facts come from
:mod:`klpd.kernel.klpinspect`, which reads the module file itself; a module's modinfo is only
its author's word.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from klpd.core.names import normalise


class Undeterminable(StrEnum):
    """What to do with a module whose replace flag (or objects) cannot be read."""

    REFUSE = "refuse"
    WARN = "warn"


@dataclass(frozen=True, slots=True)
class KlpFacts:
    """What inspection found; ``replace`` None and ``objects`` None when unknown, with
    ``why_unknown`` saying why (an unreadable file, no static klp_patch, ...)."""

    replace: bool | None
    objects: tuple[str, ...] | None
    why_unknown: str = ""


@dataclass(frozen=True, slots=True)
class Verdict:
    refusals: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def refused(self) -> bool:
        return bool(self.refusals)

    @property
    def replace(self) -> bool:
        return any(r.startswith(REPLACE_PREFIX) for r in self.refusals)


REPLACE_PREFIX = "atomic-replace patch"


def screen(obj: str, facts: KlpFacts, undeterminable: Undeterminable) -> Verdict:
    """The verdict on a module whose name says it patches ``obj``."""
    refusals: list[str] = []
    unknown: list[str] = []
    if facts.replace:
        refusals.append(
            f"{REPLACE_PREFIX} (its struct klp_patch sets .replace = true): loading it would "
            "replace every other livepatch on the system"
        )
    elif facts.replace is None:
        unknown.append(f"cannot tell whether it is an atomic-replace patch: {facts.why_unknown}")
    if facts.objects is None:
        if facts.replace is not None:
            unknown.append(f"cannot tell which objects it patches: {facts.why_unknown}")
    elif len(facts.objects) > 1:
        refusals.append(
            f"patches {len(facts.objects)} objects ({', '.join(facts.objects)}): "
            "a split livepatch module patches one"
        )
    elif facts.objects and normalise(facts.objects[0]) != obj:
        refusals.append(f"patches object {facts.objects[0]!r}, but its name says {obj!r}")
    elif not facts.objects:
        refusals.append("its struct klp_patch patches no object")
    if undeterminable is Undeterminable.REFUSE:
        return Verdict(tuple(refusals + unknown), ())
    return Verdict(tuple(refusals), tuple(unknown))
