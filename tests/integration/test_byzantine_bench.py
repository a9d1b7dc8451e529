"""benchmarks.byzantine_nodes end to end on its smallest setting: one mode, n = 4, a
short stream. The full matrix is `make bench-byzantine` (docs/faults.md)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from benchmarks import byzantine_nodes, partial_tags


def test_a_censoring_primary_is_replaced_and_the_row_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Node 0 (the first primary) never orders the stream's client: the others change
    view, every acknowledged request is in every correct ledger once, and the row says
    so (a cell that failed a check would exit 1)."""
    byzantine_nodes.main(["--nodes", "4", "--modes", "censor", "--seconds", "3",
                          "--out", str(tmp_path)])
    (row,) = list(csv.DictReader((tmp_path / "byzantine-nodes.csv").open()))
    assert row["mode"] == "censor" and row["faulty"] == "0" and row["ok"] == "True"
    assert int(row["acknowledged"]) > 0 and row["left"] == "0"
    assert row["missing"] == row["duplicated"] == row["wrong_place"] == "0"
    assert "1" in row["views"].split() and row["ledgers"] == "identical, verified"
    assert "every check held" in capsys.readouterr().err


def test_an_equivocating_primary_at_saturation_loses_no_load_request(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--load`: four more clients keep the cluster saturated while node 0 equivocates;
    every request they saw executed is in every correct ledger once (the row counts
    them as missing otherwise, and fails)."""
    byzantine_nodes.main(["--nodes", "4", "--modes", "equivocate", "--seconds", "3",
                          "--load", "4", "--out", str(tmp_path)])
    (row,) = list(csv.DictReader((tmp_path / "byzantine-nodes.csv").open()))
    assert row["ok"] == "True" and int(row["load_acknowledged"]) > 500
    assert row["missing"] == row["duplicated"] == row["wrong_place"] == "0"
    assert row["ledgers"] == "identical, verified"
    assert "every check held" in capsys.readouterr().err


def test_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        byzantine_nodes.main(["--nodes", "3"])
    assert exc.value.code == 2
    assert "at least 4" in capsys.readouterr().err


def test_a_slow_primary_is_replaced_on_real_nodes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Node 0 sends every message ~400 ms late: within the view-change timeout, so only
    the backups' watch on its pace (ReplicaConfig.pace_factor) replaces it."""
    byzantine_nodes.main(["--nodes", "4", "--modes", "slow:40", "--seconds", "8",
                          "--out", str(tmp_path)])
    (row,) = list(csv.DictReader((tmp_path / "byzantine-nodes.csv").open()))
    assert row["ok"] == "True" and row["missing"] == row["duplicated"] == "0"
    assert "1" in row["views"].split(), row
    assert "every check held" in capsys.readouterr().err


def test_the_partial_tags_benchmark_sees_a_faulty_client_distrusted() -> None:
    """benchmarks.partial_tags on its smallest cell: two honest streams beside a client
    spoiling a random part of its tags, no CURVE. The honest streams progress, and the
    backups that saw the primary order one of its requests distrust it (the gauge)."""
    row = partial_tags.run_cell(nodes=4, seconds=4.0, rate=25.0, curve=False, streams=2,
                                window=8)
    assert row["honest_acks_per_s"] > 0 and row["spoiled_sent"] > 50
    assert "1" in row["distrusted"].split(","), row
