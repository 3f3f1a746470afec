"""A private ``dbus-daemon`` configured like the system bus klpd runs on, for the demo,
the tests and the benchmarks — the one place that configuration lives.

Default-deny like the system bus, then klpd's shipped policy (``etc/dbus-1/system.d``)
included as is, so what passes here passes there. Two additions, both for tools around
klpd and never shipped: ``owner`` (the user starting the bus, root in the tests) may own
klpd's name, so ``make demo`` runs as an ordinary user; root may own a fake polkit
authority (the tests' own).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <!-- not shipped: a fake polkit authority, owned by the (root) test process -->
  <policy user="root">
    <allow own="org.freedesktop.PolicyKit1"/>
  </policy>
  <policy context="default">
    <allow send_destination="org.freedesktop.PolicyKit1"/>
  </policy>
  <!-- not shipped: whoever started this bus may run klpd on it (the demo, unprivileged) -->
  <policy user="{owner}">
    <allow own="io.github.Klpd1"/>
  </policy>
  <include>{shipped}</include>
{limits}</busconfig>
"""


@dataclass
class PrivateBus:
    address: str
    process: subprocess.Popen[bytes]
    directory: str

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

    def crash(self) -> None:
        """dbus-daemon goes away (SIGKILL): every connection to it ends."""
        self.process.kill()
        self.process.wait()

    def relaunch(self) -> None:
        """A new dbus-daemon at the same address (a new guid: connect without one), once it
        listens."""
        self.crash()
        Path(self.directory, "bus").unlink(missing_ok=True)
        self.process = _launch(Path(self.directory, "bus.conf"))
        assert self.process.stdout is not None
        if not self.process.stdout.readline():
            raise RuntimeError(f"dbus-daemon did not start again (exit {self.process.wait()})")


def _launch(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["dbus-daemon", f"--config-file={config}", "--print-address", "--nofork"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )


def start_private_bus(shipped_policy: Path, limits: Mapping[str, int] | None = None) -> PrivateBus:
    """Start ``dbus-daemon`` with klpd's ``shipped_policy`` and return once it printed its
    address (it is listening). The socket's directory is world-readable: callers run as
    ``nobody`` must reach it. ``limits`` overrides dbus-daemon's ``<limit>`` defaults
    (e.g. ``max_connections_per_user``, 256), which a system bus keeps unless configured."""
    directory = tempfile.mkdtemp(prefix="klpd-dbus-")
    os.chmod(directory, 0o755)
    config = Path(directory, "bus.conf")
    owner = pwd.getpwuid(os.getuid()).pw_name
    limit_lines = "".join(
        f'  <limit name="{name}">{value}</limit>\n' for name, value in (limits or {}).items()
    )
    config.write_text(
        CONFIG.format(
            socket=f"{directory}/bus", shipped=shipped_policy, owner=owner, limits=limit_lines
        )
    )
    proc = _launch(config)
    assert proc.stdout is not None
    address = proc.stdout.readline().decode().strip()
    if not address:
        proc.kill()
        shutil.rmtree(directory, ignore_errors=True)
        raise RuntimeError(f"dbus-daemon did not start (exit {proc.wait()})")
    return PrivateBus(address, proc, directory)
