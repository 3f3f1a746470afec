#!/usr/bin/env bash
# What `make demo` or `make test` needs on a fresh Debian 12 machine: Debian packages
# (installed only when missing; root or sudo), then the project's venv(s).
#
#   scripts/setup.sh demo    only what the demo uses (no compiler, qemu or kernel images)
#   scripts/setup.sh test    everything the suite uses (the default)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-test}

# The demo: kmod (modinfo, which klpd runs), dbus (the demo's private bus), python3-venv.
DEMO_PACKAGES=(kmod dbus python3-venv)
# The suite, besides: systemd (busctl, systemd-analyze); libsystemd-dev + pkg-config +
# python3-dev + gcc: systemd-python builds. util-linux: setpriv (run a client as another
# uid). qemu-system-x86, linux-image-amd64, linux-headers-amd64, busybox-static, cpio, udev:
# the real-kernel VM tests (tests/realkernel). mmdebstrap + debian-archive-keyring: the
# per-release build chroots of each kernel line (scripts/debian-chroot.sh), the Debian 13
# build chroot (`make deb`) and guest (tests/system); e2fsprogs: mkfs.ext4 -d and
# debugfs for the guest's disk.
TEST_PACKAGES=(
  "${DEMO_PACKAGES[@]}"
  systemd udev libsystemd-dev pkg-config gcc make python3-dev util-linux
  qemu-system-x86 linux-image-amd64 linux-headers-amd64 busybox-static cpio zstd xz-utils
  mmdebstrap debian-archive-keyring e2fsprogs
)
case $mode in
  demo) PACKAGES=("${DEMO_PACKAGES[@]}") ;;
  test) PACKAGES=("${TEST_PACKAGES[@]}") ;;
  *) echo "usage: $0 [demo|test]" >&2; exit 2 ;;
esac

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# The demo needs klpd and the simulated kernel (sim/, a separate distribution: tests and
# the demo only); the suite adds the test tools.
extras=""
[ "$mode" = test ] && extras="[test]"
stamp=.venv/.klpd-installed-$mode
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ sim/pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q -U pip
  .venv/bin/python -m pip install -q -e ".$extras" -e ./sim
  touch "$stamp"
fi
[ "$mode" = test ] || exit 0

# The oldest dependency versions pyproject.toml admits (tests/min-versions.txt): `make test`
# runs tests/unit and tests/e2e in this venv too.
min_stamp=build/venv-min/.klpd-installed
if [ ! -f "$min_stamp" ] || [ tests/min-versions.txt -nt "$min_stamp" ] ||
  [ pyproject.toml -nt "$min_stamp" ]; then
  rm -rf build/venv-min
  "$PYTHON" -m venv build/venv-min
  build/venv-min/bin/python -m pip install -q --constraint tests/min-versions.txt \
    -e '.[test]' -e ./sim
  touch "$min_stamp"
fi

# promtool (alert rules and the metrics check of tests/system), from Debian's prometheus
# package, unpacked under build/ rather than installed: installing it would also start a
# Prometheus server on this machine.
if [ ! -x build/tools/usr/bin/promtool ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -q prometheus >/dev/null)
  mkdir -p build/tools
  dpkg-deb -x "$tmp"/prometheus_*.deb build/tools
  rm -rf "$tmp"
fi
