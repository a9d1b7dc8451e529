# Two commands do everything on a fresh machine: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup run test test-python test-contracts lint bench bench-curve bench-matrix bench-table bench-latency clean chain

setup:
	@bash tools/setup.sh

## run: start a local 4-node cluster, synchronize 100 tx of 300 B, verify ledgers, stop.
run: setup
	$(BIN)/dtnbus sync --nodes 4 --tx 100 --tx-bytes 300 --dir .dtnbus/run --fresh

## test: every test, Python and Solidity.
test: setup lint test-python test-contracts

lint:
	$(BIN)/ruff check .

test-python:
	$(PY) -m pytest -p no:pytest-brownie -q

test-contracts:
	@if [ -d tests/contracts ] && ls tests/contracts/test_*.py >/dev/null 2>&1; then \
	  bash tools/contracts_test.sh; else echo "no contract tests yet"; fi

## chain: a persistent local chain (anvil, brownie network dtnbus-local) for docs/contracts.md.
chain: setup
	@bash tools/chain.sh

bench: setup
	$(PY) -m benchmarks.throughput

## bench-curve: what CurveZMQ costs on `dtnbus sync` and on the sockets (about 10 minutes).
bench-curve: setup
	$(PY) -m benchmarks.curve_cost

clean:
	rm -rf .dtnbus results build reports

## bench-matrix: the reference's sync matrix, ours beside it, 3 seeds a cell (long: hours).
bench-matrix: setup
	$(PY) -m benchmarks.matrix

## bench-table: dtnbus bench at n = 4 and 16, 1 and 256 tx per request (about 10 minutes).
bench-table: setup
	$(PY) -m benchmarks.bench_table

## bench-latency: latency vs load at n = 4 and 16, open loop 10-100 % (about 10 minutes).
bench-latency: setup
	$(PY) -m benchmarks.latency_curve --nodes 4 16
