"""The configuration model: defaults, bad values, unknown keys, syntax errors, reload."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from klpd.core.model import RemovalPolicy
from klpd.service import config as config_mod
from klpd.service.config import (
    Config,
    ConfigError,
    load_config,
    parse_config,
    reload_config,
)
from klpd.service.configdoc import config_docs, render_default_toml

REPO = Path(__file__).resolve().parents[2]

DEFAULTS: dict[str, dict[str, Any]] = {
    "catalog": {"directories": []},
    "patches": {"desired": [], "exclude": [], "pin": {}},
    "policy": {"on_object_removed": RemovalPolicy.KEEP, "ready_timeout": 60.0},
    "transition": {
        "poll_interval": 0.1,
        "stall_timeout": 15.0,
        "on_stall": "revert",
        "revert_timeout": 60.0,
    },
    "retry": {
        "ebusy_attempts": 5,
        "ebusy_backoff": 0.2,
        "ebusy_backoff_max": 2.0,
        "modprobe_timeout": 60.0,
    },
    "kernel": {
        "sysfs_root": "/sys",
        "proc_root": "/proc",
        "release": "",
        "modprobe": ["/usr/sbin/modprobe"],
        "rmmod": ["/usr/sbin/rmmod"],
    },
    "events": {"source": "udev", "receive_buffer": 1024 * 1024},
    "dbus": {"bus": "system", "enabled": True},
    "logging": {"level": "info", "target": "auto"},
    "metrics": {"textfile": ""},
    "softdep": {"enabled": False, "path": "/run/klpd/softdep.conf"},
    "state": {"directory": "/var/lib/klpd"},
    "inspect": {"undeterminable": "refuse"},
    "boot_guard": {"enabled": True, "grace_period": 60.0},
}


def _set(section: str, key: str, toml_value: str) -> str:
    return f"[{section}]\n{key} = {toml_value}\n"


# --- defaults ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "expected"),
    [(s, k, v) for s, keys in DEFAULTS.items() for k, v in keys.items()],
)
def test_default(section: str, key: str, expected: Any) -> None:
    assert getattr(getattr(Config(), section), key) == expected
    assert getattr(getattr(parse_config(""), section), key) == expected


def _section_fields(annotation: object) -> dict[str, FieldInfo]:
    assert isinstance(annotation, type) and issubclass(annotation, BaseModel), annotation
    return annotation.model_fields


def test_every_key_has_a_default_test_and_a_description() -> None:
    declared = {
        (s, k) for s, info in Config.model_fields.items() for k in _section_fields(info.annotation)
    }
    assert declared == {(s, k) for s, keys in DEFAULTS.items() for k in keys}
    for s, info in Config.model_fields.items():
        for k, f in _section_fields(info.annotation).items():
            assert f.description, f"{s}.{k} has no description"


def test_round_trip() -> None:
    c = Config().with_overrides(
        {"patches": {"pin": {"lp_a": 2}}, "policy": {"on_object_removed": "remove"}}
    )
    assert Config.model_validate(c.model_dump()) == c
    assert Config.model_validate(c.model_dump(mode="json")) == c


def test_models_are_frozen() -> None:
    c = Config()
    with pytest.raises(ValueError, match="frozen"):
        c.transition.poll_interval = 1.0


# --- good values ------------------------------------------------------------------------


def test_values_are_read() -> None:
    c = parse_config(
        """
        [catalog]
        directories = ["/lib/modules/{release}/livepatch", "/opt/lp"]
        [patches]
        desired = ["lp-cve-1"]
        exclude = ["lp_old"]
        pin = { lp_series = 3 }
        [policy]
        on_object_removed = "remove"
        [transition]
        stall_timeout = 30
        on_stall = "wait"
        [kernel]
        modprobe = ["modprobe", "-q"]
        release = "6.1.0-test"
        [dbus]
        bus = "unix:path=/run/x/bus;unix:abstract=foo,guid=00"
        [metrics]
        textfile = "/var/lib/node_exporter/klpd.prom"
        """
    )
    assert c.catalog.resolve("6.1") == ["/lib/modules/6.1/livepatch", "/opt/lp"]
    assert c.patches.desired == ["lp_cve_1"]  # normalised like the kernel does
    assert c.patches.pin == {"lp_series": 3}
    assert c.policy.on_object_removed is RemovalPolicy.REMOVE
    assert c.transition.stall_timeout == 30.0
    assert c.kernel.modprobe == ["modprobe", "-q"]
    assert c.kernel.read_release() == "6.1.0-test"


def test_default_catalog_directory() -> None:
    assert Config().catalog.resolve("6.1.0-9-amd64") == ["/lib/modules/6.1.0-9-amd64"]


def test_release_from_proc(tmp_path: Path) -> None:
    (tmp_path / "sys/kernel").mkdir(parents=True)
    (tmp_path / "sys/kernel/osrelease").write_text("6.1.0-42-amd64\n")
    c = Config().with_overrides({"kernel": {"proc_root": str(tmp_path)}})
    assert c.kernel.read_release() == "6.1.0-42-amd64"
    c = Config().with_overrides({"kernel": {"proc_root": str(tmp_path / "none")}})
    with pytest.raises(ConfigError, match="osrelease"):
        c.kernel.read_release()


def test_backoff_doubles_up_to_max() -> None:
    r = Config().retry
    assert [r.backoff(i) for i in range(1, 6)] == [0.2, 0.4, 0.8, 1.6, 2.0]


def test_force_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="klpd.service.config"):
        assert parse_config(_set("transition", "on_stall", '"force"')).transition.on_stall == (
            "force"
        )
    assert "unremovable" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="klpd.service.config"):
        parse_config(_set("transition", "on_stall", '"revert"'))
    assert caplog.text == ""


# --- bad values -------------------------------------------------------------------------

BAD: list[tuple[str, str, str, str]] = [
    # section, key, TOML value, expected fragment of the message
    ("catalog", "directories", '"/lib/modules"', "valid list"),
    ("catalog", "directories", '["relative/dir"]', "absolute"),
    ("catalog", "directories", '["/x/{kernel}"]', "{release}"),
    ("catalog", "directories", '["/x/{release"]', "expected '}'"),
    ("patches", "desired", '["bad name"]', "only letters"),
    ("patches", "desired", '["_lead"]', "must not start or end"),
    ("patches", "desired", f'["{"a" * 50}"]', "too long"),
    ("patches", "desired", "[1]", "valid string"),
    ("patches", "exclude", '["x.y"]', "only letters"),
    ("patches", "pin", '{ lp_a = "2" }', "valid integer"),
    ("patches", "pin", "{ lp_a = 0 }", ">= 1"),
    ("patches", "pin", '{ "bad name" = 1 }', "only letters"),
    ("patches", "pin", "[1]", "valid dictionary"),
    ("policy", "on_object_removed", '"drop"', "'keep' or 'remove'"),
    ("policy", "ready_timeout", "-1", "greater than or equal to 0"),
    ("transition", "poll_interval", "0", "greater than 0"),
    ("transition", "poll_interval", "-0.5", "greater than 0"),
    ("transition", "poll_interval", '"0.1"', "valid number"),
    ("transition", "poll_interval", "true", "valid number"),
    ("transition", "stall_timeout", "0", "greater than 0"),
    ("transition", "on_stall", '"kill"', "'wait', 'revert' or 'force'"),
    ("transition", "revert_timeout", "-1", "greater than 0"),
    ("retry", "ebusy_attempts", "0", "greater than or equal to 1"),
    ("retry", "ebusy_attempts", "2.5", "valid integer"),
    ("retry", "ebusy_attempts", '"5"', "valid integer"),
    ("retry", "ebusy_backoff", "-1", "greater than or equal to 0"),
    ("retry", "ebusy_backoff_max", "0.1", "must be >= ebusy_backoff"),
    ("retry", "modprobe_timeout", "0", "greater than 0"),
    ("kernel", "sysfs_root", '"sys"', "absolute"),
    ("kernel", "proc_root", '""', "absolute"),
    ("kernel", "release", '"6.1/../x"', "not a kernel release"),
    ("kernel", "modprobe", "[]", "non-empty command"),
    ("kernel", "modprobe", '"/usr/sbin/modprobe"', "valid list"),
    ("kernel", "modprobe", '["sbin/modprobe"]', "absolute path or a bare command"),
    ("kernel", "rmmod", '["/usr/sbin/rmmod", ""]', "empty strings"),
    ("events", "source", '"netlink"', "'udev'"),
    ("events", "receive_buffer", "1024", "greater than or equal to 4096"),
    ("dbus", "bus", '"tcp"', "D-Bus address"),
    ("dbus", "bus", '""', "D-Bus address"),
    ("dbus", "enabled", "1", "valid boolean"),
    ("dbus", "enabled", '"yes"', "valid boolean"),
    ("logging", "level", '"verbose"', "'debug', 'info', 'warning' or 'error'"),
    ("logging", "target", '"syslog"', "'auto', 'journal' or 'stderr'"),
    ("metrics", "textfile", '"/var/lib/klpd.txt"', "*.prom"),
    ("metrics", "textfile", '"klpd.prom"', "absolute"),
    ("softdep", "enabled", '"true"', "valid boolean"),
    ("softdep", "path", '"/run/modprobe.d/klpd"', "*.conf"),
    ("state", "directory", '"var/lib/klpd"', "absolute"),
]


@pytest.mark.parametrize(("section", "key", "value", "fragment"), BAD)
def test_bad_value(section: str, key: str, value: str, fragment: str, tmp_path: Path) -> None:
    path = tmp_path / "klpd.toml"
    path.write_text(_set(section, key, value))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: {section}")
    # the dotted key, except for checks that span keys (then the message names both)
    assert f"{section}.{key}: " in msg or key in msg
    assert fragment in msg


def test_unknown_keys() -> None:
    with pytest.raises(ConfigError, match=r"^x\.toml: transition\.poll: unknown key$"):
        parse_config("[transition]\npoll = 1\n", "x.toml")
    with pytest.raises(ConfigError, match=r"^x\.toml: daemon: unknown key$"):
        parse_config("[daemon]\nx = 1\n", "x.toml")
    with pytest.raises(ConfigError, match=r"^x\.toml: top: unknown key$"):
        parse_config("top = 1\n", "x.toml")


def test_section_must_be_a_table() -> None:
    with pytest.raises(ConfigError, match=r"^x\.toml: retry: .*valid dictionary"):
        parse_config("retry = 5\n", "x.toml")


def test_every_error_is_reported() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config("[retry]\nebusy_attempts = 0\n[dbus]\nenabled = 1\nbogus = 2\n", "x")
    lines = str(e.value).splitlines()
    assert len(lines) == 3
    assert {ln.split(": ")[1] for ln in lines} == {
        "retry.ebusy_attempts",
        "dbus.enabled",
        "dbus.bogus",
    }


def test_toml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "klpd.toml"
    path.write_text("[transition]\npoll_interval = = 1\n")
    with pytest.raises(ConfigError, match=r"invalid TOML: .*line 2, column 17") as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: ")


def test_with_overrides_validates() -> None:
    with pytest.raises(ConfigError, match=r"transition\.poll_interval"):
        Config().with_overrides({"transition": {"poll_interval": 0}})


# --- files ------------------------------------------------------------------------------


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_missing_default_file_gives_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_mod, "DEFAULT_PATH", tmp_path / "absent.toml")
    assert load_config(None) == Config()


def test_present_default_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "klpd.toml"
    path.write_text(_set("logging", "level", '"debug"'))
    monkeypatch.setattr(config_mod, "DEFAULT_PATH", path)
    assert load_config(None).logging.level == "debug"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "klpd.toml"
    path.write_bytes(b"# \xff\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(path)


def test_reload_keeps_old_config_on_error(tmp_path: Path) -> None:
    path = tmp_path / "klpd.toml"
    path.write_text(_set("logging", "level", '"debug"'))
    current = load_config(path)

    path.write_text(_set("logging", "level", '"loud"'))
    kept, error = reload_config(path, current)
    assert kept is current
    assert error is not None and "logging.level" in error and str(path) in error

    path.write_text("[logging\n")
    kept, error = reload_config(path, current)
    assert kept is current and error is not None and "invalid TOML" in error

    path.unlink()
    kept, error = reload_config(path, current)
    assert kept is current and error is not None and "cannot read" in error

    path.write_text(_set("logging", "level", '"error"'))
    new, error = reload_config(path, current)
    assert error is None and new.logging.level == "error"


# --- generated files --------------------------------------------------------------------


def test_shipped_config_is_generated() -> None:
    assert (REPO / "etc/klpd/klpd.toml").read_text() == render_default_toml(), (
        "regenerate: python -c 'from klpd.service.configdoc import render_default_toml as r; "
        'print(r(), end="")\' > etc/klpd/klpd.toml'
    )


def test_shipped_config_loads_to_defaults() -> None:
    assert load_config(REPO / "etc/klpd/klpd.toml") == Config()


def test_uncommented_shipped_config_is_the_defaults() -> None:
    text = render_default_toml()
    uncommented = "\n".join(
        ln[1:] if ln.startswith("#") and not ln.startswith("# ") and "=" in ln else ln
        for ln in text.splitlines()
    )
    data = tomllib.loads(uncommented)
    assert Config.model_validate(data) == Config()
    assert sum(len(v) for v in data.values()) == sum(len(v) for v in DEFAULTS.values())


def test_docs_are_generated() -> None:
    assert (REPO / "docs/config.md").read_text() == config_docs(), (
        "regenerate: python -c 'from klpd.service.configdoc import config_docs as d; "
        'print(d(), end="")\' > docs/config.md'
    )
    docs = config_docs()
    for section, keys in DEFAULTS.items():
        assert f"## [{section}]" in docs
        for key in keys:
            assert f"| `{key}` |" in docs
