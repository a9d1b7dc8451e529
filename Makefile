# Two commands do everything on a fresh machine: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup run test test-slow test-python test-contracts lint bench bench-curve bench-matrix bench-table bench-latency \
	bench-sim bench-sim-seeds bench-byzantine bench-partial-tags bench-chaos bench-fuzz bench-flood clean chain

setup:
	@bash tools/setup.sh

## run: start a local 4-node cluster, synchronize 100 tx of 300 B, verify ledgers, stop.
run: setup
	$(BIN)/dtnbus sync --nodes 4 --tx 100 --tx-bytes 300 --dir .dtnbus/run --fresh

## test: every test but the long fault runs, Python and Solidity (under 10 minutes).
test: setup lint test-python test-contracts

## test-slow: the long runs (chaos kill -9 cycles, member and client floods, the seeded
## random schedules, the contracts walk-through); CI runs it after `make test`.
test-slow: setup
	$(PY) -m pytest -p no:pytest-brownie -q -m slow

lint:
	$(BIN)/ruff check .

test-python:
	$(PY) -m pytest -p no:pytest-brownie -q -m "not slow"

test-contracts:
	@if [ -d tests/contracts ] && ls tests/contracts/test_*.py >/dev/null 2>&1; then \
	  bash tools/contracts_test.sh; else echo "no contract tests yet"; fi

## chain: a persistent local chain (anvil, brownie network dtnbus-local) for docs/contracts.md.
chain: setup
	@bash tools/chain.sh

bench: setup
	$(PY) -m benchmarks.throughput

## bench-sim: the simulator at 10, 100, 300 and 1,000 replicas (about a minute).
bench-sim: setup
	$(PY) -m benchmarks.simulate_scale

## bench-sim-seeds: every Byzantine mode x n = 4, 7 x 10,000 seeds (long: about an hour).
bench-sim-seeds: setup
	$(PY) -m benchmarks.simulate_seeds

## bench-byzantine: every Byzantine mode in real clusters of n = 4 and 7 with f faulty
## nodes, 10 s of client stream each (about 10 minutes); results/byzantine-nodes.csv.
bench-byzantine: setup
	$(PY) -m benchmarks.byzantine_nodes --nodes 4,7 --seconds 10

## bench-partial-tags: honest clients beside a faulty one spoiling its MAC tags, n = 4, with
## and without CURVE, 40 s a cell (about 3 minutes); results/partial-tags.csv.
bench-partial-tags: setup
	$(PY) -m benchmarks.partial_tags --nodes 4 --seconds 40

## bench-curve: what CurveZMQ costs on `dtnbus sync` and on the sockets (about 10 minutes).
bench-curve: setup
	$(PY) -m benchmarks.curve_cost

clean:
	rm -rf .dtnbus results build reports

## bench-matrix: the reference's sync matrix, ours beside it, 3 seeds a cell (long: hours).
bench-matrix: setup
	$(PY) -m benchmarks.matrix

## bench-chaos: 100 kill -9/restart cycles per seed, three seeds, under a client stream
## (about 25 minutes); results/chaos*.{csv,png}.
bench-chaos: setup
	$(BIN)/dtnbus chaos --nodes 4 --kills 100 --seed 1 --seeds 3

## bench-fuzz: 1,000,000 hostile frames at every socket of real nodes (about 2 minutes).
bench-fuzz: setup
	$(PY) -m benchmarks.fuzz --frames 1000000

## bench-flood: one member's floods of every kind, and clients at 10x capacity for 60 s.
bench-flood: setup
	$(PY) -m benchmarks.flood

## bench-table: dtnbus bench at n = 4 and 16, 1 and 256 tx per request (about 10 minutes).
bench-table: setup
	$(PY) -m benchmarks.bench_table

## bench-latency: latency vs load at n = 4 and 16, open loop 10-100 % (about 10 minutes).
bench-latency: setup
	$(PY) -m benchmarks.latency_curve --nodes 4 16
