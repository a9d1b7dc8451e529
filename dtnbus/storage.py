"""The durable state of one node: one SQLite file, WAL mode, synchronous=FULL.

- `blocks`: the hash-chained ledger. Each block is one executed batch: sequence, view,
  the ordered request digests, their batch digest, one outcome byte per request, the
  previous hash and its own, and its commit certificate (q signed COMMITs), so every block
  proves itself to anyone who holds the members' public keys.
- `requests`: every request a block ordered, as the client's signed frame, with its
  identity (client, session, number) and outcome; indexed by identity, so a request sent
  again is answered with its one true result.
- `sessions`, `floors`: the client table (`dtnbus.clients`), changed with each block.
- `protocol`: what the replica signed and must never contradict after a restart
  (`effects.Persist`), pruned below the stable checkpoint.

`write` takes the durable effects of one loop iteration and commits them in one
transaction; the node sends nothing that followed them before it returns (group commit).
A crash never loses an entry a client was told of, nor a vote a peer was shown.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgpack

from dtnbus.effects import DurableState, Execute, Forget, Persist, SessionState
from dtnbus.errors import LocalError
from dtnbus.messages import GENESIS

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blocks (
    seq INTEGER PRIMARY KEY,
    view INTEGER NOT NULL,
    digest BLOB NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL,
    digests BLOB NOT NULL,
    outcomes BLOB NOT NULL,
    tx_count INTEGER NOT NULL,
    proof BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER NOT NULL REFERENCES blocks(seq),
    position INTEGER NOT NULL,
    client TEXT NOT NULL,
    session INTEGER NOT NULL,
    number INTEGER NOT NULL,
    digest BLOB NOT NULL,
    frame BLOB NOT NULL,
    tx_count INTEGER NOT NULL,
    outcome INTEGER NOT NULL,  -- dtnbus.messages.Outcome: 0 executed
    PRIMARY KEY (seq, position)
);
CREATE INDEX IF NOT EXISTS requests_identity ON requests (client, session, number);
CREATE TABLE IF NOT EXISTS sessions (
    client TEXT NOT NULL,
    session INTEGER NOT NULL,
    low INTEGER NOT NULL,
    done BLOB NOT NULL,
    touched INTEGER NOT NULL,
    PRIMARY KEY (client, session)
);
CREATE TABLE IF NOT EXISTS floors (client TEXT PRIMARY KEY, floor INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS admitted (client TEXT PRIMARY KEY, public_key TEXT NOT NULL,
                                     curve_key TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS protocol (
    kind TEXT NOT NULL,
    key BLOB NOT NULL,
    seq INTEGER NOT NULL,  -- forgotten once a stable checkpoint covers it (0: never)
    data BLOB NOT NULL,
    PRIMARY KEY (kind, key)
);
"""
# key index of seq
_SEQ_KINDS = {"preprepare": 1, "prepare": 1, "commit": 1, "prepared": 0, "speculated": 0}


@dataclass(frozen=True, slots=True)
class Block:
    seq: int
    view: int
    digest: bytes
    prev_hash: bytes
    hash: bytes
    digests: tuple[bytes, ...]
    outcomes: bytes
    tx_count: int
    proof: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class StoredRequest:
    client: str
    session: int
    number: int
    digest: bytes
    frame: bytes
    tx_count: int
    outcome: int


@dataclass(frozen=True, slots=True)
class Decided:
    """Where a request identity was executed: its block and position."""

    seq: int
    position: int
    digest: bytes
    block_hash: bytes


def _pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _unpack(raw: bytes) -> object:
    return msgpack.unpackb(raw, raw=False, use_list=False)


def _split(raw: bytes) -> tuple[bytes, ...]:
    return tuple(raw[i:i + 32] for i in range(0, len(raw), 32))


class Ledger:
    """One node's durable state: appended in group commits, read by state transfer."""

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
        except (sqlite3.Error, OSError) as exc:
            raise LocalError(f"cannot open ledger {path}: {exc}") from None
        self.path = path
        self.height, self.head = (row[0], bytes(row[1])) if row else (0, GENESIS)

    # ------------------------------------------------------------ writing

    def write(self, effects: Sequence[Execute | Persist | Forget]) -> None:
        """Make one iteration's durable effects durable, in one transaction, in order."""
        if not effects:
            return
        db = self._db
        db.execute("BEGIN")
        try:
            height, head = self.height, self.head
            for eff in effects:
                if isinstance(eff, Execute):
                    if eff.seq != height + 1 or eff.prev_hash != head:
                        raise LocalError(f"ledger {self.path}: block {eff.seq} does not extend "
                                         f"height {height}")
                    self._append(eff)
                    height, head = eff.seq, eff.hash
                elif isinstance(eff, Persist):
                    seq_at = _SEQ_KINDS.get(eff.kind)
                    seq = eff.key[seq_at] if seq_at is not None else 0
                    db.execute("INSERT OR REPLACE INTO protocol VALUES (?,?,?,?)",
                               (eff.kind, _pack(eff.key), seq, _pack(eff.data)))
                else:
                    db.execute("DELETE FROM protocol WHERE seq > 0 AND seq <= ?", (eff.seq,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.height, self.head = height, head

    def append(self, block: Execute) -> None:
        """Write one block (and its client-table changes) durably."""
        self.write([block])

    def _append(self, block: Execute) -> None:
        db = self._db
        db.execute("INSERT INTO blocks VALUES (?,?,?,?,?,?,?,?,?)",
                   (block.seq, block.view, block.digest, block.prev_hash, block.hash,
                    b"".join(block.digests), block.outcomes, block.executed_txs,
                    _pack(list(block.proof))))
        db.executemany("INSERT INTO requests VALUES (?,?,?,?,?,?,?,?,?)",
                       [(block.seq, i, r.client, r.session, r.number, r.digest, r.frame, r.txs,
                         r.outcome) for i, r in enumerate(block.requests)])
        changes = block.clients
        db.executemany("DELETE FROM sessions WHERE client = ? AND session = ?", changes.evicted)
        db.executemany("INSERT OR REPLACE INTO sessions VALUES (?,?,?,?,?)",
                       [(s.client, s.session, s.low, _pack(list(s.done)), s.touched)
                        for s in changes.sessions])
        db.executemany("INSERT OR REPLACE INTO floors VALUES (?,?)", changes.floors)
        db.executemany("INSERT OR REPLACE INTO admitted VALUES (?,?,?)", changes.admitted)

    # ------------------------------------------------------------ reading

    def blocks(self, start: int = 1, end: int | None = None) -> Iterator[Block]:
        for row in self._db.execute(
                "SELECT seq, view, digest, prev_hash, hash, digests, outcomes, tx_count, proof "
                "FROM blocks WHERE seq >= ? AND seq <= ? ORDER BY seq",
                (start, end if end is not None else 2**62)):
            yield Block(row[0], row[1], bytes(row[2]), bytes(row[3]), bytes(row[4]),
                        _split(bytes(row[5])), bytes(row[6]), row[7],
                        tuple(_unpack(bytes(row[8]))))  # type: ignore[arg-type]

    def requests(self, seq: int) -> list[StoredRequest]:
        """Every request block `seq` ordered, in order."""
        return [StoredRequest(r[0], r[1], r[2], bytes(r[3]), bytes(r[4]), r[5], r[6])
                for r in self._db.execute(
                    "SELECT client, session, number, digest, frame, tx_count, outcome "
                    "FROM requests WHERE seq = ? ORDER BY position", (seq,))]

    def lookup(self, client: str, session: int, number: int) -> Decided | None:
        """Where this request identity executed, if it did."""
        row = self._db.execute(
            "SELECT r.seq, r.position, r.digest, b.hash FROM requests r JOIN blocks b "
            "ON b.seq = r.seq WHERE r.client = ? AND r.session = ? AND r.number = ? "
            "AND r.outcome = 0 LIMIT 1", (client, session, number)).fetchone()
        return None if row is None else Decided(row[0], row[1], bytes(row[2]), bytes(row[3]))

    def request_block_seqs(self) -> list[int]:
        """Every block number that has requests stored: with `blocks()`, shows a block
        removed while its requests stayed (what `ledger verify` calls a missing block)."""
        return [r[0] for r in self._db.execute("SELECT DISTINCT seq FROM requests ORDER BY seq")]

    def hash_at(self, seq: int) -> bytes | None:
        row = self._db.execute("SELECT hash FROM blocks WHERE seq = ?", (seq,)).fetchone()
        return bytes(row[0]) if row else None

    def transaction_count(self) -> int:
        return self._db.execute("SELECT COALESCE(SUM(tx_count), 0) FROM blocks").fetchone()[0]

    def durable_state(self) -> DurableState:
        """What a restarted replica resumes from (see `Replica.restore`)."""
        records = [Persist(kind, tuple(_unpack(bytes(key))), _unpack(bytes(data)))  # type: ignore[arg-type]
                   for kind, key, data in self._db.execute(
                       "SELECT kind, key, data FROM protocol ORDER BY kind, seq")]
        stable = max((r.data[0] for r in records if r.kind == "stable"), default=0)
        digests = {seq: bytes(d) for seq, d in self._db.execute(
            "SELECT seq, digest FROM blocks WHERE seq > ?", (stable,))}
        sessions = [SessionState(c, s, low, tuple((n, bytes(d)) for n, d in _unpack(bytes(done))),  # type: ignore[union-attr]
                                 touched)
                    for c, s, low, done, touched in self._db.execute(
                        "SELECT client, session, low, done, touched FROM sessions")]
        floors = dict(self._db.execute("SELECT client, floor FROM floors").fetchall())
        admitted = {c: (k, ck) for c, k, ck in self._db.execute(
            "SELECT client, public_key, curve_key FROM admitted")}
        return DurableState(self.height, self.head, self.transaction_count(), digests,
                            sessions, floors, records, admitted)

    def close(self) -> None:
        self._db.close()


class MemoryLedger:
    """The same interface over memory (tests and the simulator): what `write` keeps is what
    a restarted replica gets back from `durable_state`, exactly as from SQLite."""

    def __init__(self) -> None:
        self.chain: list[Execute] = []
        self.records: dict[tuple[str, tuple], Persist] = {}
        self.sessions: dict[tuple[str, int], SessionState] = {}
        self.floors: dict[str, int] = {}
        self.admitted: dict[str, tuple[str, str]] = {}
        self._index: dict[tuple[str, int, int], Decided] = {}

    @property
    def height(self) -> int:
        return len(self.chain)

    @property
    def head(self) -> bytes:
        return self.chain[-1].hash if self.chain else GENESIS

    def write(self, effects: Sequence[Execute | Persist | Forget]) -> None:
        for eff in effects:
            if isinstance(eff, Execute):
                if eff.seq != self.height + 1 or eff.prev_hash != self.head:
                    raise LocalError(f"block {eff.seq} does not extend height {self.height}")
                self.chain.append(eff)
                for pos, r in enumerate(eff.requests):
                    if r.outcome == 0:
                        self._index[(r.client, r.session, r.number)] = Decided(
                            eff.seq, pos, r.digest, eff.hash)
                for key in eff.clients.evicted:
                    self.sessions.pop(key, None)
                for state in eff.clients.sessions:
                    self.sessions[(state.client, state.session)] = state
                self.floors.update(eff.clients.floors)
                self.admitted.update({c: (k, ck) for c, k, ck in eff.clients.admitted})
            elif isinstance(eff, Persist):
                self.records[(eff.kind, eff.key)] = eff
            else:
                for key, rec in list(self.records.items()):
                    at = _SEQ_KINDS.get(rec.kind)
                    if at is not None and rec.key[at] <= eff.seq:
                        del self.records[key]

    def append(self, block: Execute) -> None:
        self.write([block])

    def blocks(self, start: int = 1, end: int | None = None) -> Iterator[Block]:
        for b in self.chain[max(0, start - 1):end]:
            yield Block(b.seq, b.view, b.digest, b.prev_hash, b.hash, b.digests, b.outcomes,
                        b.executed_txs, b.proof)

    def requests(self, seq: int) -> list[StoredRequest]:
        return [StoredRequest(r.client, r.session, r.number, r.digest, r.frame, r.txs,
                              r.outcome) for r in self.chain[seq - 1].requests]

    def lookup(self, client: str, session: int, number: int) -> Decided | None:
        return self._index.get((client, session, number))

    def durable_state(self) -> DurableState:
        stable = max((r.data[0] for r in self.records.values() if r.kind == "stable"),
                     default=0)
        return DurableState(self.height, self.head, sum(b.executed_txs for b in self.chain),
                            {b.seq: b.digest for b in self.chain if b.seq > stable},
                            list(self.sessions.values()), dict(self.floors),
                            list(self.records.values()), dict(self.admitted))


@dataclass(frozen=True, slots=True)
class ChainReport:
    path: Path
    height: int
    head: bytes
    transactions: int
    error: str | None


def verify_chain(path: Path) -> ChainReport:
    """Recompute every link of one ledger: digests, outcomes, hashes, the requests' own
    digests, and that each block holds exactly what it ordered."""
    import hashlib

    from dtnbus.messages import batch_digest, block_hash

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
            if block_hash(prev, block.seq, block.digest, block.outcomes) != block.hash:
                return ChainReport(path, height, prev, txs, f"{where}: hash mismatch")
            requests = ledger.requests(block.seq)
            if [r.digest for r in requests] != list(block.digests) or \
                    bytes(r.outcome for r in requests) != block.outcomes:
                return ChainReport(path, height, prev, txs,
                                   f"{where}: requests do not match what was ordered")
            for r in requests:
                try:
                    payload = msgpack.unpackb(r.frame, raw=False)[0]
                except Exception:
                    return ChainReport(path, height, prev, txs, f"{where}: request unreadable")
                if not isinstance(payload, bytes) or hashlib.sha256(payload).digest() != r.digest:
                    return ChainReport(path, height, prev, txs, f"{where}: request changed")
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
