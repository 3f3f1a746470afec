"""Issue 11, point 7 (sd_notify and log sinks) with the real daemon on the simulated kernel.

A task that blocks a transition names itself ``a\\nSTOPPING=1\\nb`` + ESC (any process can:
prctl(PR_SET_NAME), 15 bytes); klpd reports it, and it must reach the service manager and
the log as inert text.
"""

from __future__ import annotations

from klpd_harness import MakeKlpd, wait_for
from klpd_sim.harness import SimKernel

LPA = {"patches": {"desired": ["lpa"]}}
HOSTILE_COMM = "a\nSTOPPING=1\nb\x1b"
STALL = {"transition": {"stall_timeout": 0.5, "revert_timeout": 10.0, "on_stall": "revert"}}


def test_hostile_comm_is_inert_in_sd_notify_and_the_log(
    sim: SimKernel, make_klpd: MakeKlpd
) -> None:
    sim.modprobe("ext4")
    pid = sim.stall("ext4", comm=HOSTILE_COMM)
    k = make_klpd({**LPA, **STALL}).start()
    k.wait_state("degraded")  # reverted; last_error names the task
    assert k.proc is not None
    k.proc.send_signal(1)  # SIGHUP: a reload ends with READY=1 and the status line

    def readies() -> int:
        return sum(m.startswith("READY=1") for m in k.drain())

    wait_for(lambda: readies() >= 2, 30, "READY=1 after the reload")
    for message in k.drain():
        lines = message.split("\n")
        assert "STOPPING=1" not in lines and "b\x1b" not in lines, message
        assert "\x1b" not in message, message
    # lines joined by spaces, other controls escaped
    assert any(f"a STOPPING=1 b\\x1b[{pid}]" in s for s in k.statuses()), k.statuses()
    log = k.log()
    assert "\x1b" not in log
    assert not [line for line in log.splitlines() if line.startswith(("STOPPING=1", "b"))]
    assert f"a\\nSTOPPING=1\\nb\\x1b[{pid}]" in log
