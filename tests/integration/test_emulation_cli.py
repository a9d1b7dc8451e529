"""`dtnbus sync` under emulation: grid mode, result files, and clear errors on bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dtnbus.config import generate_cluster, load_cluster
from dtnbus.errors import LocalError


def _dtnbus(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dtnbus", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize(("args", "needle"), [
    (["--bandwidth", "-1"], "below 0"),
    (["--latency", "abc"], "not a number"),
    (["--nodes", "3"], "at least 4 nodes"),
    (["--nodes", "4,2"], "at least 4 nodes"),
    (["--latency-dist", "gaussian"], "latency"),
    (["--mbps-base", "1000"], "--mbps-base"),
])
def test_bad_emulation_input_is_one_clear_line(args: list[str], needle: str) -> None:
    result = _dtnbus("sync", *args, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], lines


def test_cluster_file_with_an_unknown_link_is_refused(tmp_path: Path) -> None:
    path = generate_cluster(tmp_path, 4)
    path.write_text(path.read_text() + '\n[[links]]\nfrom = 0\nto = 9\nlatency_ms = 5.0\n')
    with pytest.raises(LocalError, match="unknown node or region 9"):
        load_cluster(path)
    result = _dtnbus("ledger", "verify", "--config", str(path), timeout=30)
    assert result.returncode == 2 and "unknown node or region 9" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_grid_writes_csv_markdown_and_charts(tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = _dtnbus("sync", "--nodes", "4", "--tx", "20,60", "--bandwidth", "0,20",
                     "--latency", "20", "--request-txs", "20", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    cells = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(cells) == 4 and all(c["ledgers_identical"] for c in cells)
    for cell in cells:
        # five one-way latencies of 20 ms are on the critical path (four with tentative
        # execution, three on the fast path, the default): nothing beats them
        hops = 3 if cell["speculative"] else 4 if cell["tentative"] else 5
        assert cell["seconds_f1"] >= hops * 0.02
        assert cell["latency_floor_s"] >= hops * 0.02
        assert cell["seconds_f1"] >= cell["latency_floor_s"]
        assert cell["latency_expected_s"] >= cell["latency_floor_s"]
        assert cell["seconds_2f1"] >= cell["seconds_f1"]
        assert len(cell["runs"]) == 1 and cell["runs"][0]["seed"] == cell["seeds"][0]
    files = sorted(p.suffix for p in out.iterdir())
    assert files == [".csv", ".md", ".png", ".png"]
    rows = list(csv.DictReader(next(out.glob("*.csv")).open()))
    assert len(rows) == 4 and {r["tx"] for r in rows} == {"20", "60"}
    assert all(float(r["phase_preprepare_to_prepared_ms"]) >= 20 for r in rows)


def test_heterogeneous_links_from_the_cluster_file_shape_the_run(tmp_path: Path) -> None:
    from dtnbus.client import Client
    from dtnbus.cluster import start_nodes, stop_nodes

    # region "far" holds node 3: every link into it has 150 ms; the others are unshaped
    path = generate_cluster(tmp_path, 4, regions={"near": [0, 1, 2], "far": [3]},
                            links=[{"from": "near", "to": "far", "latency_ms": 150.0,
                                    "symmetric": True}])
    config = load_cluster(path)
    assert config.shaper(0) is not None and config.shaper(0).is_unshaped(1)
    assert not config.shaper(0).is_unshaped(3)
    start_nodes(config, tmp_path)
    try:
        with Client(config) as client:
            client.wait_ready(30)
            result = client.submit([(b"tx-a",), (b"tx-b",)], timeout=30, wait_all=10)
    finally:
        stop_nodes(tmp_path)
    assert result.seconds_f1 is not None and result.seconds_all is not None
    # the far node cannot execute before the PRE-PREPARE crossed a 150 ms link (its votes
    # from the near nodes cross such links in parallel); a quorum of near nodes needs none
    assert result.seconds_all >= 0.15
    assert result.seconds_2f1 < result.seconds_all - 0.1
