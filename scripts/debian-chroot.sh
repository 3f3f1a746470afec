#!/bin/sh
# A Debian release's minimal build chroot (`mmdebstrap --variant=buildd`), as a tarball, cached.
#
#   scripts/debian-chroot.sh SUITE OUT.tar [PACKAGE...] [-- MMDEBSTRAP-OPTION...]
#
# SUITE is a release name (bullseye, bookworm, trixie, ...) or RELEASE-backports: then the
# chroot is RELEASE with its backports suite added, and a PACKAGE written NAME/RELEASE-backports
# comes from there. Mirrors are mmdebstrap's defaults for the release (its updates and security
# suites included); the backports line is derived from the release's own line.
# OUT.tar is reused while OUT.tar.args records the same arguments; otherwise it is built again
# (about a minute) into OUT.tar.tmp and renamed, so a killed run never leaves a half tarball.
# Needs root (mmdebstrap's root mode) and mmdebstrap; installs mmdebstrap when missing.
# Shared by tests/realkernel (one chroot per kernel line) and anyone needing "a buildd chroot
# of release X".
set -eu

if [ $# -lt 2 ]; then
	echo "usage: $0 SUITE OUT.tar [PACKAGE...] [-- MMDEBSTRAP-OPTION...]" >&2
	exit 2
fi
suite=$1
out=$2
shift 2
packages=""
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
	packages="$packages,$1"
	shift
done
[ "${1:-}" = "--" ] && shift

# A hook given as a file is part of the key: its checksum, not only its name.
args="suite=$suite packages=$packages extra=$*"
for opt in "$@"; do
	case $opt in --*-hook=*) [ -f "${opt#*=}" ] && args="$args $(md5sum <"${opt#*=}")" ;; esac
done
if [ -f "$out" ] && [ "$(cat "$out.args" 2>/dev/null)" = "$args" ]; then
	echo "debian-chroot: cached $out" >&2
	exit 0
fi

if ! command -v mmdebstrap >/dev/null; then
	echo "debian-chroot: installing mmdebstrap" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >&2
	apt-get install -y -q --no-install-recommends mmdebstrap >&2
fi

release=$suite
case $suite in
*-backports)
	release=${suite%-backports}
	# The release's main line, with the suite renamed: same mirror, same components.
	set -- --setup-hook="grep -m1 '^deb .* $release main' \"\$1/etc/apt/sources.list\" | sed 's/ $release main/ $suite main/' >>\"\$1/etc/apt/sources.list\"" "$@"
	;;
esac

mkdir -p "$(dirname "$out")"
rm -f "$out.tmp" "$out.args"
echo "debian-chroot: building $out ($suite:$packages)" >&2
mmdebstrap --variant=buildd --format=tar --include="${packages#,}" "$@" "$release" "$out.tmp" >&2
mv "$out.tmp" "$out"
echo "$args" >"$out.args"
