"""The load generator behind `dtnbus bench` and benchmarks/latency_curve.py: every client
session gets its requests decided, not only the first (a reply's MAC is keyed for the
client it answers, so each must be checked with that client's keys)."""

from __future__ import annotations

import time
from pathlib import Path

from dtnbus.bench import LoadGenerator, open_loop_due
from dtnbus.cluster import cluster_up, stop_nodes


def test_every_client_of_the_load_generator_gets_its_requests_decided(tmp_path: Path) -> None:
    config = cluster_up(tmp_path, 4, "ed25519", fresh=True, extra_clients=3)
    try:
        gen = LoadGenerator(config, ["client-1", "client-2", "client-3"], 300, 1)
        try:
            gen.measuring = True
            for client in (0, 1, 2, 0, 1, 2):
                gen.send(client, time.monotonic())
            deadline = time.monotonic() + 30
            while gen.out and time.monotonic() < deadline:
                gen.receive(20)
                gen.retransmit(time.monotonic())
            assert not gen.out, f"undecided (client, number): {sorted(gen.out)}"
            assert gen.committed_txs == 6
        finally:
            gen.close()
    finally:
        stop_nodes(tmp_path)


def test_open_loop_stamps_the_schedule_and_never_polls_for_zero_ms() -> None:
    step = 2.0 ** -12  # about 4,100 requests/s: one due every 0.24 ms (exact in binary)
    due, next_send, wait_ms = open_loop_due(10.0, 10.0 + 3.5 * step, step)
    assert due == [10.0 + k * step for k in range(4)]  # latency counts from these
    assert next_send == 10.0 + 4 * step
    assert wait_ms == 1  # 0.12 ms to the next: poll 1 ms, never 0 (a spin)
    assert open_loop_due(10.0, 9.99, 0.5) == ([], 10.0, 5)


def test_the_bench_command_runs_with_and_without_the_fast_path(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    for flag in ("--speculative", "--no-speculative"):
        done = subprocess.run(
            [sys.executable, "-m", "dtnbus", "bench", "--nodes", "4", "--clients", "2",
             "--seconds", "1", "--warmup", "0.5", flag, "--out", str(tmp_path), "--json"],
            capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        row = json.loads(done.stdout.strip().splitlines()[-1])
        assert row["tx"] > 0 and row["ledgers_identical"] is True, (flag, row)
