"""The load benchmarks end to end on the smallest settings: what they write and print.
Speed itself is measured by running them (README), never asserted here."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from benchmarks import bench_table, latency_curve


def test_latency_curve_writes_the_saturation_and_open_loop_points(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    latency_curve.main(["--nodes", "4", "--clients", "4", "--seconds", "1", "--warmup", "0.3",
                        "--fractions", "0.5", "--out", str(tmp_path)])
    rows = list(csv.DictReader((tmp_path / "latency-curve.csv").open()))
    assert [r["mode"] for r in rows] == ["closed", "open"]
    closed, half = rows
    assert float(half["offered_tx_per_s"]) == pytest.approx(0.5 * float(closed["tx_per_s"]))
    assert float(half["tx"]) > 0 and all(r["ledgers_identical"] == "True" for r in rows)
    assert (tmp_path / "latency-curve.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert "p50 at half the saturation rate" in out and "load average" in out


def test_bench_table_writes_medians_with_ranges(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    bench_table.main(["--nodes", "4", "--request-txs", "1", "--clients", "4", "--seconds", "1",
                      "--warmup", "0.3", "--repeat", "1", "--out", str(tmp_path)])
    (row,) = list(csv.DictReader((tmp_path / "bench-table.csv").open()))
    assert row["nodes"] == "4" and row["request_txs"] == "1" and float(row["tx_per_s"]) > 0
    assert row["ledgers_identical"] == "True"
    assert {p.name for p in tmp_path.iterdir()} == {
        "bench-table.csv", "bench-table-runs.csv", "bench-table.md", "bench-table.png"}
    assert "tx/s" in capsys.readouterr().out
