"""Linters are tests: ruff and mypy --strict run with the suite."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_ruff_clean() -> None:
    r = subprocess.run(
        [BIN / "ruff", "check", "klpd", "sim", "tests", "bench", "scripts"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict_clean() -> None:
    r = subprocess.run(
        [BIN / "mypy", "klpd", "sim/klpd_sim", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr


IGNORE = re.compile(r"#\s*type:\s*ignore(?P<codes>\[[^\]]*\])?(?P<rest>.*)$")


def test_every_type_ignore_says_which_error_and_why() -> None:
    """``# type: ignore[code]  # the reason`` (or the reason in a comment line just above):
    never a bare one, never one without a reason."""
    bare: list[str] = []
    for path in sorted(
        p for d in ("klpd", "sim", "tests", "bench", "scripts") for p in (ROOT / d).rglob("*.py")
    ):
        lines = path.read_text().splitlines()
        for n, line in enumerate(lines, 1):
            m = IGNORE.search(line)
            if m is None:
                continue
            reason = m["rest"].strip().startswith("#") or (
                n > 1 and lines[n - 2].strip().startswith("#")  # or a comment line above it
            )
            if not m["codes"] or not reason:
                bare.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bare, "type: ignore without [code] and a reason:\n" + "\n".join(bare)


MAX_FILE_LINES = 400
MAX_CLASS_LINES = 250
MAX_LOOP_LINES = 200  # the orchestrator's loop: the work is in its pieces (issue 8)


def test_product_files_and_classes_stay_readable() -> None:
    """A reader knows their room: no product file over 400 lines, no class over 250, the
    orchestrator's loop at most 200."""
    import ast

    too_big: list[str] = []
    for path in sorted((ROOT / "klpd").rglob("*.py")):
        text = path.read_text()
        name = path.relative_to(ROOT)
        if (n := len(text.splitlines())) > MAX_FILE_LINES:
            too_big.append(f"{name}: {n} lines")
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.ClassDef) or node.end_lineno is None:
                continue
            limit = MAX_LOOP_LINES if node.name == "Orchestrator" else MAX_CLASS_LINES
            if (size := node.end_lineno - node.lineno + 1) > limit:
                too_big.append(f"{name}: class {node.name}: {size} lines (at most {limit})")
    assert not too_big, "\n".join(too_big)
