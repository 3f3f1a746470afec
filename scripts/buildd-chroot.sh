#!/bin/sh
# The trixie buildd chroot, unpacked once from its cached tarball and reused by `make deb`
# (scripts/build-deb.sh) and the guest's test modules (tests/system/build-modules.sh).
#
#   scripts/buildd-chroot.sh            prints the chroot's directory
#
# Unpacking 1 GB costs more than a build; each user clears its own /build/<dir> instead.
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
tarball=$repo/build/roots/trixie-buildd.tar
dir=$repo/build/roots/trixie-buildd
# shellcheck disable=SC2046
"$repo/scripts/debian-root.sh" "$tarball" trixie buildd \
	$(grep -v '^#' "$repo/scripts/trixie-buildd-packages.txt") >/dev/null
if [ ! -f "$dir/.unpacked" ] || [ "$tarball" -nt "$dir/.unpacked" ]; then
	rm -rf "$dir"
	mkdir -p "$dir"
	tar -C "$dir" -xf "$tarball"
	touch "$dir/.unpacked"
fi
echo "$dir"
