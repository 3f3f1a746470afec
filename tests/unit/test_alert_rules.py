"""etc/prometheus/klpd.rules.yml: valid for Prometheus, and each alert fires when (and only
when) tests/prometheus/klpd.rules.test.yml says, with promtool from Debian's prometheus
package (unpacked under build/tools by scripts/setup.sh)."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROMTOOL = REPO / "build/tools/usr/bin/promtool"
RULES = REPO / "etc/prometheus/klpd.rules.yml"


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL.exists(), f"{PROMTOOL} is missing: run scripts/setup.sh"
    return subprocess.run(
        [str(PROMTOOL), *args], input=stdin, capture_output=True, text=True, cwd=REPO
    )


def test_rules_are_valid() -> None:
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 7 rules found" in r.stdout


def test_rules_fire_as_specified() -> None:
    r = promtool("test", "rules", "tests/prometheus/klpd.rules.test.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_klpd_series_the_rules_use_is_one_klpd_writes() -> None:
    source = (REPO / "klpd/service/metrics.py").read_text()
    used = {
        word.split("{")[0].rstrip(")")
        for line in RULES.read_text().splitlines()
        if line.strip().startswith("expr:")
        for word in line.replace("(", " ").split()
        if word.startswith("klpd_")
    }
    assert used == {"klpd_state", "klpd_transition_stalled", "klpd_module_status"}
    for name in used:
        assert f'"{name}"' in source, name
