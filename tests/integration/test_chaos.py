"""Issue 9's real-process test: kill -9 and restart, over and over, the primary included.

26 cycles over two seeds (13 each, one through the command line; `make bench-chaos` is
the long run: 100 per seed). A
client stream runs throughout; each cycle kills one node with SIGKILL at a random moment,
restarts it after a random time and waits until it has caught up. Every request the client
saw acknowledged must be in every ledger exactly once, where it was told; the ledgers
identical and valid; and no stall longer than the view-change timeout allows
(`chaos.default_bound`: 3 timeouts + 2 s, with a 1 s timeout here). Before the core
rewrite, two of four such runs deadlocked for good.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from integration_support import processes_mentioning

from dtnbus.chaos import ChaosPlan, ChaosResult, check_acknowledged, run_chaos
from dtnbus.config import load_cluster
from dtnbus.stream import RequestStream

# long real-process fault runs: `make test-slow` (CI runs it after `make test`)
pytestmark = pytest.mark.slow

KILLS = 13
FAST = {"gap": (0.2, 0.8), "down": (0.1, 0.8), "client_window": 4}  # less waiting between


def _explain(result: ChaosResult) -> str:
    lines = [f"seed {result.seed}: {v}" for v in result.violations]
    lines += [f"  kill {r.index + 1}: node {r.node}{' (primary)' if r.was_primary else ''}, "
              f"down {r.down_seconds:.2f} s, caught up "
              f"{'never' if r.catchup_seconds is None else f'{r.catchup_seconds:.2f} s'}, "
              f"longest gap {r.longest_gap_in_window:.2f} s" for r in result.records]
    return "\n".join([*lines, f"cluster directory: {result.directory}"])



def _assert_clean(result: ChaosResult, directory: Path) -> None:
    assert not processes_mentioning(str(directory)), "node processes left running"
    assert result.ok, _explain(result)
    assert result.kills == KILLS
    assert result.kills_of_primary >= 1, "no kill hit the primary: the seed tests too little"
    assert result.view_changes >= result.kills_of_primary
    assert result.acknowledged > 100 and result.missing == 0 and result.duplicated == 0
    assert result.longest_stall <= result.stall_bound
    assert len(set(result.heights.values())) == 1


def test_kill9_restart_cycles_lose_nothing_and_never_stall(tmp_path: Path) -> None:
    plan = ChaosPlan(kills=KILLS, seed=12, **FAST)  # type: ignore[arg-type]
    directory = tmp_path / "cluster"
    result = run_chaos(plan, directory)
    _assert_clean(result, directory)
    assert result.catchup_max is not None and result.catchup_max < plan.catchup_timeout


def test_kill9_restart_at_saturation_loses_no_load_request(tmp_path: Path) -> None:
    """The kills land among thousands of requests a second (`--load`: 8 more clients, 32
    outstanding each): restarted nodes catch up with a moving head, and every request a
    load client saw executed is in every ledger, once."""
    plan = ChaosPlan(kills=6, seed=13, load_clients=8, **FAST)  # type: ignore[arg-type]
    directory = tmp_path / "cluster"
    result = run_chaos(plan, directory)
    assert not processes_mentioning(str(directory)), "node processes left running"
    assert result.ok, _explain(result)
    assert result.load_acknowledged > 2000, result.load_acknowledged
    assert result.missing == 0 and result.duplicated == 0
    # the check is not vacuous: a load request no ledger holds is missing from each
    config = load_cluster(directory / "cluster.toml")
    missing, duplicated, _ = check_acknowledged(config, RequestStream(config),
                                                also={("client-1", 1, 10**9)})
    assert (missing, duplicated) == (config.n, 0)


def test_two_of_seven_killed_together_lose_nothing_and_never_stall(tmp_path: Path) -> None:
    """`--at-once 2` at n = 7: f nodes down together, the 2f+1 left must still commit,
    and both restarted nodes catch up before the next cycle."""
    plan = ChaosPlan(nodes=7, kills=4, seed=14, at_once=2, **FAST)  # type: ignore[arg-type]
    directory = tmp_path / "cluster"
    result = run_chaos(plan, directory)
    assert not processes_mentioning(str(directory)), "node processes left running"
    assert result.ok, _explain(result)
    assert result.at_once == 2 and result.kills == 4
    assert all(len(r.with_nodes) == 1 and r.with_nodes[0] != r.node for r in result.records)
    assert result.acknowledged > 50 and result.missing == 0 and result.duplicated == 0
    assert result.longest_stall <= result.stall_bound


def test_chaos_command_runs_a_seed_and_reports_json(tmp_path: Path) -> None:
    """The second seed through `dtnbus chaos` (seed 11): exit 0, a table, files, JSON."""
    directory = tmp_path / "cluster"
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "dtnbus", "chaos", "--kills", str(KILLS), "--seed", "11",
         "--max-gap", "0.8", "--max-down", "0.8", "--client-window", "4", "--dir",
         str(directory), "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert report["ok"] and report["kills"] == KILLS and report["missing"] == 0
    assert report["longest_stall"] <= report["stall_bound"]
    assert "every check held" in proc.stdout
    assert {p.name for p in out.iterdir()} >= {"chaos.csv", "chaos-kills.csv"}
    assert not processes_mentioning(str(directory))


def test_chaos_command_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    for args in (["--nodes", "3"], ["--kills", "0"], ["--seeds", "2", "--dir", "x"],
                 ["--at-once", "2"]):
        proc = subprocess.run([sys.executable, "-m", "dtnbus", "chaos", *args],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path,
                              check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
