"""The deterministic simulator in `make test`.

Every Byzantine mode with f faulty replicas at n = 4 and n = 7, 200 seeds each, in the
scenario `dtnbus.simulation.scenario.standard` (a network that loses, reorders and
duplicates, one random partition, one crash-restart, then healing): agreement at every
sequence, no double execution, no exception after every step, every request decided
after healing. A seed may fail only if an open finding explains it (findings.py: each has
a strict xfail below that asserts no seed fails with it); any other failure fails its
cell with the command that replays it and the minimal trace.

More seeds: DTNBUS_SIM_SEEDS=1000; the benchmark runs 10,000 per mode
(python -m benchmarks.simulate_seeds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from findings import OPEN, explain

from dtnbus.simulation.engine import SimOptions, Simulation
from dtnbus.simulation.scenario import MODES, Summary, explain_failure, run_seeds, standard

SEEDS = int(os.environ.get("DTNBUS_SIM_SEEDS", "200"))
JOBS = min(2, os.cpu_count() or 1)
_SWEEPS: dict[tuple[int, str], Summary] = {}


def sweep(n: int, mode: str) -> Summary:
    """The seeds of one cell, run once per session (the per-finding tests reuse them)."""
    if (n, mode) not in _SWEEPS:
        _SWEEPS[(n, mode)] = run_seeds(standard(n, mode), range(SEEDS), jobs=JOBS, explain=0)
    return _SWEEPS[(n, mode)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", [4, 7])
def test_every_mode_with_f_faulty_replicas_keeps_safety_and_liveness(n: int, mode: str) -> None:
    summary = sweep(n, mode)
    unexplained = {seed: v for seed, v in summary.first_violation.items() if explain(v) is None}
    if unexplained:
        seed = min(unexplained)
        failure = explain_failure(standard(n, mode), seed, unexplained[seed])
        v = failure.violation
        pytest.fail(f"n={n} {mode}: seeds {sorted(unexplained)} violate, no open finding "
                    f"explains them; seed {seed}: {v.kind}: {v.detail}\n"
                    f"replay: {failure.command}\n" + "\n".join(failure.trace))
    assert summary.committed_batches >= SEEDS - len(summary.first_violation)  # progress


@pytest.mark.parametrize("finding", [
    pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=f"FINDING {name}: {why}"))
    for name, why in OPEN.items()])
def test_no_seed_of_the_sweep_fails_because_of_an_open_finding(finding: str) -> None:
    hits = sorted((n, mode, seed) for n in (4, 7) for mode in MODES
                  for seed, v in sweep(n, mode).first_violation.items()
                  if explain(v) == finding)
    assert not hits, f"{len(hits)} seeds fail because of {finding}, e.g. {hits[:8]}"


def test_more_than_f_colluding_equivocators_fork_the_ledger_and_the_checker_says_so() -> None:
    """The invariants bite: two colluding equivocators of four (f = 1) break PBFT's
    assumption, and the fork is found, with a replay command and a trace that shows it."""
    options = SimOptions(nodes=4, byzantine=_modes("0=equivocate,1=equivocate"), requests=1)
    summary = run_seeds(options, range(5))
    assert summary.violations["agreement"] >= 1
    failure = summary.failures[0]
    assert failure.violation.kind == "agreement" and failure.violation.seq == 1
    assert failure.command.startswith(f"dtnbus simulate --nodes 4 --seed {failure.seed}")
    assert any("PRE-PREPARE(v0 s1 from 0" in line for line in failure.trace)
    assert any("executes s1" in line for line in failure.trace)


def test_f_colluding_equivocators_are_survived() -> None:
    options = SimOptions(nodes=7, byzantine=_modes("0=equivocate,1=equivocate"), requests=2,
                         clients=2)
    summary = run_seeds(options, range(20))
    assert summary.runs_with_violations == 0 and summary.committed_batches >= 20


def test_the_fast_path_promise_holds_on_the_seeds_that_break_it_without_its_view_rule(
) -> None:
    """With an equivocating primary, these seeds of the standard n = 4 cell (seeds
    0..1999) let a client accept a batch on n speculative replies that a view change then
    replaced when `plan_new_view` ignored speculative support (client-safety in 4 of
    2,000); with the rule every one holds (docs/protocol.md, "The fast path")."""
    summary = run_seeds(standard(4, "equivocate"), [96, 330, 1438, 1792])
    assert summary.runs_with_violations == 0, summary.first_violation


def test_an_exception_in_a_replica_is_a_violation(monkeypatch: pytest.MonkeyPatch) -> None:
    from dtnbus.replica import Replica

    real = Replica._on_checkpoint

    def broken(self: Replica, *args: object) -> None:
        raise KeyError("boom")

    monkeypatch.setattr(Replica, "_on_checkpoint", broken)
    result = Simulation(SimOptions(nodes=4, requests=5, clients=1), 0).run()
    monkeypatch.setattr(Replica, "_on_checkpoint", real)
    assert [v.kind for v in result.violations] == ["exception"]
    assert "KeyError" in result.violations[0].detail


def test_restarts_on_a_clock_far_from_zero_leave_no_replica_in_a_busy_loop() -> None:
    """A node's clock is the host's monotonic clock, hours from 0: a timer anchored at 0.0
    is overdue there at once (the restarted replica's Fetch storm, fixed after 5598b3b:
    16 of these 40 seeds were busy loops before). Every tick must leave the replica with
    nothing due until later."""
    options = SimOptions(nodes=4, crash_restart=2, clients=2, requests=5, drop=0.05,
                         epoch=40_000.0)
    summary = run_seeds(options, range(40))
    assert not summary.failures, explain_failure(summary.failures[0])


def test_a_replica_due_again_right_after_its_tick_is_a_violation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from dtnbus.replica import Replica

    monkeypatch.setattr(Replica, "next_wakeup", lambda self, heartbeat=True: 0.0)
    result = Simulation(SimOptions(nodes=4, requests=1, epoch=40_000.0), 0).run()
    assert [v.kind for v in result.violations] == ["busy-loop"]


def test_a_run_is_the_same_run_in_any_process() -> None:
    """Same seed, same options: the same run, message for message, whatever the hash seed
    of the process (a failing seed must replay)."""
    args = [sys.executable, "-m", "dtnbus", "simulate", "--nodes", "4", "--seeds", "6",
            "--byzantine", "equivocate", "--drop", "0.1", "--reorder", "--duplicate", "0.05",
            "--crash-restart", "1", "--partition", "random", "--clients", "2", "--json"]
    outputs = set()
    for hash_seed in ("0", "4242"):
        done = subprocess.run(args, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONHASHSEED": hash_seed})
        assert done.returncode == 0, done.stdout + done.stderr
        result = json.loads(done.stdout.strip().splitlines()[-1])
        outputs.add((result["messages"], result["committed_batches"],
                     result["virtual_seconds"], json.dumps(result["drops"], sort_keys=True)))
    assert len(outputs) == 1, outputs
    first = Simulation(standard(4, "replay"), 3).run()
    again = Simulation(standard(4, "replay"), 3).run()
    assert (first.messages, first.virtual_seconds, first.drops) == \
        (again.messages, again.virtual_seconds, again.drops)


def test_real_signatures_give_the_same_guarantees() -> None:
    summary = run_seeds(standard(4, "forge", authenticator="ed25519"), range(4))
    assert all(explain(v) for v in summary.first_violation.values()), summary.first_violation
    assert summary.committed_batches >= 4


def test_the_command_line_prints_the_violation_replay_and_json() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dtnbus", "simulate", "--nodes", "4", "--seed", "0",
         "--byzantine", "0=equivocate,1=equivocate", "--requests", "1", "--json"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "VIOLATION seed 0: agreement" in done.stdout
    assert "replay: dtnbus simulate --nodes 4 --seed 0" in done.stdout
    assert "cheap authenticator" in done.stdout
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("nodes", "seeds", "byzantine", "violations", "committed_batches",
                "virtual_seconds", "wall_seconds", "messages"):
        assert key in result
    assert result["violations"] == 1 and result["nodes"] == 4


@pytest.mark.parametrize("args", [
    ["--byzantine", "4=silent"], ["--byzantine", "1=bogus"], ["--byzantine", "silent:3"],
    ["--byzantine", "slow:0.5"], ["--partition", "0,1|1,2"], ["--partition", "0,1@3-1"],
    ["--byzantine", "silent,silent,silent,silent,silent"]])
def test_bad_options_are_one_line_and_exit_2(args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "dtnbus", "simulate", "--nodes", "4", *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


def _modes(text: str) -> dict:
    from dtnbus.byzantine import parse_assignment

    return parse_assignment(text)[0]


def test_execution_takes_back_the_early_reply_decision_only_when_it_is_the_same(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica decides a batch's outcomes for its early (tentative or speculative) reply
    and takes that decision back at execution while the ledger head and the batch are
    unchanged: checked against a fresh decision on every execution of faulty schedules
    (view changes, re-proposals, crash-restarts, state transfer)."""
    from dtnbus.clients import ClientTable

    real = ClientTable.execute_batch
    reused = []

    def checked(self: ClientTable, requests: list, decided: object = None) -> bytes:
        if decided is not None:
            reused.append(1)
            assert decided == self.decide_batch(requests)
        return real(self, requests, decided)  # type: ignore[arg-type]

    monkeypatch.setattr(ClientTable, "execute_batch", checked)
    summary = run_seeds(standard(4, "equivocate"), range(30))
    assert not summary.failures, explain_failure(summary.failures[0])
    assert len(reused) > 100
