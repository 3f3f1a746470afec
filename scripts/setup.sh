#!/usr/bin/env bash
# Everything `make demo` and `make test` need on a fresh Debian 12 machine: Debian packages
# (installed only when missing; root or sudo), then the project's venv.
set -euo pipefail
cd "$(dirname "$0")/.."

# kmod: the real modprobe/modinfo/depmod. dbus: the private test bus; systemd: busctl,
# systemd-analyze. libsystemd-dev + pkg-config + python3-dev + gcc: systemd-python builds.
# qemu-system-x86, linux-image-amd64, linux-headers-amd64, busybox-static, cpio, udev: the
# real-kernel VM tests. util-linux: setpriv (run a client as another uid).
PACKAGES=(
  kmod dbus systemd udev libsystemd-dev pkg-config gcc make python3-dev python3-venv
  util-linux qemu-system-x86 linux-image-amd64 linux-headers-amd64 busybox-static cpio
  zstd xz-utils
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.klpd-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ sim/pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q -U pip
  # The simulated kernel (sim/) is a separate distribution: tests and the demo only.
  .venv/bin/python -m pip install -q -e '.[test]' -e ./sim
  touch "$stamp"
fi
