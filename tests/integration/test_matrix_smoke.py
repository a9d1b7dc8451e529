"""`make bench-matrix` end to end on one small cell: seeds in rounds, median and range, the
floor, the expectation and the targets reported; the real matrix is a benchmark, not a test."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from benchmarks import matrix


def test_matrix_smoke_reports_median_range_floor_and_targets(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    matrix.main(["--smoke", "--repeat", "2", "--seed", "40", "--models", "reference",
                 "--latency", "20", "--out", str(tmp_path), "--stem", "m"])
    out = capsys.readouterr().out
    assert "seeds 40..41" in out and "load average" in out
    assert "every run >= the strict floor: yes" in out
    assert "<= 0.7x the reference" in out
    (row,) = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert row["runs"] == "2" and row["seeds"] == "40 41"
    assert float(row["seconds_2f1_min"]) <= float(row["seconds_2f1"]) \
        <= float(row["seconds_2f1_max"])
    assert float(row["ours_over_floor_min"]) >= 1.0
    runs = list(csv.DictReader((tmp_path / "m-runs.csv").open()))
    assert [r["seed"] for r in runs] == ["40", "41"]
    assert all(float(r["seconds_2f1"]) >= float(r["latency_floor_s"]) for r in runs)
    md = (tmp_path / "m.md").read_text()
    assert "targets (issue 12)" in md and "(min-max)" in md
    assert (tmp_path / "m-ratios.png").stat().st_size > 0
