# -*- coding: utf-8 -*-
# Copyright: klpd developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import json

import pytest

from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args
from ansible_collections.klpd.fleet.plugins.module_utils import klpctl as klpctl_utils
from ansible_collections.klpd.fleet.plugins.modules import klpd_info, klpd_patch, klpd_reload

from .fake_klpctl import FakeKlpctl


def run(module, args, fake, monkeypatch, capsys):
    """Run a module's main() with ``args`` against ``fake``; its JSON result."""
    monkeypatch.setattr(basic.AnsibleModule, "run_command", lambda self, argv, **kw: fake(argv, **kw))
    monkeypatch.setattr(basic.AnsibleModule, "get_bin_path", lambda self, name, **kw: "/usr/bin/" + name)
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            module.main()
    return json.loads(capsys.readouterr().out)


def test_patch_enable_new_patch_rescans_enables_and_is_then_idempotent(monkeypatch, capsys):
    fake = FakeKlpctl(installed={"lpa", "lpnew"}, known={"lpa"})
    result = run(klpd_patch, {"name": "lpnew", "rescan": True}, fake, monkeypatch, capsys)
    assert result["changed"] is True and not result.get("failed")
    assert [a["text"] for a in result["plan"]] == ["load lpnew__vmlinux (main-first)"]
    assert fake.changes == [["reload"]]  # not disabled: no enable (it would retry failures)
    assert result["state"] == "converged" and "lpnew" in result["klpd"]["applied"]

    again = run(klpd_patch, {"name": "lpnew", "rescan": True}, fake, monkeypatch, capsys)
    assert again["changed"] is False and again["plan"] == []
    assert fake.changes == [["reload"]]


def test_patch_enable_of_a_disabled_new_version_enables_it_after_the_rescan(monkeypatch, capsys):
    fake = FakeKlpctl(installed={"lpa", "lpnew"}, known={"lpa"}, disabled={"lpnew"})
    result = run(klpd_patch, {"name": "lpnew", "rescan": True}, fake, monkeypatch, capsys)
    assert result["changed"] is True and fake.changes == [["reload"], ["enable", "lpnew"]]


def test_patch_check_mode_predicts_with_diff_and_changes_nothing(monkeypatch, capsys):
    fake = FakeKlpctl(installed={"lpa", "lpnew"}, known={"lpa"})
    args = {"name": "lpnew", "rescan": True, "_ansible_check_mode": True, "_ansible_diff": True}
    result = run(klpd_patch, args, fake, monkeypatch, capsys)
    assert result["changed"] is True
    assert fake.changes == []
    assert result["diff"]["before"] == "lpnew: not known to klpd\n"
    assert "load lpnew__vmlinux (main-first)" in result["diff"]["after"]
    assert ["/usr/bin/klpctl", "plan", "--rescan", "--enable", "lpnew", "--json"] in fake.calls


def test_patch_disable_rolls_back_and_is_idempotent(monkeypatch, capsys):
    fake = FakeKlpctl(installed={"lpa", "lpnew"})
    result = run(klpd_patch, {"name": "lpnew", "state": "disabled"}, fake, monkeypatch, capsys)
    assert result["changed"] is True and fake.changes == [["disable", "lpnew"]]
    assert [a["kind"] for a in result["plan"]] == ["disable", "unload"]
    again = run(klpd_patch, {"name": "lpnew", "state": "disabled"}, fake, monkeypatch, capsys)
    assert again["changed"] is False and fake.changes == [["disable", "lpnew"]]


def test_patch_fails_when_the_end_state_is_not_accepted(monkeypatch, capsys):
    fake = FakeKlpctl(installed={"lpa", "lpnew"}, known={"lpa"}, state="degraded")
    result = run(klpd_patch, {"name": "lpnew", "rescan": True}, fake, monkeypatch, capsys)
    assert result["failed"] is True and result["state"] == "degraded"
    assert "accepted: converged" in result["msg"]
    fake.known.discard("lpnew")
    ok = run(
        klpd_patch,
        {"name": "lpnew", "rescan": True, "accepted_states": ["converged", "degraded"]},
        fake, monkeypatch, capsys,
    )
    assert not ok.get("failed") and ok["state"] == "degraded"


def test_patch_refuses_a_name_that_is_not_a_patch_name(monkeypatch, capsys):
    fake = FakeKlpctl(installed={"lpa"})
    result = run(klpd_patch, {"name": "--bus=unix:path=/x"}, fake, monkeypatch, capsys)
    assert result["failed"] is True and "invalid patch name" in result["msg"]
    assert fake.calls == []


def test_patch_not_installed_is_a_clear_failure(monkeypatch, capsys):
    fake = FakeKlpctl(installed={"lpa"})
    result = run(klpd_patch, {"name": "lpmissing"}, fake, monkeypatch, capsys)
    assert result["failed"] is True and "no installed patch named lpmissing" in result["msg"]
    assert fake.changes == []


def test_info_returns_describe_as_facts_and_passes_the_bus(monkeypatch, capsys):
    fake = FakeKlpctl(installed={"lpa"}, state="degraded")
    result = run(klpd_info, {"wait": 5, "bus": "unix:path=/run/b"}, fake, monkeypatch, capsys)
    assert result["changed"] is False and result["state"] == "degraded"
    assert result["ansible_facts"]["klpd"]["patches"][0]["name"] == "lpa"
    assert fake.calls[0] == ["/usr/bin/klpctl", "wait", "--bus", "unix:path=/run/b", "--timeout", "5"]


def test_reload_only_when_the_plan_has_work(monkeypatch, capsys):
    fake = FakeKlpctl(installed={"lpa"})
    result = run(klpd_reload, {}, fake, monkeypatch, capsys)
    assert result["changed"] is False and fake.changes == []
    fake.installed.add("lpnew")
    result = run(klpd_reload, {"_ansible_check_mode": True}, fake, monkeypatch, capsys)
    assert result["changed"] is True and fake.changes == []
    result = run(klpd_reload, {}, fake, monkeypatch, capsys)
    assert result["changed"] is True and fake.changes == [["reload"]]


def test_klpd_not_running_is_a_failure_naming_it(monkeypatch, capsys):
    def not_running(argv, **kw):
        return 4, "", "klpctl: klpd is not running (io.github.Klpd1 on unix:path=/x)\n"

    result = run(klpd_info, {}, not_running, monkeypatch, capsys)
    assert result["failed"] is True and result["msg"].startswith("klpd is not running")
    assert result["rc"] == 4


def test_summary_and_plan_text():
    doc = {"state": "degraded", "patches": [
        {"name": "a", "status": "applied", "desired": True},
        {"name": "b", "status": "partial", "desired": True},
        {"name": "c", "status": "disabled", "desired": False},
    ]}
    s = klpctl_utils.summary(doc)
    assert (s["applied"], s["failed"], s["disabled"], s["desired"]) == (["a"], ["b"], ["c"], ["a", "b"])
    assert klpctl_utils.describe_plan({"actions": []}) == "klpd would do nothing\n"
    assert klpctl_utils.valid_patch_name("lp-cve_1") == "lp_cve_1"
