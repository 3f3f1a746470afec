"""What klpctl shows people: the ``Describe()`` JSON (as plain dicts) rendered as text.

Client side, standard library only (klpctl's start-up budget: see docs/dbus.md), and no
klpd.core.status import: it works on the JSON, which is the versioned contract. Every
string shown went through :func:`klpd.core.text.escape_controls` (``_e``): task names come
from any user and descriptions from module files, and root reads this on a terminal.
"""

from __future__ import annotations

import time

from klpd.core.text import escape_controls as _e

TYPE_CHECKING = False  # typing costs ~3 ms per klpctl run: for mypy only
if TYPE_CHECKING:
    from typing import Any


class MalformedJSON(ValueError):
    pass


def loads(text: str) -> Any:
    """``json.loads`` without importing json, which imports re and enum (~12 ms cold).

    Uses the C scanner json itself uses; falls back to json where there is none.
    """
    try:
        from _json import make_scanner
    except ImportError:  # pragma: no cover - CPython always has it
        import json

        return json.loads(text)
    try:
        # typeshed types the argument as a scanner; it is any object with these attributes
        value, end = make_scanner(_ScanContext())(text, 0)  # type: ignore[arg-type]
    except (StopIteration, ValueError):  # ValueError: the scanner's JSONDecodeError
        value, end = None, -1
    if end != len(text):
        raise MalformedJSON(f"klpd sent malformed JSON: {text[:80]!r}")
    return value


class _ScanContext:
    """The attributes ``_json.make_scanner`` reads (those of ``json.JSONDecoder``)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        return float(name.replace("Infinity", "inf"))


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else "never"


def _yes(v: bool | None) -> str:
    return "?" if v is None else ("yes" if v else "no")


def render_blocking(tasks: list[dict[str, Any]], indent: str = "") -> list[str]:
    out = []
    for t in tasks:
        out.append(f"{indent}{t['pid']:>7} {_e(t['comm']):<16} patch_state={t['patch_state']}")
        for frame in (t.get("stack") or "").split("\n"):
            if frame:
                out.append(f"{indent}        {_e(frame)}")
    return out


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h" if s < 172800 else f"{s // 86400} days"


def _quiet(p: dict[str, Any]) -> bool:
    """A retired or disabled patch with nothing loaded: one line is enough in status."""
    return p["status"] in ("retired", "disabled") and not any(m["loaded"] for m in p["modules"])


def render_patch(p: dict[str, Any], detailed: bool = False, brief: bool = False) -> list[str]:
    meta = [f"series {_e(p['series'])} v{p['version']}"]
    if not p["desired"]:
        meta.append("not desired")
    if p.get("cves"):
        meta.append(_e(", ".join(p["cves"])))
    head = f"{_e(p['name'])}: {_e(p['status'])}  ({'; '.join(meta)})"
    out = [head + (f" - {_e(p['description'])}" if p.get("description") else "")]
    if brief:
        return out
    for m in p["modules"]:
        note = "" if m["object_loaded"] or m["obj"] == "vmlinux" else f" ({m['obj']} not loaded)"
        note = _e(note)
        line = f"  {_e(m['module']):<32} {_e(m['obj']):<16} {_e(m['status']):<11}{note}"
        out.append(line.rstrip())
        if m.get("error"):
            out.append(f"      error: {_e(m['error'])}")
        if detailed:
            out.append(
                f"      loaded={_yes(m['loaded'])} enabled={_yes(m.get('enabled'))} "
                f"transition={_yes(m.get('transition'))} patched={_yes(m.get('patched'))}"
            )
            if m.get("functions"):
                out.append(f"      functions: {_e(', '.join(m['functions']))}")
            out += [f"      {line}" for line in render_versions(m.get("versions") or [], m)]
    return out


def render_versions(versions: list[dict[str, Any]], m: dict[str, Any] | None = None) -> list[str]:
    """6.13+: which patch's version of each function runs (kpatch list's view). With ``m``,
    from that module's point of view."""
    out = []
    for v in versions:
        live = v["live"] or "original"
        where = f"{v['obj']}:{v['function']}"
        if m is None:
            text = f"{where}: {live}"
        elif v["live"] == m["module"]:
            text = f"{where}: live"
        else:
            text = f"{where}: not live ({live} runs)"
        if v.get("previous") is not None:
            text += f", in transition from {v['previous'] or 'original'}"
        if m is None and len(v["stack"]) > 1:
            text += f" (stack: {' > '.join(v['stack'])})"
        out.append(_e(text))
    return out


def render_status(s: dict[str, Any]) -> str:
    out = [
        f"klpd: {_e(s['state'].upper())}",
        f"kernel: {_e(s['kernel_release'])}    last reconcile: {_when(s['last_reconcile'])}",
    ]
    t = s.get("transition")
    if t:
        age = _duration(max(0.0, time.time() - t["started_at"]))
        stalled = "  STALLED" if t["stalled"] else ""
        out.append(f"transition: {_e(t['module'])} -> {_e(t['target'])}, for {age}{stalled}")
        if t["blocking"]:
            out.append("  blocked by:")
            out += render_blocking(t["blocking"], "  ")
    if s.get("last_error"):
        out.append(f"last error: {_e(s['last_error'])}")
    counts: dict[str, int] = {}
    for p in s["patches"]:
        counts[p["status"]] = counts.get(p["status"], 0) + 1
    summary = _e(", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    out += [f"patches: {summary or 'none installed'}", ""]
    for p in s["patches"]:
        out += render_patch(p, brief=_quiet(p))
    if s.get("pending"):
        out += ["", "pending:"] + [f"  {_e(a)}" for a in s["pending"]]
    failed = [
        (m["module"], m["error"])
        for p in s["patches"]
        for m in p["modules"]
        if m["status"] in ("failed", "refused")
    ]
    if failed:
        out += ["", "failed or refused:"]
        out += [f"  {_e(mod)}: {_e(err or 'refused')}" for mod, err in failed]
    if s.get("foreign_livepatches"):
        out += ["", "not managed by klpd: " + _e(", ".join(s["foreign_livepatches"]))]
    if s.get("functions"):
        out += ["", "live function versions (stack_order):"]
        out += [f"  {line}" for line in render_versions(s["functions"])]
    return "\n".join(out)
