# pgfanout: `make demo` runs the pipeline end to end on the local stack; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: help deps browser chaos-tools capture-lib venv jars up down demo test unit lint bench bench-peers chaos clean

help:
	@echo "make demo   install what is missing, start the local stack, replicate a workload, prove equality"
	@echo "make test   install what is missing, then run every test (unit + integration + fault)"
	@echo "make unit   only the unit tests (no servers)"
	@echo "make down   stop the local stack started by make demo"
	@echo "make lint   ruff check, ruff format --check and the import contracts (make test runs it first)"
	@echo "make bench  the benchmarks (bench/README.md); results in bench/results/"
	@echo "make chaos  the 10-minute chaos run (bench/chaos); its table in bench/results/chaos.md"
	@echo "make bench-peers  pgfanout, native logical replication and Slony-I side by side (about 30 minutes)"

deps:
	@scripts/install-deps.sh

# Debian's Chromium, for the test that opens `pgfanout web` in a headless browser (skipped without it)
browser:
	@scripts/install-browser.sh

# nftables, with which the chaos run cuts links between tiers
chaos-tools:
	@scripts/install-chaos-tools.sh

# the C capture trigger, installed into the local PostgreSQL (agent/capture_c; optional in production)
capture-lib: deps
	@scripts/build-capture-lib.sh

$(BIN)/pgfanout: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

venv: $(BIN)/pgfanout

jars: deps venv
	$(BIN)/python -c 'from devstack.broker import ensure_jars; print(ensure_jars())'

up: deps venv
	$(BIN)/python -m devstack local up

down: venv
	$(BIN)/python -m devstack local down

demo: deps capture-lib venv
	$(BIN)/python -m devstack demo

test: lint deps capture-lib venv jars browser chaos-tools
	$(BIN)/pytest $(PYTEST_ARGS)

unit: venv
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

bench: deps capture-lib venv jars
	$(BIN)/python -m bench.publish_throughput
	$(BIN)/python -m bench.capture_overhead
	$(BIN)/python -m bench.lag
	$(BIN)/python -m bench.catchup
	$(BIN)/python -m bench.keepup
	$(BIN)/python -m bench.bulk
	$(BIN)/python -m bench.materialize
	$(BIN)/python -m bench.route_throughput
	$(BIN)/python -m bench.lag --tiers 1 --filtered
	$(BIN)/python -m bench.lag --tiers 2 --filtered

bench-peers: deps capture-lib venv jars
	@scripts/install-slony.sh
	$(BIN)/python -m bench.peers

chaos: deps capture-lib venv jars chaos-tools
	$(BIN)/python -m bench.chaos --minutes 10

clean: down
	rm -rf $(VENV) .pgfanout .pytest_cache
