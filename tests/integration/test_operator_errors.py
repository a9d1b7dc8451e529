"""Every operator mistake and every problem found is one line with the right exit code
(issue 14): 2 for the user's mistake, 1 for a problem found; never a traceback."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
from integration_support import RunningCluster, processes_mentioning
from test_cli import assert_one_line_error

from dtnbus.cluster import stop_nodes
from dtnbus.config import generate_cluster

RunCli = Callable[..., subprocess.CompletedProcess[str]]


def test_bare_dtnbus_prints_usage_without_error(run_cli: RunCli) -> None:
    for args in ([], ["cluster"], ["ledger"]):
        out = run_cli(*args)
        assert out.returncode == 0, out
        assert out.stdout.startswith("Usage: "), out.stdout
        assert "error" not in out.stdout.lower() + out.stderr.lower()


@pytest.mark.parametrize("command,option,words", [
    (["cluster", "up"], "--nodes", "Number of validator nodes"),
    (["submit"], "--timeout", "Seconds"),
    (["cluster", "status"], "--timeout", "Seconds"),
    (["cluster", "start"], "--timeout", "Seconds"),
])
def test_options_have_help_with_units(run_cli: RunCli, command: list[str], option: str,
                                      words: str) -> None:
    out = run_cli(*command, "--help")
    options = " ".join(out.stdout.split("Options:", 1)[1].split())
    start = options.index(option + " ")
    assert words in options[start:start + 120], options


def test_keygen_into_an_unwritable_directory(run_cli: RunCli, tmp_path: Path) -> None:
    # /proc refuses new directories even to root, so this holds however the tests run
    assert_one_line_error(run_cli("keygen", "--nodes", "4", "--out", "/proc/dtnbus-keys"),
                          "cannot write to --out /proc/dtnbus-keys")
    under_file = tmp_path / "f"
    under_file.write_text("")
    assert_one_line_error(run_cli("keygen", "--node", "0", "--advertise", "10.0.0.1",
                                  "--out", under_file / "sub"), "cannot write to --out")


def test_keygen_port_overflow_is_refused(run_cli: RunCli, tmp_path: Path) -> None:
    out = run_cli("keygen", "--nodes", "1000", "--base-port", "65000", "--out", tmp_path / "k")
    assert_one_line_error(out, "--base-port 65000 needs ports 65000..67999",
                          "--base-port 62536 or lower")
    assert not (tmp_path / "k" / "cluster.toml").exists()


def test_keygen_refuses_to_overwrite_keys(run_cli: RunCli, tmp_path: Path) -> None:
    assert run_cli("keygen", "--nodes", "4", "--out", tmp_path).returncode == 0
    before = (tmp_path / "keys" / "node-1.key").read_bytes()
    assert_one_line_error(run_cli("keygen", "--nodes", "4", "--out", tmp_path),
                          "already holds a cluster", "--fresh")
    assert (tmp_path / "keys" / "node-1.key").read_bytes() == before


@pytest.mark.parametrize("damage", ["mode", "other-key"])
def test_node_refuses_a_readable_or_foreign_key(run_cli: RunCli, tmp_path: Path,
                                                damage: str) -> None:
    config = generate_cluster(tmp_path, 4)
    if damage == "mode":
        (tmp_path / "keys" / "node-2.key").chmod(0o644)
        needles = ["readable by group or others (mode 0644)", "chmod 600"]
    else:
        shutil.copy(tmp_path / "keys" / "node-3.key", tmp_path / "keys" / "node-2.key")
        needles = ["is not node 2's key"]
    out = run_cli("node", "--config", config, "--id", "2", timeout=10)
    assert_one_line_error(out, *needles)
    assert processes_mentioning(str(config)) == []


def test_client_key_readable_by_others_is_refused(run_cli: RunCli, tmp_path: Path) -> None:
    generate_cluster(tmp_path, 4)
    (tmp_path / "keys" / "client.key").chmod(0o640)
    out = run_cli("submit", "--dir", tmp_path, "--count", "1")
    assert_one_line_error(out, "client.key is readable by group or others")


def test_a_request_over_the_frame_limit_is_refused_before_sending(
        run_cli: RunCli, cluster: RunningCluster) -> None:
    started = time.monotonic()
    out = run_cli("submit", "--dir", cluster.directory, "--count", "100", "--tx-bytes",
                  "1000000", "--timeout", "60")
    assert time.monotonic() - started < 30
    line = assert_one_line_error(out, "over the 64 MiB frame limit", "--request-txs 66")
    assert "request 1 is 100,0" in line, line
    one = run_cli("submit", "--dir", cluster.directory, "--count", "1", "--tx-bytes",
                  str(70 * 2**20))
    assert_one_line_error(one, "does not fit in the 64 MiB frame limit")
    for node in range(cluster.n):  # nothing was sent: no node saw an oversized frame
        assert cluster.status()[node].pending == 0


# ------------------------------------------------------------------ ledger verify


@pytest.fixture
def damaged(cluster: RunningCluster, tmp_path: Path) -> Path:
    """A stopped 4-node cluster with 5 blocks, each ledger then damaged in its own way."""
    for seed in range(5):  # block 4 signed: a signature any third party can check
        auth = "signature" if seed == 3 else "mac"
        assert cluster.submit(3, request_txs=3, seed=seed,
                              authentication=auth).seconds_f1 is not None
    cluster.wait_executed(15)
    stop_nodes(cluster.directory)
    ledgers = cluster.directory / "ledgers"

    def sql(node: int, statement: str, *args: object) -> None:
        db = sqlite3.connect(ledgers / f"node-{node}.sqlite")
        db.execute(statement, args)
        db.commit()
        db.close()

    db = sqlite3.connect(ledgers / "node-0.sqlite")
    frame = db.execute("SELECT frame FROM requests WHERE seq = 2").fetchone()[0]
    db.close()
    sql(0, "UPDATE requests SET frame = ? WHERE seq = 2", frame + b"\x00")  # msgpack ExtraData
    db = sqlite3.connect(ledgers / "node-0.sqlite")
    signed = msgpack.unpackb(db.execute("SELECT frame FROM requests WHERE seq = 4").fetchone()[0])
    db.close()
    assert len(signed) == 2, "block 4 is signed: [payload, signature]"
    forged = msgpack.packb([signed[0], bytes(len(signed[1]))])  # its signature zeroed
    sql(0, "UPDATE requests SET frame = ? WHERE seq = 4", forged)
    db = sqlite3.connect(ledgers / "node-1.sqlite")
    tagged = msgpack.unpackb(db.execute("SELECT frame FROM requests WHERE seq = 2").fetchone()[0])
    db.close()
    assert len(tagged) == 3, "block 2 is MAC-authenticated"  # its tags spoiled: no damage,
    spoilt = msgpack.packb([tagged[0], tagged[1], bytes(len(tagged[2]))])  # the certificate
    sql(1, "UPDATE requests SET frame = ? WHERE seq = 2", spoilt)  # vouches for it
    sql(1, "UPDATE blocks SET tx_count = 999 WHERE seq = 3")  # an edited transaction count
    sql(2, "DELETE FROM blocks WHERE seq = 5")  # the last block gone, its requests stay
    db = sqlite3.connect(ledgers / "node-2.sqlite")
    proof = msgpack.unpackb(db.execute("SELECT proof FROM blocks WHERE seq = 2").fetchone()[0])
    db.close()
    sql(2, "UPDATE blocks SET proof = ? WHERE seq = 2", msgpack.packb(proof[:1]))  # 1 of q
    sql(1, "UPDATE blocks SET view = 777 WHERE seq = 4")  # a view no certificate proves
    sql(3, "UPDATE blocks SET prev_hash = ? WHERE seq = 3", b"\x07" * 32)  # a broken link
    return cluster.directory


def test_ledger_verify_reports_every_damage_per_node_and_block(run_cli: RunCli,
                                                               damaged: Path) -> None:
    out = run_cli("ledger", "verify", "--dir", damaged)
    assert out.returncode == 1, out
    assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1
    assert out.stderr.startswith("error: ledger verify found"), out.stderr
    found = set(re.findall(r"node (\d) block (\d+): ([a-z-]+):", out.stdout))
    for expected in [("0", "2", "request-frame"), ("0", "4", "request-signature"),
                     ("1", "3", "tx-count"), ("2", "5", "missing-block"),
                     ("2", "2", "certificate"), ("1", "4", "certificate"),
                     ("3", "3", "prev-hash"), ("3", "3", "hash")]:
        assert expected in found, (expected, out.stdout)
    assert ("1", "2", "request-signature") not in found, out.stdout  # a spoiled MAC vector
    assert "ExtraData" in out.stdout  # says what is wrong with the frame, never crashes
    only_1 = run_cli("ledger", "verify", "--dir", damaged, "--node", "1")
    assert only_1.returncode == 1 and not re.search(r"^\s*node 0", only_1.stdout, re.M)
    assert "node 1 block 4: certificate: 0 valid COMMIT(s) of the 3 needed: its COMMITs are " \
           "for view 0, the block says view 777" in only_1.stdout
    assert "node 1 block 3: tx-count: block says 999 transactions" in only_1.stdout


def test_ledger_verify_of_a_healthy_cluster_and_a_missing_ledger(
        run_cli: RunCli, cluster: RunningCluster) -> None:
    assert cluster.submit(20, request_txs=5).seconds_f1 is not None
    cluster.wait_executed(20)
    stop_nodes(cluster.directory)
    ok = run_cli("ledger", "verify", "--dir", cluster.directory)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (cluster.directory / "ledgers" / "node-3.sqlite").unlink()
    gone = run_cli("ledger", "verify", "--dir", cluster.directory)
    assert gone.returncode == 1
    assert "node 3: missing-ledger" in gone.stdout
    assert run_cli("ledger", "verify", "--dir", cluster.directory, "--node", "0",
                   "--node", "1").returncode == 0


def test_submit_shows_progress_while_it_waits(
        run_cli: RunCli, start_cluster: Callable[..., RunningCluster]) -> None:
    """On a slow network a submission takes seconds: a progress line every 2 s says how
    many requests are committed and how many nodes have replied (stderr, not a terminal)."""
    c = start_cluster(4, shaping={"latency_ms": 1500.0})
    out = run_cli("submit", "--dir", c.directory, "--count", "20", "--request-txs", "10",
                  "--timeout", "60")
    assert out.returncode == 0, out.stderr
    progress = [line for line in out.stderr.splitlines() if line.startswith("waiting: ")]
    assert progress, out.stderr
    assert re.fullmatch(r"waiting: \d/2 requests committed, replies from \d/4 nodes, "
                        r"\d+ s of 60 s", progress[0]), progress[0]
    assert out.stdout.startswith("20/20 transactions committed in 2/2 requests"), out.stdout


def test_submit_notes_silent_nodes_and_still_commits(
        run_cli: RunCli, cluster: RunningCluster) -> None:
    stop_nodes(cluster.directory, ids=[3])
    out = run_cli("submit", "--dir", cluster.directory, "--count", "5")
    assert out.returncode == 0, out.stderr
    assert "note: node(s) 3 did not answer; 3 of 4 did (a quorum is 3)" in out.stderr
    stop_nodes(cluster.directory, ids=[2])
    started = time.monotonic()
    out = run_cli("submit", "--dir", cluster.directory, "--count", "5")
    assert out.returncode == 1 and time.monotonic() - started < 15
    assert_one_line_error_1(out, "2 of 4 nodes answered within 3 s (node 0,1)",
                            "committing needs 3")


def assert_one_line_error_1(out: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit 1 (a problem found, not the user's mistake), one line on stderr."""
    assert out.returncode == 1, out
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
