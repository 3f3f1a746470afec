#!/bin/sh
# Build klpd's real-kernel test modules out of tree against Debian's kernel
# headers. Idempotent: installs only what is missing, rebuilds only what changed.
#
#   tests/realkernel/build.sh [BUILD_DIR]     (default: <repo>/build/realkernel)
#
# Prints, as its last line, KLPD_KVER=<version> KLPD_KO_DIR=<dir with the .ko files>.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
build_dir=${1:-$repo/build/realkernel}

# What the harness needs on the host. Package -> a file that proves it is there.
need_packages=""
check() { [ -e "$2" ] || need_packages="$need_packages $1"; }
check make /usr/bin/make
check gcc /usr/bin/gcc
check kmod /usr/sbin/depmod
check cpio /usr/bin/cpio
check busybox-static /bin/busybox
check qemu-system-x86 /usr/bin/qemu-system-x86_64
check linux-image-amd64 "$(ls /boot/vmlinuz-*-amd64 2>/dev/null | head -n1)"
check linux-headers-amd64 "$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | head -n1)"
if [ -n "$need_packages" ]; then
	echo "build.sh: installing:$need_packages" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >&2
	# shellcheck disable=SC2086
	apt-get install -y -q --no-install-recommends $need_packages >&2
fi
if ! busybox --list 2>/dev/null | grep -qx switch_root; then
	echo "build.sh: /bin/busybox has no switch_root (need busybox-static)" >&2
	exit 1
fi

# The newest Debian kernel that has both an image and its headers.
kver=""
for image in $(ls /boot/vmlinuz-*-amd64 | sort -V); do
	v=${image#/boot/vmlinuz-}
	[ -e "/lib/modules/$v/build/Makefile" ] && kver=$v
done
if [ -z "$kver" ]; then
	echo "build.sh: no /boot/vmlinuz-*-amd64 with matching /lib/modules/<ver>/build" >&2
	exit 1
fi

src_dir=$build_dir/src/$kver
ko_dir=$build_dir/modules/$kver
mkdir -p "$src_dir" "$ko_dir"
# cp -u keeps mtimes of unchanged files, so make rebuilds only what changed.
cp -u "$here"/modules/*.c "$here"/modules/*.h "$here"/modules/Kbuild "$src_dir"/
make -s -C "/lib/modules/$kver/build" M="$src_dir" modules >&2
for ko in "$src_dir"/*.ko; do
	cmp -s "$ko" "$ko_dir/${ko##*/}" || cp "$ko" "$ko_dir/"
done
echo "KLPD_KVER=$kver KLPD_KO_DIR=$ko_dir"
