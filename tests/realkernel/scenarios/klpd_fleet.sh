#!/bin/sh
# Scenario "klpd_fleet": the klpd.fleet rolling playbook (ansible/) on the real kernel.
# ansible-playbook runs in the guest against the guest itself (ansible_connection=local;
# the modules run on Debian's /usr/bin/python3 and reach klpd through klpctl on the system
# bus). One run (each costs minutes of TCG): klpd starts with lpa applied; the rollout
# ships lpbad (tests/fleet/ship.yml: a copy into klpd's catalog), klpd applies
# lpbad__vmlinux and fails lpbad__klpd_target (EINVAL), the gate fails, the playbook rolls
# lpbad back and stops. A good patch's rollout is tests/fleet's part (six sim hosts).
. "$KLPD_LIB"
. "$(dirname "$KLPD_LIB")/services.sh"

klpctl() { "$KLPD_REPO/.venv/bin/klpctl" "$@"; }
W=/run/klpd-fleet
EXTRA=/lib/modules/$(uname -r)/extra
export KLPD_CATALOG=$W/catalog

stage() { # the catalog (lpa), lpbad's payload for the one host, the inventory
	mkdir -p "$KLPD_CATALOG" "$W/payloads/lpbad/localhost" &&
		cp "$EXTRA"/lpa__*.ko "$KLPD_CATALOG/" &&
		cp "$EXTRA"/lpbad__*.ko "$W/payloads/lpbad/localhost/" &&
		printf '%s\n' '[klpd]' "localhost ansible_connection=local \
ansible_python_interpreter=/usr/bin/python3 klpd_klpctl=$KLPD_REPO/.venv/bin/klpctl \
klpd_test_catalog=$KLPD_CATALOG" >"$W/inventory.ini"
}
rollout() { # PATCH: the playbook; its report is $W/report-PATCH.json
	ANSIBLE_COLLECTIONS_PATH="$KLPD_REPO/ansible" ANSIBLE_HOME="$W/ansible" \
		ANSIBLE_LOCAL_TEMP="$W/ansible/tmp" ANSIBLE_PIPELINING=1 ANSIBLE_NOCOLOR=1 \
		ANSIBLE_RETRY_FILES_ENABLED=0 LANG=C.UTF-8 \
		"$KLPD_REPO/.venv/bin/ansible-playbook" -i "$W/inventory.ini" klpd.fleet.rollout \
		-e "{\"klpd_rollout_patch\": \"$1\", \"klpd_rollout_report\": \"$W/report-$1.json\",
		     \"klpd_rollout_ship_tasks\": \"$KLPD_REPO/tests/fleet/ship.yml\",
		     \"klpd_test_payloads\": \"$W/payloads\", \"klpd_rollout_gate_timeout\": 300}"
}

must reset reset_livepatches
must services.dbus start_dbus
must services.udevd start_udevd
must target.load modprobe klpd_target
must stage stage
# a state directory of its own: the other scenarios' operator overrides are not this one's
must config write_klpd_config /run/klpd-fleet.toml '[state]' "directory = \"$W/state\""
start_klpd /run/klpd-fleet.toml "$KLPD_OUT/klpd.log"
must klpd.settled klpctl wait --timeout 300
# the playbook exits 2 (a host failed the gate): its rc is asserted by the test
step fleet.bad rollout lpbad
must fleet.bad.report cat "$W/report-lpbad.json"
step status klpctl --json status
must stop stop_klpd
finish
