#!/bin/sh
# Install klpd's system files where the system expects them (DESTDIR-aware, for packaging).
#
#   sudo scripts/install.sh                      # onto this host
#   DESTDIR=/tmp/pkgroot scripts/install.sh      # into a staging root
#
# Installs:
#   $UNITDIR/klpd.service                          systemd unit (ExecStart=$BINDIR/klpd)
#   $TMPFILESDIR/klpd.conf                         makes /run/modprobe.d at boot
#   $SYSCONFDIR/klpd/klpd.toml                     default configuration (an existing file is
#                                                  kept; the new one goes to klpd.toml.new)
#   $DATADIR/dbus-1/system.d/io.github.Klpd1.conf  D-Bus policy (who may own and call)
#   $DATADIR/polkit-1/actions/io.github.klpd1.policy  polkit actions (who may change patches)
#   $DOCDIR/                                       README.md, config.md
#
# The Python package is installed separately, e.g. `pip install .` into a virtualenv or by
# your distribution's packaging; set BINDIR to the directory that holds its `klpd` so the
# unit's ExecStart= points at it.
#
# Variables (defaults): DESTDIR (empty), BINDIR (/usr/bin), SYSCONFDIR (/etc),
# DATADIR (/usr/share), UNITDIR (pkg-config's systemdsystemunitdir, else
# /usr/lib/systemd/system), TMPFILESDIR (/usr/lib/tmpfiles.d), DOCDIR ($DATADIR/doc/klpd).
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
BINDIR=${BINDIR:-/usr/bin}
SYSCONFDIR=${SYSCONFDIR:-/etc}
DATADIR=${DATADIR:-/usr/share}
DOCDIR=${DOCDIR:-$DATADIR/doc/klpd}
TMPFILESDIR=${TMPFILESDIR:-/usr/lib/tmpfiles.d}
if [ -z "${UNITDIR:-}" ]; then
    UNITDIR=$(pkg-config --variable=systemdsystemunitdir systemd 2>/dev/null || true)
    UNITDIR=${UNITDIR:-/usr/lib/systemd/system}
fi

for dir in "$BINDIR" "$SYSCONFDIR" "$DATADIR" "$DOCDIR" "$UNITDIR" "$TMPFILESDIR"; do
    case $dir in
        /*) ;;
        *) echo "install.sh: $dir: directories must be absolute" >&2; exit 2 ;;
    esac
done

say() { printf '  %s\n' "$*"; }

# install -D -m MODE SRC DEST, with DESTDIR prepended
put() {
    install -D -m "$1" "$2" "$DESTDIR$3"
    say "$DESTDIR$3"
}

echo "Installing klpd system files${DESTDIR:+ into $DESTDIR}:"

# The unit: ExecStart follows BINDIR; everything else is as tested in tests/unit/test_unit.py.
unit_tmp=$(mktemp)
trap 'rm -f "$unit_tmp"' EXIT
sed "s|^ExecStart=/usr/bin/klpd |ExecStart=$BINDIR/klpd |" "$here/units/klpd.service" >"$unit_tmp"
put 0644 "$unit_tmp" "$UNITDIR/klpd.service"
put 0644 "$here/units/klpd.tmpfiles" "$TMPFILESDIR/klpd.conf"

# The configuration belongs to the administrator once installed: never overwrite it.
conf="$SYSCONFDIR/klpd/klpd.toml"
if [ -e "$DESTDIR$conf" ] && ! cmp -s "$here/etc/klpd/klpd.toml" "$DESTDIR$conf"; then
    put 0644 "$here/etc/klpd/klpd.toml" "$conf.new"
    say "(kept your $conf; compare it with $conf.new)"
else
    put 0644 "$here/etc/klpd/klpd.toml" "$conf"
fi

# Package-shipped D-Bus policies and polkit actions live under /usr/share; /etc is for
# the administrator's overrides.
put 0644 "$here/etc/dbus-1/system.d/io.github.Klpd1.conf" \
    "$DATADIR/dbus-1/system.d/io.github.Klpd1.conf"
put 0644 "$here/etc/polkit-1/actions/io.github.klpd1.policy" \
    "$DATADIR/polkit-1/actions/io.github.klpd1.policy"

for doc in README.md docs/config.md; do
    if [ -f "$here/$doc" ]; then
        put 0644 "$here/$doc" "$DOCDIR/$(basename "$doc")"
    fi
done

if [ -z "$DESTDIR" ]; then
    if [ ! -x "$BINDIR/klpd" ]; then
        echo "note: $BINDIR/klpd does not exist yet: install the Python package" \
            "(pip install .) and/or set BINDIR" >&2
    fi
    cat <<EOF
Next:
  systemd-tmpfiles --create klpd.conf   # /run/modprobe.d, as at every boot
  systemctl daemon-reload
  systemctl reload dbus            # picks up the new D-Bus policy
  klpd --check-config --config $conf
  systemctl enable --now klpd
EOF
fi
