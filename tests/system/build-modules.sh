#!/bin/sh
# Build the livepatch test modules (tests/realkernel/modules/) for Debian 13's kernel KVER
# with Debian 13's own compiler, in the trixie buildd chroot that `make deb` uses.
#
#   tests/system/build-modules.sh KVER OUT_DIR
#
# Leaves OUT_DIR/*.ko. Needs root (chroot). When the cached chroot's headers are not
# KVER's (the archive moved on between the two caches), the chroot is made anew.
set -eu

kver=$1
out=$2
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$("$repo/scripts/buildd-chroot.sh")
if [ ! -e "$work/usr/src/linux-headers-$kver/Makefile" ]; then
	echo "build-modules.sh: the buildd chroot has no headers for $kver: making it anew" >&2
	rm -f "$repo/build/roots/trixie-buildd.tar"
	work=$("$repo/scripts/buildd-chroot.sh")
fi
rm -rf "$work/build/modules"
mkdir -p "$work/build/modules"
cp "$repo"/tests/realkernel/modules/*.c "$repo"/tests/realkernel/modules/*.h \
	"$repo"/tests/realkernel/modules/Kbuild "$work/build/modules/"
unshare --mount --propagation private sh -eu -c '
	mount -t proc proc "$1/proc"
	chroot "$1" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
		make -s -C "/usr/src/linux-headers-$2" M=/build/modules modules
' sh "$work" "$kver" >&2
mkdir -p "$out"
cp "$work"/build/modules/*.ko "$out/"
