"""A cell's repeated runs: seeds, median and range, the floor and the expectation named
apart, the JSON a script reads."""

from __future__ import annotations

import dataclasses

import pytest

from dtnbus.report import series_row
from dtnbus.sync import SyncResult
from dtnbus.sync_runs import SyncSeries, median_range, ratios, summary_lines


def _run(seed: int, f1: float, q: float, everyone: float, **kw: object) -> SyncResult:
    base = SyncResult(
        nodes=10, tx=100, tx_bytes=300, bandwidth_mbps=30.0, latency_ms=300.0,
        seconds_f1=f1, seconds_2f1=q, seconds_all=everyone,
        phases={"request_to_preprepare": 0.3 + seed / 1000}, client_request_seconds=None,
        requests=1, request_txs=100, retransmissions=0,
        ledger_heights={0: 1, 1: 1}, ledger_heads={0: "ab" * 32, 1: "ab" * 32},
        ledgers_identical=True, latency_floor_s=0.2, floor_terms={"latency_s": 0.15},
        latency_expected_s=0.9, expected_dominant="latency", seed=seed,
        extra={"latency_dist": "uniform-0.1"})
    return dataclasses.replace(base, **kw)


SERIES = SyncSeries([_run(7, 0.80, 0.88, 0.95), _run(8, 0.70, 0.78, 0.90),
                     _run(9, 0.85, 0.95, 1.00)])


def test_median_range_skips_missing_values() -> None:
    assert median_range([3.0, None, 1.0, 2.0]) == (2.0, 1.0, 3.0)
    assert median_range([None]) is None


def test_series_reports_median_and_range_per_time() -> None:
    assert SERIES.stat("seconds_2f1") == (0.88, 0.78, 0.95)
    assert SERIES.seeds == [7, 8, 9]
    r = ratios(SERIES, reference=1.5)
    assert r["ours_over_floor"] == pytest.approx(0.88 / 0.2)
    assert r["ours_over_floor_min"] == pytest.approx(0.78 / 0.2)
    assert r["ours_over_expected_max"] == pytest.approx(0.95 / 0.9)
    assert r["ours_over_reference"] == pytest.approx(0.88 / 1.5)
    assert "ours_over_reference" not in ratios(SERIES)


def test_json_carries_seeds_every_run_and_the_median() -> None:
    out = SERIES.to_json()
    assert out["seeds"] == [7, 8, 9] and out["repeat"] == 3
    assert out["seconds_2f1"] == 0.88 and out["range"]["seconds_2f1"] == [0.78, 0.95]
    assert [run["seconds_2f1"] for run in out["runs"]] == [0.88, 0.78, 0.95]
    assert [run["seed"] for run in out["runs"]] == [7, 8, 9]
    assert out["latency_floor_s"] == 0.2 and out["latency_expected_s"] == 0.9
    assert "bound_seconds" not in out
    assert out["phases"]["request_to_preprepare"] == pytest.approx(0.308)


def test_row_has_median_min_max_and_both_ratios() -> None:
    row = series_row(SERIES, 1.494)
    assert (row["seconds_2f1"], row["seconds_2f1_min"], row["seconds_2f1_max"]) == \
        (0.88, 0.78, 0.95)
    assert row["runs"] == 3 and row["seeds"] == "7 8 9"
    assert row["ours_over_reference"] == pytest.approx(0.88 / 1.494)
    assert row["ours_over_expected"] == pytest.approx(0.88 / 0.9)
    assert row["ours_over_floor_min"] == pytest.approx(0.78 / 0.2)


def test_summary_names_the_floor_and_the_expectation_and_prints_the_seeds() -> None:
    text = "\n".join(summary_lines(SERIES))
    assert "3 runs; latencies drawn with seeds 7..9" in text
    assert "median" in text and "range (min-max)" in text
    assert "0.880 s   0.780-0.950 s" in text
    assert "strict floor (latency_floor_s):" in text and "no run can beat it" in text
    assert "expectation (latency_expected_s):" in text
    assert "over the floor 4.40x (3.90-4.75x); over the expectation 0.98x (0.87-1.06x)" in text
    one = "\n".join(summary_lines(SyncSeries([_run(7, 0.8, 0.88, 0.95)])))
    assert "latencies drawn with seed 7)" in one and "range" not in one
    constant = SyncSeries([_run(7, 1.6, 1.7, 1.8, extra={"latency_dist": "constant"})])
    assert "seed" not in summary_lines(constant)[0]  # nothing was drawn: no seed to show
