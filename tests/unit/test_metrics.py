"""The Prometheus text format, checked by a strict parser of the exposition format."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest

from klpd.core.model import OverallState
from klpd.core.status import (
    Counters,
    ModuleReport,
    ModuleStatus,
    PatchReport,
    PatchStatus,
    Snapshot,
    TransitionReport,
)
from klpd.service.atomicfile import write_atomic
from klpd.service.metrics import render_metrics, write_textfile

# https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_VALUE = r"-?(?:[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?|\+Inf|-Inf|NaN)"
SAMPLE = re.compile(rf"({_NAME})(?:\{{({_LABEL}(?:,{_LABEL})*)\}})? ({_VALUE})")
HELP = re.compile(rf"# HELP ({_NAME}) .+")
TYPE = re.compile(rf"# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')

Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Parse ``text`` strictly: every line must be HELP, TYPE or a sample of a typed family."""
    assert text.endswith("\n")
    samples: Samples = {}
    types: dict[str, str] = {}
    helped: set[str] = set()
    for line in text.splitlines():
        if m := HELP.fullmatch(line):
            assert m[1] not in helped, f"second HELP for {m[1]}"
            helped.add(m[1])
        elif m := TYPE.fullmatch(line):
            assert m[1] not in types, f"second TYPE for {m[1]}"
            assert m[1] not in samples, "TYPE must come before the samples"
            types[m[1]] = m[2]
        elif m := SAMPLE.fullmatch(line):
            assert m[1] in types, f"sample of untyped family: {line}"
            labels = {
                k: v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
                for k, v in LABEL.findall(m[2] or "")
            }
            samples.setdefault(m[1], []).append((labels, float(m[3])))
        else:
            raise AssertionError(f"not exposition format: {line!r}")
    assert helped == set(types)
    return samples, types


def snapshot(**kw: Any) -> Snapshot:
    patches = (
        PatchReport(
            name="lpa",
            status=PatchStatus.PARTIAL,
            desired=True,
            series="lpa",
            version=1,
            modules=(
                ModuleReport("lpa__vmlinux", "vmlinux", ModuleStatus.APPLIED, True, True),
                ModuleReport("lpa__ext4", "ext4", ModuleStatus.FAILED, True, False, error="x"),
            ),
        ),
        PatchReport(name="lpb", status=PatchStatus.APPLIED, desired=True, series="lpb", version=2),
    )
    args: dict[str, Any] = {
        "state": OverallState.DEGRADED,
        "kernel_release": "6.1.0-test",
        "patches": patches,
        "last_reconcile": 1764086400.25,
    }
    args.update(kw)
    return Snapshot(**args)


def test_format() -> None:
    counters = Counters(
        transitions=7, failures=2, reconciles=3, modprobe_calls=9, rmmod_calls=1, resyncs=4
    )
    samples, types = parse(render_metrics(snapshot(counters=counters)))
    assert types == {
        "klpd_state": "gauge",
        "klpd_patch_status": "gauge",
        "klpd_module_status": "gauge",
        "klpd_transition_in_progress": "gauge",
        "klpd_transition_stalled": "gauge",
        "klpd_transitions_total": "counter",
        "klpd_failures_total": "counter",
        "klpd_reconciles_total": "counter",
        "klpd_modprobe_calls_total": "counter",
        "klpd_rmmod_calls_total": "counter",
        "klpd_resyncs_total": "counter",
        "klpd_last_reconcile_timestamp_seconds": "gauge",
    }
    assert {lb["state"]: v for lb, v in samples["klpd_state"]} == {
        "converged": 0,
        "converging": 0,
        "degraded": 1,
        "failed": 0,
    }
    assert samples["klpd_patch_status"] == [
        ({"patch": "lpa", "status": "partial"}, 1),
        ({"patch": "lpb", "status": "applied"}, 1),
    ]
    assert samples["klpd_module_status"] == [
        ({"patch": "lpa", "module": "lpa__vmlinux", "object": "vmlinux", "status": "applied"}, 1),
        ({"patch": "lpa", "module": "lpa__ext4", "object": "ext4", "status": "failed"}, 1),
    ]
    assert samples["klpd_transitions_total"] == [({}, 7)]
    assert samples["klpd_failures_total"] == [({}, 2)]
    assert samples["klpd_reconciles_total"] == [({}, 3)]
    assert samples["klpd_modprobe_calls_total"] == [({}, 9)]
    assert samples["klpd_rmmod_calls_total"] == [({}, 1)]
    assert samples["klpd_resyncs_total"] == [({}, 4)]
    assert samples["klpd_last_reconcile_timestamp_seconds"] == [({}, 1764086400.25)]
    assert samples["klpd_transition_in_progress"] == [({}, 0)]


def test_transition_gauges() -> None:
    t = TransitionReport(module="lpa__ext4", target="patched", started_at=1.0, stalled=True)
    samples, _ = parse(render_metrics(snapshot(transition=t)))
    assert samples["klpd_transition_in_progress"] == [({}, 1)]
    assert samples["klpd_transition_stalled"] == [({}, 1)]


def test_empty_snapshot() -> None:
    text = render_metrics(Snapshot(state=OverallState.CONVERGED, kernel_release="6.1"))
    samples, types = parse(text)
    assert "klpd_patch_status" in types and "klpd_patch_status" not in samples
    assert samples["klpd_last_reconcile_timestamp_seconds"] == [({}, 0)]


def test_label_values_are_escaped() -> None:
    odd = 'a"b\\c\nd'
    s = snapshot(
        patches=(
            PatchReport(name=odd, status=PatchStatus.FAILED, desired=True, series="", version=1),
        )
    )
    samples, _ = parse(render_metrics(s))
    assert samples["klpd_patch_status"] == [({"patch": odd, "status": "failed"}, 1)]


def test_write_textfile_is_atomic_and_readable(tmp_path: Path) -> None:
    path = tmp_path / "klpd.prom"
    write_textfile(path, "old\n")
    write_textfile(path, "new\n")
    assert path.read_text() == "new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["klpd.prom"]  # no temporary file left behind


def test_write_atomic_failure_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "klpd.prom"
    write_atomic(path, "old\n")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(path, "\udcff")  # cannot be encoded: fails midway
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["klpd.prom"]


def test_write_creates_its_own_directory_only(tmp_path: Path) -> None:
    # /run/klpd/metrics under the unit: klpd's RuntimeDirectory exists, metrics/ may not
    write_textfile(tmp_path / "metrics" / "klpd.prom", "x\n")
    assert stat.S_IMODE((tmp_path / "metrics").stat().st_mode) == 0o755
    with pytest.raises(FileNotFoundError):
        write_textfile(tmp_path / "absent" / "deeper" / "klpd.prom", "x\n")
