# The two commands of the README: `make demo` and `make test`. Both set everything up.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench install clean

setup:
	./scripts/setup.sh

demo: setup
	$(PY) scripts/demo.py

test: setup
	$(PY) -m pytest -ra

lint: setup
	$(VENV)/bin/ruff check klpd sim tests bench scripts
	$(VENV)/bin/mypy klpd sim/klpd_sim tests

bench: setup
	$(PY) bench/catalog_scan.py
	$(PY) bench/event_latency.py
	$(PY) bench/burst_converge.py
	$(PY) bench/klpctl_status.py
	$(PY) bench/dbus_describe.py
	$(PY) bench/unpatched_window.py

install: setup
	./scripts/install.sh

clean:
	rm -rf build $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
