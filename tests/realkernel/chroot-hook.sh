#!/bin/sh
# mmdebstrap customize hook for a kernel line's build chroot (tests/realkernel/lines.py):
# $1 is the chroot. Downloads the kernel image package that matches the installed
# linux-headers-amd64 (the same ABI, e.g. linux-image-6.1.0-57-amd64) into /klpd/ - and,
# where the image is split (trixie-backports' 7.x: linux-binary-<abi> has vmlinuz,
# linux-modules-<abi> the modules), those packages too - and records the kernel release in
# /klpd/kernel-release. Nothing is installed: the host extracts them with dpkg-deb.
set -eu
hdr=$(chroot "$1" dpkg-query -W -f='${Depends}' linux-headers-amd64 |
	grep -o 'linux-headers-[^ ,]*' | head -n1)
[ -n "$hdr" ] || { echo "chroot-hook: linux-headers-amd64 depends on no headers" >&2; exit 1; }
release=${hdr#linux-headers-}
mkdir -p "$1/klpd"
pkgs="linux-image-$release"
for p in "linux-binary-$release" "linux-modules-$release"; do
	if chroot "$1" apt-cache show "$p" >/dev/null 2>&1; then pkgs="$pkgs $p"; fi
done
chroot "$1" sh -c "cd /klpd && apt-get download -q $pkgs" >&2
ls "$1"/klpd/linux-image-"$release"_*.deb >/dev/null
echo "$release" >"$1/klpd/kernel-release"
