#!/bin/sh
# `make deb`: build klpd's Debian package for Debian 13 (trixie) in a trixie chroot, so it
# builds the same from this Debian 12 machine or any other, and check it with trixie's
# lintian. Needs root (mmdebstrap root mode, chroot).
#
#   scripts/build-deb.sh [OUT_DIR]      (default build/deb)
#
# Leaves OUT_DIR/klpd_<version>_all.deb and OUT_DIR/lintian.txt; prints the .deb's path.
# The chroot is a cached mmdebstrap tarball (scripts/debian-root.sh, build/roots/), unpacked
# once (scripts/buildd-chroot.sh); each build starts from an empty /build/deb in it.
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-$repo/build/deb}" && cd "${1:-$repo/build/deb}" && pwd)
chroot=$("$repo/scripts/buildd-chroot.sh")
work=$chroot/build/deb
rm -rf "$work"
version=$(sed -n '1s/^klpd (\([^)]*\)).*/\1/p' "$repo/debian/changelog")
src=$work/klpd-$version
mkdir -p "$src"
# The working tree as git sees it (tracked and new files, nothing ignored): no venvs,
# no build/, no caches.
(cd "$repo" && git ls-files -z --cached --others --exclude-standard |
	tar --null --files-from=- --ignore-failed-read -cf - 2>/dev/null) | tar -C "$src" -xf -

# A private mount namespace: /proc for the build, gone when the build ends.
unshare --mount --propagation private sh -eu -c '
	mount -t proc proc "$1/proc"
	chroot "$1" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
		sh -eu -c "cd /build/deb/klpd-$2 && dpkg-buildpackage -us -uc -b >../dpkg-buildpackage.log 2>&1 || { tail -n 60 ../dpkg-buildpackage.log >&2; exit 1; }
			lintian --info --display-info --fail-on error,warning ../klpd_$2_*.changes >../lintian.txt 2>&1 || { cat ../lintian.txt >&2; exit 1; }"
' sh "$chroot" "$version"
cp "$work/dpkg-buildpackage.log" "$work/lintian.txt" "$out/"
cp "$work/klpd_${version}_all.deb" "$out/"
rm -rf "$work"
echo "$out/klpd_${version}_all.deb"
