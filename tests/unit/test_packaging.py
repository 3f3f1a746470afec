"""What the project declares about itself stays true: dependency minimums, generated docs,
the Debian package's file list."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _pyproject_minimums() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["systemd"]]
    out = {}
    for spec in declared:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", spec.strip())
        assert m, f"{spec!r}: every runtime dependency needs a '>=' minimum and nothing else"
        out[m.group(1).lower()] = m.group(2)
    return out


def test_min_versions_pin_exactly_the_declared_minimums() -> None:
    pinned = {}
    for line in (REPO / "tests/min-versions.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pinned[name.strip().lower()] = version.strip()
    assert pinned == _pyproject_minimums()


def test_min_venv_has_the_minimums_installed() -> None:
    """build/venv-min (scripts/setup.sh) really holds the oldest admitted versions."""
    python = REPO / "build/venv-min/bin/python"
    assert python.exists(), "build/venv-min is missing: run scripts/setup.sh"
    code = (
        "import importlib.metadata as m, sys; "
        "print(*(f'{n}=={m.version(n)}' for n in sys.argv[1:]), sep='\\n')"
    )
    names = sorted(_pyproject_minimums())
    out = subprocess.run(
        [str(python), "-c", code, *names], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == [f"{n}=={_pyproject_minimums()[n]}" for n in names]


def test_debian_depends_match_the_declared_minimums() -> None:
    control = (REPO / "debian/control").read_text()
    assert "python3-dbus-fast (>= 2.44)" in control
    for dep in ("python3-pydantic", "python3-pyudev", "python3-systemd", "kmod"):
        assert re.search(rf"^\s+{dep}\b", control, re.M) or f"Depends: {dep}" in control, dep


def test_generated_man_pages_and_completion_are_current() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts/gen_docs.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, (
        f"{proc.stderr}regenerate with: .venv/bin/python scripts/gen_docs.py"
    )


def test_bash_completion_offers_every_verb() -> None:
    from klpd.client import ctl

    script = REPO / "etc/bash-completion/klpctl"
    line = "COMP_WORDS=(klpctl ''); COMP_CWORD=1; _klpctl; printf '%s\\n' \"${COMPREPLY[@]}\""
    out = subprocess.run(
        ["bash", "-c", f"source {script}; {line}"], capture_output=True, text=True, check=True
    ).stdout.split()
    parser = ctl.build_parser()
    verbs = next(a for a in parser._actions if a.dest == "verb").choices
    assert verbs is not None
    assert out == list(verbs)
