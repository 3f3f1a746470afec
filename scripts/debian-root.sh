#!/bin/sh
# A Debian root file system as a tarball, made with mmdebstrap and cached.
#
#   scripts/debian-root.sh OUT.tar SUITE VARIANT [PACKAGE ...]
#
#   scripts/debian-root.sh build/roots/trixie-buildd.tar trixie buildd debhelper dh-python
#
# OUT.tar is reused when OUT.tar.args (written next to it) says it was made from the same
# arguments; otherwise it is made anew (mmdebstrap into OUT.tar.tmp, then renamed, so an
# interrupted run never leaves a half root behind). Prints OUT.tar. Needs root (mmdebstrap's
# root mode: device nodes, file ownership) and reaches Debian's archive by the suite name.
# The apt package lists are kept in the root so that `apt-get install ./some.deb` inside it
# resolves dependencies without another download.
set -eu

if [ $# -lt 3 ]; then
	echo "usage: $0 OUT.tar SUITE VARIANT [PACKAGE ...]" >&2
	exit 2
fi
out=$1 suite=$2 variant=$3
shift 3
packages=$(printf '%s\n' "$@" | sort -u | tr '\n' ',' | sed 's/,$//')
args="suite=$suite variant=$variant include=$packages"

if [ -f "$out" ] && [ "$(cat "$out.args" 2>/dev/null)" = "$args" ]; then
	echo "$out"
	exit 0
fi
command -v mmdebstrap >/dev/null || {
	echo "debian-root.sh: mmdebstrap is missing (scripts/setup.sh installs it)" >&2
	exit 1
}
mkdir -p "$(dirname "$out")"
rm -f "$out" "$out.args" "$out.tmp"
echo "debian-root.sh: making $out ($args)" >&2
# shellcheck disable=SC2086
mmdebstrap --quiet --mode=root --variant="$variant" ${packages:+--include="$packages"} \
	--skip=cleanup/apt/lists --format=tar "$suite" "$out.tmp" >&2
mv "$out.tmp" "$out"
echo "$args" >"$out.args"
echo "$out"
