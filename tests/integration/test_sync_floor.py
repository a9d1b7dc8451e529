"""No run beats the strict floor, and `dtnbus sync` samples the latency model.

The floor (dtnbus.bound: the shortest latency the model can draw on every hop of the
critical path, the transactions over the client's link, the signatures that must follow
one another) is what the matrix's "ours/floor" column divides by: a run below it means
the floor, the shaper or the clock is wrong. Under constant latency the floor is what a
run sits just above, so a floor that counts a hop or a payload copy too many fails here.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dtnbus.sync import synchronize

TIMES = ("seconds_f1", "seconds_2f1", "seconds_all")


def test_repeated_runs_draw_their_own_latencies_and_none_beats_the_floor(
        tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, "-m", "dtnbus", "sync", "--nodes", "4", "--tx", "40",
         "--bandwidth", "1", "--latency", "20", "--latency-dist", "uniform-0.1",
         "--repeat", "3", "--seed", "11", "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    cell = json.loads(result.stdout.strip().splitlines()[-1])
    assert cell["seeds"] == [11, 12, 13] and [r["seed"] for r in cell["runs"]] == [11, 12, 13]
    assert "latencies drawn with seeds 11..13" in result.stdout
    floor = cell["latency_floor_s"]
    assert floor > 0.0 and cell["latency_expected_s"] > floor
    for run in cell["runs"]:
        assert run["latency_floor_s"] == floor
        for key in TIMES:
            assert run[key] >= floor, (key, run[key], floor, run["seed"])
    for key in TIMES:
        lo, hi = cell["range"][key]
        values = sorted(run[key] for run in cell["runs"])
        assert (lo, cell[key], hi) == (values[0], values[1], values[2])
    assert cell["ours_over_floor_min"] >= 1.0
    rows = list(csv.DictReader(next(out.glob("*-runs.csv")).open()))
    assert [r["seed"] for r in rows] == ["11", "12", "13"]


@pytest.mark.parametrize(("tentative", "speculative", "hops"),
                         [(False, False, 5), (True, False, 4), (True, True, 3)])
def test_constant_latency_runs_sit_above_the_floor(tentative: bool, speculative: bool,
                                                   hops: int) -> None:
    # 5 hops (4 tentative, 3 on the fast path) of exactly 20 ms, then 12 kB at 1 Mbps after
    # a 1514 B burst
    result = synchronize(4, 40, 1.0, 20.0, request_txs=40, tentative=tentative,
                         speculative=speculative)
    assert result.speculative == speculative
    assert result.floor_terms["latency_s"] == pytest.approx(hops * 0.02)
    assert result.floor_terms["payload_s"] == pytest.approx((12_000 - 1514) / 125_000)
    assert result.ledgers_identical
    for key in TIMES:
        value = getattr(result, key)
        assert value is not None and value >= result.latency_floor_s, (key, value)
