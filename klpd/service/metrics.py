"""Prometheus metrics for node_exporter's textfile collector.

No livepatch tool exports metrics natively; klpd writes a ``.prom`` file on each state
change (``[metrics] textfile``), atomically so the collector never reads half a file.

- ``klpd_state{state}``: one series per :class:`~klpd.core.model.OverallState`, 1 for the
  current one (so ``klpd_state{state="degraded"} == 1`` is an alert that never goes absent).
- ``klpd_patch_status{patch,status}`` and ``klpd_module_status{patch,module,object,status}``:
  1 for each patch's / module's *current* status only (every status for every module would
  multiply the series by eight for little gain: ``count(... {status="failed"})`` works).
- counters and timestamps passed in by the daemon, which owns them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from klpd.core.model import OverallState
from klpd.core.status import Snapshot
from klpd.service.atomicfile import write_atomic


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int) or value.is_integer():
        return str(int(value))
    return repr(value)


def _sample(name: str, labels: Mapping[str, str], value: float) -> str:
    if not labels:
        return f"{name} {_number(value)}"
    text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return f"{name}{{{text}}} {_number(value)}"


def _family(
    name: str, kind: str, help_text: str, samples: Iterable[tuple[Mapping[str, str], float]]
) -> list[str]:
    return [
        f"# HELP {name} {help_text}",
        f"# TYPE {name} {kind}",
        *(_sample(name, labels, value) for labels, value in samples),
    ]


COUNTERS: tuple[tuple[str, str, str], ...] = (
    # (metric, Counters field, help)
    (
        "klpd_transitions_total",
        "transitions",
        "Livepatch transitions started by klpd (loads and disables) since it started.",
    ),
    (
        "klpd_failures_total",
        "failures",
        "Module loads, disables and removals that failed since klpd started.",
    ),
    (
        "klpd_reconciles_total",
        "reconciles",
        "Reconcile passes (plan, act, until nothing is left to do) since klpd started.",
    ),
    (
        "klpd_modprobe_calls_total",
        "modprobe_calls",
        "modprobe runs (EBUSY retries included) since klpd started.",
    ),
    (
        "klpd_rmmod_calls_total",
        "rmmod_calls",
        "rmmod runs (retries included) since klpd started.",
    ),
    (
        "klpd_resyncs_total",
        "resyncs",
        "Full resyncs after lost uevents (netlink overflow) since klpd started.",
    ),
)


def render_metrics(snapshot: Snapshot) -> str:
    """The Prometheus text exposition of ``snapshot``, its counters included."""
    transition = snapshot.transition
    lines = [
        *_family(
            "klpd_state",
            "gauge",
            "Overall state of klpd: 1 for the current state, 0 for the others.",
            (({"state": s.value}, float(s == snapshot.state)) for s in OverallState),
        ),
        *_family(
            "klpd_patch_status",
            "gauge",
            "Current status of each known patch (1 = the patch is in this status).",
            (({"patch": p.name, "status": p.status.value}, 1) for p in snapshot.patches),
        ),
        *_family(
            "klpd_module_status",
            "gauge",
            "Current status of each livepatch module <patch>__<object>.",
            (
                (
                    {
                        "patch": p.name,
                        "module": m.module,
                        "object": m.obj,
                        "status": m.status.value,
                    },
                    1,
                )
                for p in snapshot.patches
                for m in p.modules
            ),
        ),
        *_family(
            "klpd_transition_in_progress",
            "gauge",
            "1 while a livepatch transition runs.",
            [({}, int(transition is not None))],
        ),
        *_family(
            "klpd_transition_stalled",
            "gauge",
            "1 while the running transition is stalled past transition.stall_timeout.",
            [({}, int(transition is not None and transition.stalled))],
        ),
        *(
            line
            for metric, name, help_text in COUNTERS
            for line in _family(
                metric, "counter", help_text, [({}, getattr(snapshot.counters, name))]
            )
        ),
        *_family(
            "klpd_last_reconcile_timestamp_seconds",
            "gauge",
            "Unix time of the last completed reconcile (0: none yet).",
            [({}, snapshot.last_reconcile)],
        ),
    ]
    return "\n".join(lines) + "\n"


def write_textfile(path: str | Path, text: str) -> None:
    """Write metrics ``text`` to the node_exporter textfile ``path`` atomically (0644: the
    collector runs as another user), creating its directory (0755, not its parents) when
    missing: under the unit, ``/run/klpd/metrics`` in klpd's own RuntimeDirectory."""
    Path(path).parent.mkdir(mode=0o755, exist_ok=True)
    write_atomic(path, text, mode=0o644)


__all__ = ["render_metrics", "write_textfile"]
