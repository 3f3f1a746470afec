"""``klpctl inspect`` on module files the tests build: no daemon, every problem listed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from klpd_sim.kofile import write_ko

from klpd.client import inspect

RELEASE = "6.1.0-test"
VERMAGIC = f"{RELEASE} SMP preempt mod_unload modversions "


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    d = tmp_path / "catalog"
    d.mkdir()
    lp = {"livepatch": "Y", "vermagic": VERMAGIC, "depends": ""}
    write_ko(d / "lpa__vmlinux.ko", {**lp, "klpd_series": "lpa", "klpd_cve": "CVE-1,CVE-2"})
    write_ko(d / "lpa__ext4.ko.zst", {**lp, "depends": "ext4"}, "zst")
    write_ko(d / "lpa__b__vmlinux.ko", lp)  # makes "lpa__b__c" ambiguous
    write_ko(d / "lpa__b__c.ko", {**lp, "klpd_sim_object": "c"})
    write_ko(d / "lprep__vmlinux.ko.xz", {**lp, "klpd_sim_replace": "Y"}, "xz")
    write_ko(d / "lptwo__vmlinux.ko", {**lp, "klpd_sim_object": "vmlinux,ext4"})
    write_ko(d / "lpdyn__vmlinux.ko", {**lp, "klpd_sim_klp": "dynamic"})
    write_ko(d / "lpold__vmlinux.ko", {**lp, "vermagic": "5.10.0-1 SMP "})
    (tmp_path / "klpd.toml").write_text(
        f'[catalog]\ndirectories = ["{d}"]\n[kernel]\nrelease = "{RELEASE}"\n'
    )
    return d


def run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, list[dict[str, object]]]:
    rc = inspect.main(["--config", str(tmp_path / "klpd.toml"), "--json", *args])
    return rc, json.loads(capsys.readouterr().out)


def test_good_modules_by_name_and_file(
    tmp_path: Path, catalog: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, reports = run(tmp_path, capsys, "lpa__vmlinux", str(catalog / "lpa__ext4.ko.zst"))
    assert rc == 0
    main, ext4 = reports
    assert main["would_load"] and main["replace"] is False
    assert main["objects"] == [
        {"name": "vmlinux", "funcs": ["vmlinux_klpd_sim_func"], "sympos": [0]}
    ]
    assert (main["series"], main["cves"]) == ("lpa", ["CVE-1", "CVE-2"])
    assert main["softdep"] == "not applicable (vmlinux)"
    assert ext4["patch"] == "lpa" and ext4["obj"] == "ext4"
    assert str(ext4["softdep"]).startswith("unsafe: it depends on ext4")


def _strings(value: object) -> list[str]:
    assert isinstance(value, list)
    return [str(v) for v in value]


def test_every_problem_listed(
    tmp_path: Path, catalog: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, reports = run(
        tmp_path, capsys, "lprep__vmlinux", "lptwo__vmlinux", "lpdyn__vmlinux", "lpold__vmlinux"
    )
    assert rc == 1
    problems = {str(r["module"]): _strings(r["problems"]) for r in reports}
    assert problems["lprep__vmlinux"] == [
        "atomic-replace patch (its struct klp_patch sets .replace = true): loading it would "
        "replace every other livepatch on the system"
    ]
    assert problems["lptwo__vmlinux"] == [
        "patches 2 objects (vmlinux, ext4): a split livepatch module patches one"
    ]
    assert [p[:45] for p in problems["lpdyn__vmlinux"]] == [
        "cannot tell whether it is an atomic-replace p"
    ]
    assert problems["lpold__vmlinux"] == [f"built for 5.10.0-1, not {RELEASE}"]


def test_kernel_option_and_name_rules(
    tmp_path: Path, catalog: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long = tmp_path / ("x" * 50 + "__vmlinux.ko")
    write_ko(long, {"livepatch": "Y", "vermagic": "5.10.0-1 SMP "})
    dashed = tmp_path / "lpa-ext4__vmlinux.ko"
    write_ko(dashed, {"livepatch": "Y", "vermagic": "5.10.0-1 SMP "})
    rc, reports = run(
        tmp_path,
        capsys,
        "--kernel",
        "5.10.0-1",
        "lpold__vmlinux",
        str(long),
        str(dashed),
        "lpa__b__c",
        "nosuch",
    )
    assert rc == 1
    old, too_long, dash, ambiguous, missing = reports
    assert old["would_load"]
    assert "59 bytes, the kernel allows 55" in str(too_long["problems"])
    assert dash["module"] == "lpa_ext4__vmlinux" and "('-' is '_')" in str(dash["warnings"])
    assert "splits several ways" in str(ambiguous["warnings"])
    assert (ambiguous["patch"], ambiguous["obj"]) == ("lpa__b", "c")
    assert missing["problems"] == ["no installed livepatch module named 'nosuch'"]


def test_corrupt_and_foreign_files(
    tmp_path: Path, catalog: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trunc = tmp_path / "lpa__vmlinux.ko"
    trunc.write_bytes((catalog / "lpa__vmlinux.ko").read_bytes()[:300])
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    rc, reports = run(tmp_path, capsys, str(trunc), str(text))
    assert rc == 1
    assert any("past the end of the file" in p for p in _strings(reports[0]["problems"]))
    assert "not a module file name" in str(reports[1]["problems"])


def test_human_output_and_the_klpctl_entry_point(tmp_path: Path, catalog: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from klpd.client.ctl import main; sys.exit(main())",
            "inspect",
            "--config",
            str(tmp_path / "klpd.toml"),
            "lprep__vmlinux",
            "lpa__vmlinux",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert "verdict    REFUSED\n    problem: atomic-replace patch" in proc.stdout
    assert "lpa__vmlinux  (" in proc.stdout and "verdict    would be loaded" in proc.stdout


def test_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert inspect.main([]) == inspect.EXIT_USAGE
