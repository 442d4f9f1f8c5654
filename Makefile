# Fresh machine: `make demo` (set up + default workflow to a PNG), `make test` (set up + suite).
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast lint bench clean ts-sdk

setup:
	./scripts/setup.sh

# Small and quick on the tiny random-weight model; the run says how to get real pictures.
demo: setup
	$(VENV)/bin/comfyd run --output-dir output --set 5.width=128 --set 5.height=128

# Two workers, one test file each at a time (pytest-xdist): waits on servers and subprocesses
# overlap with model compute, which keeps the suite inside its 15 minutes on 2 cores.
TEST_WORKERS ?= 2

test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast:
	$(PY) -m pytest -q -m "not slow"

# The TypeScript SDK for tests/server/test_api_v2_typescript.py (skipped without it); needs node + npm.
ts-sdk:
	cd tests/ts && npm ci --no-audit --no-fund

lint:
	$(VENV)/bin/ruff check comfyd tests bench

bench:
	$(PY) bench/executor_overhead.py
	$(PY) bench/model_load.py
	$(PY) bench/server_load.py

clean:
	rm -rf output temp .pytest_cache
