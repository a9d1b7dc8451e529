"""A cluster's lifecycle never destroys data (issue 14), with real node processes.

`cluster up` and `sync --dir` refuse a directory that holds a cluster unless --fresh;
`cluster start|stop|restart` run the existing cluster over its keys and ledgers; `stop`
finds nodes started by hand; `status` tells catching-up from ready.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from integration_support import RunningCluster, pid_alive, processes_mentioning, wait_until
from test_cli import assert_one_line_error

from dtnbus.cluster import running_pids, stop_nodes
from dtnbus.config import generate_cluster
from dtnbus.nodeproc import lock_holder
from dtnbus.storage import Ledger

RunCli = Callable[..., subprocess.CompletedProcess[str]]


def _ledger_heights(directory: Path, n: int = 4) -> list[int]:
    heights = []
    for i in range(n):
        ledger = Ledger(directory / "ledgers" / f"node-{i}.sqlite", synchronous="NORMAL")
        heights.append(ledger.height)
        ledger.close()
    return heights


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.suffix in (".key", ".toml")}


def _rows(stdout: str) -> dict[int, list[str]]:
    return {int(line.split()[0]): line.split() for line in stdout.splitlines()
            if line.split() and line.split()[0].isdigit()}


def test_up_start_stop_restart_keep_keys_and_ledgers(run_cli: RunCli, tmp_path: Path) -> None:
    d = tmp_path / "c"
    try:
        up = run_cli("cluster", "up", "--dir", d)
        assert up.returncode == 0, up.stderr
        sub = run_cli("submit", "--dir", d, "--count", "300", "--request-txs", "30")
        assert sub.returncode == 0, sub.stderr
        keys = _snapshot(d)

        again = run_cli("cluster", "up", "--dir", d)  # running: refused, nothing touched
        assert_one_line_error(again, "a cluster is running", "cluster stop --dir")
        stop = run_cli("cluster", "stop", "--dir", d)
        assert stop.returncode == 0, stop.stderr
        assert "stopped 4 node(s): node 0,1,2,3 with SIGTERM" in stop.stdout
        assert "keys and ledgers kept" in stop.stdout
        heights = _ledger_heights(d)
        assert min(heights) >= 1 and len(set(heights)) == 1

        refused = run_cli("cluster", "up", "--dir", d)  # stopped: still refused
        line = assert_one_line_error(refused, "already holds a cluster", "cluster start --dir",
                                     "--fresh", "4 ledger(s)")
        assert "5 key file(s)" in line
        synced = run_cli("sync", "--nodes", "4", "--tx", "10", "--dir", d)
        assert_one_line_error(synced, "already holds a cluster", "--fresh", "cluster start")
        assert _snapshot(d) == keys and _ledger_heights(d) == heights

        start = run_cli("cluster", "start", "--dir", d)
        assert start.returncode == 0, start.stderr
        assert "started node(s) 0,1,2,3" in start.stdout
        more = run_cli("submit", "--dir", d, "--count", "30", "--request-txs", "30")
        assert more.returncode == 0, more.stderr  # the same keys still sign and verify
        restart = run_cli("cluster", "restart", "--dir", d, "--id", "2")
        assert restart.returncode == 0, restart.stderr
        assert "stopped 1 node(s): node 2 with SIGTERM" in restart.stdout
        status = run_cli("cluster", "status", "--dir", d)
        assert status.returncode == 0, status.stdout
        rows = _rows(status.stdout)
        assert {r[1] for r in rows.values()} == {"ready"}, status.stdout
        assert {r[2] for r in rows.values()} == {str(max(heights) + 1)}, status.stdout
        assert _snapshot(d) == keys
        verify = run_cli("ledger", "verify", "--dir", d)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert verify.stdout.count(" txs 330 ") == 4, verify.stdout

        stop_nodes(d)
        fresh = run_cli("cluster", "up", "--dir", d, "--fresh")
        assert fresh.returncode == 0, fresh.stderr
        assert fresh.stderr.startswith("--fresh: discarding 5 key file(s)"), fresh.stderr
        assert len(fresh.stderr.splitlines()) == 1
        assert _snapshot(d)["keys/node-0.key"] != keys["keys/node-0.key"]
        assert max(_ledger_heights(d)) == 0
    finally:
        stop_nodes(d, timeout=5)
    assert processes_mentioning(str(d)) == []


def test_up_refuses_a_keygen_directory_and_a_file(run_cli: RunCli, tmp_path: Path) -> None:
    generate_cluster(tmp_path / "k", 4)
    before = _snapshot(tmp_path / "k")
    out = run_cli("cluster", "up", "--dir", tmp_path / "k")
    assert_one_line_error(out, "already holds a cluster", "--fresh")
    assert _snapshot(tmp_path / "k") == before
    afile = tmp_path / "afile"
    afile.write_text("x")
    for args in (["cluster", "up", "--dir", afile], ["cluster", "start", "--dir", afile],
                 ["cluster", "status", "--dir", afile], ["keygen", "--nodes", "4", "--out", afile]):
        assert_one_line_error(run_cli(*args), str(afile), "is a file")


def _start_by_hand(config: Path, node_id: int, cwd: Path, log: Path) -> subprocess.Popen:
    """`dtnbus node` as an operator would type it: a relative --config, another cwd."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "dtnbus", "node", "--config", os.path.relpath(config, cwd),
             "--id", str(node_id)], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)


def test_stop_finds_nodes_started_by_hand(run_cli: RunCli, tmp_path: Path,
                                          start_cluster: Callable[..., RunningCluster]) -> None:
    c = start_cluster(4)
    stop = run_cli("cluster", "stop", "--dir", c.directory, "--id", "3")
    assert "node 3 with SIGTERM" in stop.stdout, stop.stdout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    hand = _start_by_hand(c.directory / "cluster.toml", 3, elsewhere, tmp_path / "hand.log")
    try:
        wait_until(lambda: lock_holder(c.config.node(3).ledger) == hand.pid, 15,
                   "the hand-started node to hold its ledger lock")
        assert 3 not in running_pids(c.directory)  # the launcher's pid file does not know it
        second = _start_by_hand(c.directory / "cluster.toml", 3, elsewhere,
                                tmp_path / "second.log")
        assert second.wait(timeout=20) == 2  # one node per ledger
        assert "in use by process" in (tmp_path / "second.log").read_text()
        down = run_cli("cluster", "down", "--dir", c.directory)
        assert down.returncode == 0, down.stderr
        assert "stopped 4 node(s): node 0,1,2,3 with SIGTERM" in down.stdout, down.stdout
        assert "found by lock file" in down.stdout
        assert hand.wait(timeout=15) == 0
        assert not any(pid_alive(p) for p in c.pids.values())
    finally:
        if hand.poll() is None:
            hand.kill()
            hand.wait()


def test_stop_finds_a_node_by_command_line_and_ignores_a_recycled_pid(
        run_cli: RunCli, tmp_path: Path) -> None:
    """A node whose lock file is not visible (its ledger path is elsewhere) is found by its
    command line; a pid file entry that now names another process is never signalled."""
    d = tmp_path / "c"
    config = generate_cluster(d, 4)
    text = config.read_text().replace('ledger = "ledgers/node-1.sqlite"',
                                      f'ledger = "{tmp_path}/other/node-1.sqlite"')
    config.write_text(text)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (d / "pids.json").write_text(f'{{"0": {bystander.pid}}}')
    hand = _start_by_hand(config, 1, d, tmp_path / "n1.log")
    try:
        wait_until(lambda: lock_holder(tmp_path / "other" / "node-1.sqlite") == hand.pid, 15,
                   "node 1 to start")
        (tmp_path / "other" / "node-1.sqlite.lock").rename(tmp_path / "other" / "moved.lock")
        out = run_cli("cluster", "stop", "--dir", d)
        assert out.returncode == 0, out.stderr
        assert "stopped 1 node(s): node 1 with SIGTERM (found by command line)" in out.stdout
        assert hand.wait(timeout=15) == 0
        assert bystander.poll() is None  # the stale pid file entry was not trusted
    finally:
        for proc in (hand, bystander):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_status_shows_a_restarted_node_catching_up(
        run_cli: RunCli, start_cluster: Callable[..., RunningCluster]) -> None:
    c = start_cluster(4, protocol={"checkpoint_interval": 4, "window": 8})
    stop_nodes(c.directory, ids=[3])
    for seed in range(3):  # 60 blocks while node 3 is away
        assert c.submit(20, request_txs=1, seed=seed).seconds_f1 is not None
    status = run_cli("cluster", "status", "--dir", c.directory, "--timeout", "1")
    assert status.returncode == 1
    assert _rows(status.stdout)[3][1] == "down"
    assert "3 ready, 1 down" in status.stdout.replace("1 down, 3 ready", "3 ready, 1 down")
    start = run_cli("cluster", "start", "--dir", c.directory)
    assert "started node(s) 3" in start.stdout, start.stdout + start.stderr
    c.all_pids.update(running_pids(c.directory).values())
    seen: set[str] = set()

    def caught_up() -> bool:
        out = run_cli("cluster", "status", "--dir", c.directory, "--timeout", "1")
        rows = _rows(out.stdout)
        row, quorum = rows[3], max(int(r[2]) for r in rows.values())
        seen.add(row[1])
        # never "ready" below the others; any lag is shown with a non-ready state
        assert (row[1] == "ready") == (int(row[3]) == 0 and int(row[2]) >= quorum - 1), row
        assert row[1] in ("ready", "catching-up", "joining"), row
        if row[1] == "ready" and out.returncode == 0:
            return True
        c.submit(10, request_txs=1, seed=len(seen) + 100)  # traffic brings checkpoints
        return False

    wait_until(caught_up, 60, "node 3 to catch up", interval=0.2)


def test_sync_refuses_a_running_cluster_and_grids_keep_a_directory_per_cell(
        run_cli: RunCli, tmp_path: Path, start_cluster: Callable[..., RunningCluster]) -> None:
    c = start_cluster(4)
    out = run_cli("sync", "--nodes", "4", "--tx", "10", "--dir", c.directory, "--fresh")
    assert_one_line_error(out, "a cluster is running", "cluster stop")
    assert all(pid_alive(p) for p in c.pids.values())  # not stopped, not replaced
    grid = tmp_path / "grid"
    first = run_cli("sync", "--nodes", "4", "--tx", "10,20", "--dir", grid,
                    "--out", tmp_path / "r", timeout=120)
    assert first.returncode == 0, first.stderr
    assert (grid / "cell-1" / "cluster.toml").exists() and (grid / "cell-2" / "ledgers").is_dir()
    again = run_cli("sync", "--nodes", "4", "--tx", "10,20", "--dir", grid, timeout=30)
    assert_one_line_error(again, "cell-1 already holds a cluster", "--fresh")


def test_make_run_twice_works(tmp_path: Path) -> None:
    """`make run` keeps its own demo directory and passes --fresh, so it works every time."""
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    run_line = next(line for line in makefile.splitlines() if "dtnbus sync" in line)
    assert "--fresh" in run_line and "--dir .dtnbus/run" in run_line


@pytest.mark.parametrize("when", ["stopped"])
def test_submit_to_a_down_cluster_says_so_within_seconds(run_cli: RunCli, tmp_path: Path,
                                                         when: str) -> None:
    generate_cluster(tmp_path / "c", 4)
    started = time.monotonic()
    out = run_cli("submit", "--dir", tmp_path / "c", "--count", "10", "--timeout", "60")
    elapsed = time.monotonic() - started
    assert out.returncode == 1, out
    assert elapsed < 15, elapsed
    line = out.stderr.strip()
    assert len(out.stderr.splitlines()) == 1 and "Traceback" not in out.stderr
    assert line.startswith("error: 0 of 4 nodes answered within 3 s"), line
    assert "committing needs 3" in line and "cluster start --dir" in line
