"""The durable, hash-chained ledger: one SQLite file per node, WAL mode.

Each block is one executed batch: its sequence number, view, the ordered request
digests the PRE-PREPARE carried, their batch digest, the previous block's hash and
its own. The executed requests are stored as the client's signed frames, so anyone
can re-check them. A block is committed to disk (synchronous=FULL by default) before
the node sends any reply for it: a crash never loses an entry a client was told of.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack

from dtnbus.errors import LocalError
from dtnbus.messages import GENESIS, batch_digest, block_hash
from dtnbus.replica import Execute

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    seq INTEGER PRIMARY KEY,
    view INTEGER NOT NULL,
    digest BLOB NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL,
    digests BLOB NOT NULL,
    tx_count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER NOT NULL REFERENCES blocks(seq),
    position INTEGER NOT NULL,
    client TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    digest BLOB NOT NULL,
    frame BLOB NOT NULL,
    tx_count INTEGER NOT NULL,
    executed INTEGER NOT NULL,  -- 0: ordered again after it was executed (a replay)
    PRIMARY KEY (seq, position)
);
"""


@dataclass(frozen=True, slots=True)
class Block:
    seq: int
    view: int
    digest: bytes
    prev_hash: bytes
    hash: bytes
    digests: tuple[bytes, ...]
    tx_count: int


class Ledger:
    """Append-only access to one node's ledger file."""

    def __init__(self, path: Path, synchronous: str = "FULL", readonly: bool = False) -> None:
        """`readonly`: a reader beside the node (a payout agent, the CLI) that must never
        create the file or change its schema."""
        if synchronous not in ("FULL", "NORMAL", "OFF"):
            raise LocalError(f"unknown sqlite synchronous mode {synchronous!r}")
        try:
            if readonly:
                if not path.exists():
                    raise LocalError(f"ledger {path} does not exist (yet)")
                self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                           isolation_level=None, check_same_thread=False)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(str(path), isolation_level=None,
                                           check_same_thread=False)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(f"PRAGMA synchronous={synchronous}")
                self._db.executescript(_SCHEMA)
            row = self._db.execute(
                "SELECT seq, hash FROM blocks ORDER BY seq DESC LIMIT 1").fetchone()
        except sqlite3.Error as exc:
            raise LocalError(f"cannot open ledger {path}: {exc}") from None
        self.path = path
        self.height, self.head = (row[0], bytes(row[1])) if row else (0, GENESIS)

    def append(self, block: Execute) -> None:
        """Write one block and its requests in a single transaction."""
        if block.seq != self.height + 1 or block.prev_hash != self.head:
            raise LocalError(f"ledger {self.path}: block {block.seq} does not extend "
                             f"height {self.height}")
        db = self._db
        db.execute("BEGIN")
        try:
            db.execute("INSERT INTO blocks VALUES (?,?,?,?,?,?,?)",
                       (block.seq, block.view, block.digest, block.prev_hash, block.hash,
                        b"".join(block.digests), sum(r.txs for r in block.requests)))
            rows = [(r, 1) for r in block.requests] + [(r, 0) for r in block.skipped]
            db.executemany("INSERT INTO requests VALUES (?,?,?,?,?,?,?,?)",
                           [(block.seq, i, r.client, r.timestamp, r.digest, r.frame, r.txs,
                             flag) for i, (r, flag) in enumerate(rows)])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.height, self.head = block.seq, block.hash

    def blocks(self, start: int = 1) -> Iterator[Block]:
        for row in self._db.execute(
                "SELECT seq, view, digest, prev_hash, hash, digests, tx_count FROM blocks "
                "WHERE seq >= ? ORDER BY seq", (start,)):
            raw = bytes(row[5])
            digests = tuple(raw[i:i + 32] for i in range(0, len(raw), 32))
            yield Block(row[0], row[1], bytes(row[2]), bytes(row[3]), bytes(row[4]), digests,
                        row[6])

    def requests(self, seq: int) -> list[tuple[str, int, bytes, bytes, bool]]:
        """Every request block `seq` ordered: (client, timestamp, digest, frame, executed)."""
        return [(r[0], r[1], bytes(r[2]), bytes(r[3]), bool(r[4])) for r in self._db.execute(
            "SELECT client, timestamp, digest, frame, executed FROM requests WHERE seq = ? "
            "ORDER BY position", (seq,))]

    def hash_at(self, seq: int) -> bytes | None:
        row = self._db.execute("SELECT hash FROM blocks WHERE seq = ?", (seq,)).fetchone()
        return bytes(row[0]) if row else None

    def transaction_count(self) -> int:
        return self._db.execute("SELECT COALESCE(SUM(tx_count), 0) FROM blocks").fetchone()[0]

    def recent_requests(self, limit: int) -> list[tuple[str, int]]:
        """The newest executed (client, timestamp) pairs, to rebuild replay protection."""
        return [(r[0], r[1]) for r in self._db.execute(
            "SELECT client, timestamp FROM requests WHERE executed = 1 "
            "ORDER BY seq DESC, position DESC LIMIT ?", (limit,))]

    def close(self) -> None:
        self._db.close()


@dataclass(frozen=True, slots=True)
class ChainReport:
    path: Path
    height: int
    head: bytes
    transactions: int
    error: str | None


def verify_chain(path: Path) -> ChainReport:
    """Recompute every link of one ledger: digests, hashes, and the requests' own digests."""
    if not path.exists():
        return ChainReport(path, 0, GENESIS, 0, "ledger file does not exist")
    ledger = Ledger(path, synchronous="NORMAL")
    prev, height, txs = GENESIS, 0, 0
    try:
        for block in ledger.blocks():
            where = f"block {block.seq}"
            if block.seq != height + 1:
                return ChainReport(path, height, prev, txs, f"{where}: gap after {height}")
            if block.prev_hash != prev:
                return ChainReport(path, height, prev, txs, f"{where}: prev_hash mismatch")
            if batch_digest(block.digests) != block.digest:
                return ChainReport(path, height, prev, txs, f"{where}: digest mismatch")
            if block_hash(prev, block.seq, block.digest) != block.hash:
                return ChainReport(path, height, prev, txs, f"{where}: hash mismatch")
            held = set()
            for _client, _ts, digest, frame, _executed in ledger.requests(block.seq):
                payload = msgpack.unpackb(frame, raw=False)[0]
                if hashlib.sha256(payload).digest() != digest:
                    return ChainReport(path, height, prev, txs, f"{where}: request changed")
                held.add(digest)
            if held != set(block.digests):
                return ChainReport(path, height, prev, txs,
                                   f"{where}: requests do not match what was ordered")
            prev, height, txs = block.hash, block.seq, txs + block.tx_count
    finally:
        ledger.close()
    return ChainReport(path, height, prev, txs, None)


def compare_ledgers(paths: list[Path]) -> tuple[list[ChainReport], str | None]:
    """Verify each ledger, then check they are identical up to the shortest."""
    reports = [verify_chain(p) for p in paths]
    bad = [r for r in reports if r.error]
    if bad:
        return reports, f"{bad[0].path}: {bad[0].error}"
    shortest = min(r.height for r in reports) if reports else 0
    if shortest == 0:
        return reports, None
    hashes = set()
    for path in paths:
        ledger = Ledger(path, synchronous="NORMAL")
        try:
            hashes.add(ledger.hash_at(shortest))
        finally:
            ledger.close()
    if len(hashes) != 1:
        return reports, f"ledgers differ at block {shortest}"
    return reports, None
