# The two commands of the README: `make demo` and `make test`. Both set everything up.
VENV := .venv
PY := $(VENV)/bin/python

MINPY := build/venv-min/bin/python

.PHONY: setup setup-demo demo test test-min test-system lint bench deb install clean

setup:
	./scripts/setup.sh test

setup-demo:
	./scripts/setup.sh demo

demo: setup-demo
	$(PY) scripts/demo.py

# The whole suite (tests/system included: the .deb in a Debian 13 guest under systemd), then
# its unit and e2e parts again on the oldest dependency versions pyproject.toml admits
# (tests/min-versions.txt).
test: setup
	$(PY) -m pytest -ra
	$(MINPY) -m pytest -ra -p no:cacheprovider tests/unit tests/e2e

test-min: setup
	$(MINPY) -m pytest -ra -p no:cacheprovider tests/unit tests/e2e

# The .deb installed by apt in a Debian 13 guest under systemd (tests/system).
test-system: setup
	$(PY) -m pytest -ra tests/system

# The Debian 13 package, built in a trixie chroot: build/deb/klpd_<version>_all.deb
deb: setup
	./scripts/build-deb.sh

lint: setup
	$(VENV)/bin/ruff check klpd sim tests bench scripts
	$(VENV)/bin/mypy klpd sim/klpd_sim tests

bench: setup
	$(PY) bench/catalog_scan.py
	$(PY) bench/scan_loop_block.py
	$(PY) bench/action_cost.py
	$(PY) bench/event_latency.py
	$(PY) bench/burst_converge.py
	$(PY) bench/klpctl_status.py
	$(PY) bench/dbus_describe.py
	$(PY) bench/dbus_load.py
	$(PY) bench/unpatched_window.py
	$(PY) bench/inspect_modules.py
	$(PY) bench/boot_converge.py

install: setup
	./scripts/install.sh

clean:
	rm -rf build $(VENV) debian/.debhelper debian/klpd debian/files .pytest_cache .mypy_cache .ruff_cache .hypothesis
