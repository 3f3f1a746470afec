"""The klpd.fleet rolling playbook against six hosts on this machine (tests/fleet/fleet.py):
each a simulated kernel, a private bus and a real klpd, reached by Ansible over
``ansible_connection=local`` with a per-host bus address.

One fleet serves the whole module, in order: check mode predicts and changes nothing; a good
patch reaches every host wave by wave; a second run changes nothing; a patch that fails on
host3 is rolled back there, the hosts before it keep it and the hosts after it are never
touched.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fleet import Fleet

HOSTS = [f"host{i}" for i in range(1, 7)]
GOOD = ["load lpfix__vmlinux (main-first)", "load lpfix__ext4 (object-loaded)"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("fleet"))
    try:
        f.payload("lpfix")
        f.payload("lpnext", broken_on=("host3",))
        yield f
    finally:
        f.close()


def test_check_mode_predicts_the_change_and_changes_nothing(fleet: Fleet) -> None:
    fleet.ship_by_hand("lpfix")  # the package is there; klpd has not rescanned yet
    run = fleet.rollout("lpfix", "--check", "--diff")
    assert run.rc == 0, run.output
    assert run.report["check_mode"] is True
    assert run.report["changed"] == HOSTS, run.output
    for plan in run.output.split("TASK [Enable the patch (rescan, reconcile, wait)]")[1:]:
        assert all(line in plan.split("TASK [")[0] for line in GOOD), plan
    for host in fleet.hosts:
        assert host.patch_status("lpfix") is None, "klpd did not even rescan"
        assert not {"lpfix__vmlinux", "lpfix__ext4"} & host.loaded()
        assert host.describe()["state"] == "converged"


def test_a_good_patch_reaches_every_host_wave_by_wave(fleet: Fleet) -> None:
    run = fleet.rollout("lpfix")
    assert run.rc == 0, run.output
    # serial [1, "10%", "50%", "100%"] over six hosts: 1, 1 (10% of six, but at least one), 3, 1
    assert run.batches() == [["host1"], ["host2"], ["host3", "host4", "host5"], ["host6"]]
    assert run.report["changed"] == HOSTS and not run.report["untouched"], run.output
    for host in fleet.hosts:
        assert host.patch_status("lpfix") == "applied"
        assert {"lpfix__vmlinux", "lpfix__ext4"} <= host.loaded()
        assert host.klpctl("wait", "--timeout", "10").returncode == 0


def test_a_second_run_changes_nothing(fleet: Fleet) -> None:
    run = fleet.rollout("lpfix")
    assert run.rc == 0, run.output
    assert run.report["unchanged"] == HOSTS, run.output
    recap = run.recap()
    assert sorted(recap) == HOSTS
    assert all(r["changed"] == 0 and r["failed"] == 0 for r in recap.values()), recap


def test_a_patch_failing_on_host3_is_rolled_back_there_and_stops_the_rollout(
    fleet: Fleet,
) -> None:
    run = fleet.rollout("lpnext", klpd_rollout_waves=[1, 2, 3])
    assert run.rc != 0, run.output
    assert run.batches() == [["host1"], ["host2", "host3"]], run.output
    assert run.report["changed"] == ["host1", "host2"], run.output
    assert run.report["rolled_back"] == ["host3"]
    assert run.report["untouched"] == ["host4", "host5", "host6"]
    # klpd_patch's own wait saw it settle degraded, with modprobe's words
    error = run.report["errors"]["host3"]
    assert "klpd is degraded" in error and "could not insert 'lpnext__ext4'" in error, error

    for name in ("host1", "host2"):  # before it: they keep it
        host = fleet.host(name)
        assert host.patch_status("lpnext") == "applied"
        assert {"lpnext__vmlinux", "lpnext__ext4"} <= host.loaded()
    host3 = fleet.host("host3")  # rolled back: nothing of lpnext loaded, healthy again
    assert host3.patch_status("lpnext") == "disabled"
    assert not {"lpnext__vmlinux", "lpnext__ext4"} & host3.loaded()
    assert host3.patch_status("lpfix") == "applied"
    assert host3.klpctl("status").returncode == 0, "its failure is history, not health"
    for name in ("host4", "host5", "host6"):  # after it: never touched
        host = fleet.host(name)
        assert not host.shipped("lpnext")
        assert host.patch_status("lpnext") is None
        assert "lpnext" not in host.klpd.log()
