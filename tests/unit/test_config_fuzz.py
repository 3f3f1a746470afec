"""Configuration fuzzing: hypothesis writes TOML documents — the real sections and keys
with values of every TOML type, unknown keys and sections, keys at the wrong level, and
arbitrary text — and klpd either accepts a file or refuses it with a ConfigError whose every
line names the file and the key at fault. Never another exception; a reload with a refused
file keeps the running configuration."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from klpd.service.config import Config, ConfigError, parse_config, reload_config

SECTIONS = {
    name: sorted(f.annotation.model_fields)  # type: ignore[union-attr]  # every section is a model
    for name, f in Config.model_fields.items()
}
SOURCE = "/etc/klpd/klpd.toml"

_keys = st.sampled_from([k for keys in SECTIONS.values() for k in keys] + ["bogus", "x-y"])
_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        ["/", "/sys", "relative/dir", "keep", "remove", "wait", "force", "debug", "system"]
    ),
    st.sampled_from(["lpa", "lp-b", "a__b", "x" * 60, "", " ", "{release}", "..", "\x00"]),
    st.datetimes(),
    st.dates(),
    st.times(),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(_keys | st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _key(k: str) -> str:
    bare = k and all(c.isascii() and (c.isalnum() or c in "-_") for c in k)
    return k if bare else _string(k)


def _string(s: str) -> str:
    out = s.replace("\\", "\\\\").replace('"', '\\"')
    for c in {c for c in out if ord(c) < 0x20 or ord(c) == 0x7F}:
        out = out.replace(c, f"\\u{ord(c):04x}")
    return f'"{out}"'


def toml(v: Any) -> str:
    """A TOML inline value (tomllib has no writer; the stdlib one is read-only)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {toml(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


@st.composite
def documents(draw: st.DrawFn) -> tuple[str, set[str]]:
    """A TOML document and the top-level names it uses."""
    lines: list[str] = []
    names: set[str] = set()
    for k, v in draw(st.dictionaries(_keys, _values, max_size=2)).items():
        lines.append(f"{_key(k)} = {toml(v)}")  # keys outside any section
        names.add(k)
    sections = draw(st.lists(st.sampled_from([*SECTIONS, "bogus_section"]), unique=True))
    for section in sections:
        names.add(section)
        lines.append(f"[{section}]")
        keys = SECTIONS.get(section, ["anything"])
        chosen = draw(st.dictionaries(st.sampled_from([*keys, "unknown_key"]), _values))
        lines += [f"{_key(k)} = {toml(v)}" for k, v in chosen.items()]
    return "\n".join(lines) + "\n", names


def check_refusal(e: ConfigError, names: set[str]) -> None:
    lines = str(e).splitlines()
    assert lines
    for line in lines:
        assert line.startswith(f"{SOURCE}: "), line
        where = line[len(SOURCE) + 2 :].split(":", 1)[0]
        # the dotted path of the key at fault, starting with a name the document used
        assert where.split(".", 1)[0] in names or where == "(top level)", line
        assert "Traceback" not in line


@settings(max_examples=150, deadline=None)
@given(documents())
def test_any_document_is_accepted_or_refused_naming_the_key(doc: tuple[str, set[str]]) -> None:
    text, names = doc
    try:
        config = parse_config(text, SOURCE)
    except ConfigError as e:
        check_refusal(e, names)
    else:
        assert Config.model_validate(config.model_dump()) == config


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_any_text_is_accepted_or_refused(text: str) -> None:
    try:
        parse_config(text, SOURCE)
    except ConfigError as e:
        assert str(e).startswith(f"{SOURCE}: "), e


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(documents())
def test_reload_with_a_refused_file_keeps_the_running_config(
    tmp_path: Path, doc: tuple[str, set[str]]
) -> None:
    path = tmp_path / "klpd.toml"
    path.write_text('[logging]\nlevel = "debug"\n')
    current, error = reload_config(path, Config())
    assert error is None and current.logging.level == "debug"
    path.write_text(doc[0])
    try:
        parse_config(doc[0], str(path))
        refused = False
    except ConfigError:
        refused = True
    kept, error = reload_config(path, current)
    if refused:
        assert kept is current and error is not None and str(path) in error
    else:
        assert error is None


def test_a_control_character_in_a_key_is_escaped_on_one_line(tmp_path: Path) -> None:
    # found by the fuzz above: a "\r" key split the error in two lines
    text = '[patches]\npin = {"\\u000d" = false}\n[policy]\n"x\\u001b[2J" = 1\n'
    with pytest.raises(ConfigError) as e:
        parse_config(text, str(tmp_path / "klpd.toml"))
    lines = str(e.value).splitlines()
    assert len(lines) == 2, lines
    assert any("patches.pin.\\r:" in line for line in lines), lines
    assert any("policy.x\\x1b[2J: unknown key" in line for line in lines), lines
