"""sd_notify against a real NOTIFY_SOCKET: a bound AF_UNIX datagram socket."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from klpd.service import sdnotify
from klpd.service.sdnotify import Notifier, watchdog_interval


class Manager:
    """Plays the service manager's side of NOTIFY_SOCKET."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address

    def receive(self) -> str:
        return self.sock.recv(4096).decode()

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(5)
        return False


@pytest.fixture(params=["path", "abstract"])
def manager(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Manager]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(5)
    if request.param == "path":
        address = str(tmp_path / "notify")
        sock.bind(address)
    else:
        name = f"klpd-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        address = "@" + name
    with sock:
        yield Manager(sock, address)


@pytest.fixture(params=["libsystemd", "socket"])
def notifier(
    request: pytest.FixtureRequest, manager: Manager, monkeypatch: pytest.MonkeyPatch
) -> Notifier:
    monkeypatch.setenv("NOTIFY_SOCKET", manager.address)
    if request.param == "libsystemd":
        pytest.importorskip("systemd.daemon")
        return Notifier()
    monkeypatch.setattr(sdnotify, "_libsystemd_sender", lambda: None)
    return Notifier()


def test_protocol(notifier: Notifier, manager: Manager) -> None:
    assert notifier.enabled
    assert notifier.ready()
    assert manager.receive() == "READY=1"
    assert notifier.status("converged: 2 patches, 5 objects")
    assert manager.receive() == "STATUS=converged: 2 patches, 5 objects"
    assert notifier.watchdog()
    assert manager.receive() == "WATCHDOG=1"
    assert notifier.stopping()
    assert manager.receive() == "STOPPING=1"


def test_ready_with_status(notifier: Notifier, manager: Manager) -> None:
    notifier.ready("converging: 1 pending")
    assert manager.receive() == "READY=1\nSTATUS=converging: 1 pending"


def test_status_is_one_line(notifier: Notifier, manager: Manager) -> None:
    notifier.status("failed:\nno livepatch")
    assert manager.receive() == "STATUS=failed: no livepatch"


def test_reloading_carries_monotonic_time(notifier: Notifier, manager: Manager) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = manager.receive().split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC" and before <= int(value) <= after


def test_no_socket_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    assert not n.ready() and not n.status("x") and not n.watchdog() and not n.stopping()


def test_send_error_is_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert n.ready() is False
    assert "sd_notify" in caplog.text


def test_explicit_environment_uses_its_socket(manager: Manager) -> None:
    n = Notifier({"NOTIFY_SOCKET": manager.address})
    n.watchdog()
    assert manager.receive() == "WATCHDOG=1"
    assert manager.nothing_pending()


def test_watchdog_interval() -> None:
    me = str(os.getpid())
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "2500000", "WATCHDOG_PID": me}) == 2.5
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert Notifier({"WATCHDOG_USEC": "4000000"}).watchdog_interval() == 4.0


def test_status_cannot_forge_a_line(notifier: Notifier, manager: Manager) -> None:
    # issue 11, point 7: a task's comm of "a\nSTOPPING=1\nb" forged a STOPPING=1 line
    notifier.ready("converging: lpa__ext4 stalled, blocked by a\nSTOPPING=1\nb\x1b[2J[42]")
    lines = manager.receive().split("\n")
    assert lines[0] == "READY=1" and len(lines) == 2, lines
    assert lines[1].startswith("STATUS=") and "\x1b" not in lines[1]
    notifier.status("x\nSTOPPING=1\x1b")
    (line,) = manager.receive().split("\n")
    assert line == "STATUS=x STOPPING=1\\x1b"
