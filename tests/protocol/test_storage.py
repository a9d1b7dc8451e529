"""The ledger: hash-chained, durable, and any tampering is found by verify."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from harness import Cluster

from dtnbus.errors import LocalError
from dtnbus.storage import Ledger, compare_ledgers, verify_chain


def _ledgers(tmp_path: Path, requests: int = 6, tag: bytes = b"tx") -> tuple[Cluster, list[Path]]:
    c = Cluster(4, config_overrides={"batch_max_requests": 2})
    for i in range(requests):
        c.request((tag + b"-%d" % i, tag + b"-%d-b" % i))
        c.run()
    paths = []
    for i in range(4):
        path = tmp_path / f"node-{i}.sqlite"
        ledger = Ledger(path)
        for block in c.blocks[i]:
            ledger.append(block)
        ledger.close()
        paths.append(path)
    return c, paths


def test_ledgers_of_correct_replicas_are_identical_and_valid(tmp_path: Path) -> None:
    c, paths = _ledgers(tmp_path)
    reports, error = compare_ledgers(paths)
    assert error is None
    assert {r.head for r in reports} == {c.replicas[0].head}
    assert all(r.transactions == 12 for r in reports)


def test_ledger_survives_reopen(tmp_path: Path) -> None:
    c, paths = _ledgers(tmp_path)
    ledger = Ledger(paths[0])
    assert (ledger.height, ledger.head) == (c.replicas[0].last_executed, c.replicas[0].head)
    assert ledger.transaction_count() == 12
    ledger.close()


def test_a_block_that_does_not_extend_the_head_is_refused(tmp_path: Path) -> None:
    c, paths = _ledgers(tmp_path)
    ledger = Ledger(paths[0])
    with pytest.raises(LocalError, match="does not extend"):
        ledger.append(c.blocks[0][0])
    ledger.close()


@pytest.mark.parametrize("column", ["digest", "prev_hash", "hash"])
def test_tampered_block_is_found(tmp_path: Path, column: str) -> None:
    _, paths = _ledgers(tmp_path)
    db = sqlite3.connect(paths[1])
    db.execute(f"UPDATE blocks SET {column} = ? WHERE seq = 2", (b"\x07" * 32,))
    db.commit()
    db.close()
    assert verify_chain(paths[1]).error is not None
    assert compare_ledgers(paths)[1] is not None


def test_tampered_request_is_found(tmp_path: Path) -> None:
    _, paths = _ledgers(tmp_path)
    db = sqlite3.connect(paths[2])
    frame = db.execute("SELECT frame FROM requests WHERE seq = 1").fetchone()[0]
    db.execute("UPDATE requests SET frame = ? WHERE seq = 1",
               (frame.replace(b"tx-0", b"tx-X"),))
    db.commit()
    db.close()
    assert "request changed" in (verify_chain(paths[2]).error or "")


def test_a_withheld_request_is_found(tmp_path: Path) -> None:
    _, paths = _ledgers(tmp_path)
    db = sqlite3.connect(paths[3])
    db.execute("DELETE FROM requests WHERE seq = 2")
    db.commit()
    db.close()
    assert "do not match" in (verify_chain(paths[3]).error or "")


def test_diverging_ledgers_are_reported(tmp_path: Path) -> None:
    _, paths = _ledgers(tmp_path / "a")
    _, other = _ledgers(tmp_path / "b", tag=b"other")
    assert "differ" in (compare_ledgers([paths[0], other[0]])[1] or "")


def test_missing_ledger_is_an_error_not_a_crash(tmp_path: Path) -> None:
    assert verify_chain(tmp_path / "none.sqlite").error == "ledger file does not exist"

