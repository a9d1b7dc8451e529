"""A payout agent's own SQLite file, beside its node's ledger (`node-K.payout.sqlite`).

- `rewards`: every reward id's first committed entry in this node's ledger, what the agent
  knows of its payment (proposal, confirmations, execution), since when, and why it is not paid
  yet (read by `dtnbus reward status`);
- `outbox`: every wallet transaction the agent signed, written *before* it is broadcast. A
  restarted agent finds each one and learns its fate from the chain (mined, still pending, or
  never arrived) before signing anything else, so a crash never makes it send a second
  proposal, confirmation or execution for one it already sent;
- `duplicates`: later ledger entries of an already committed id (never paid again);
- `meta`: the last ledger sequence read.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from dtnbus.errors import LocalError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rewards (
    reward_id BLOB PRIMARY KEY,
    proposal TEXT NOT NULL,          -- the wallet's index of its proposal, hex
    seq INTEGER NOT NULL, position INTEGER NOT NULL, item INTEGER NOT NULL,
    designated INTEGER NOT NULL,     -- the node that proposes first
    client TEXT NOT NULL, trainer TEXT NOT NULL, amount_wei TEXT NOT NULL,
    model_id TEXT NOT NULL, reason TEXT NOT NULL,
    state TEXT NOT NULL,             -- committed | proposed | confirmed | paid
    why TEXT NOT NULL,               -- what it waits for, or what blocks it
    blocker TEXT,                    -- wallet_balance | owner_gas | rpc | ... (NULL: none)
    confirmations INTEGER NOT NULL DEFAULT 0,
    committed_at REAL NOT NULL,      -- wall clock, when this agent read it in the ledger
    proposed_at REAL, confirmed_at REAL, paid_at REAL,
    executed_tx TEXT,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS duplicates (
    seq INTEGER NOT NULL, position INTEGER NOT NULL, item INTEGER NOT NULL,
    reward_id BLOB NOT NULL, client TEXT NOT NULL, conflict INTEGER NOT NULL,
    PRIMARY KEY (seq, position, item)
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    reward_id BLOB NOT NULL,
    action TEXT NOT NULL,            -- propose | confirm | execute
    nonce INTEGER NOT NULL,
    tx_hash TEXT NOT NULL UNIQUE,
    raw BLOB NOT NULL,               -- the signed transaction: re-broadcast byte for byte
    state TEXT NOT NULL,             -- signed | sent | mined | reverted | abandoned
    note TEXT NOT NULL DEFAULT '',
    block INTEGER, gas_used INTEGER,
    created REAL NOT NULL, updated REAL NOT NULL
);
"""

IN_FLIGHT = ("signed", "sent")


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    reward_id: bytes
    action: str
    nonce: int
    tx_hash: str
    raw: bytes
    state: str
    note: str


class AgentState:
    def __init__(self, path: Path, readonly: bool = False) -> None:
        try:
            if readonly:
                self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                          isolation_level=None)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(str(path), isolation_level=None)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")  # the outbox must survive a crash
                self.db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise LocalError(f"cannot open payout state {path}: {exc}") from None
        self.path = path

    def close(self) -> None:
        self.db.close()

    # ---- meta ---------------------------------------------------------------------------------

    def get(self, key: str, default: str = "") -> str:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def put(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # ---- outbox -------------------------------------------------------------------------------

    def record_signed(self, reward_id: bytes, action: str, nonce: int, tx_hash: str,
                      raw: bytes) -> OutboxRow:
        now = time.time()
        cur = self.db.execute(
            "INSERT INTO outbox (reward_id, action, nonce, tx_hash, raw, state, created, "
            "updated) VALUES (?,?,?,?,?, 'signed', ?, ?)",
            (reward_id, action, nonce, tx_hash, raw, now, now))
        return OutboxRow(cur.lastrowid or 0, reward_id, action, nonce, tx_hash, raw, "signed",
                         "")

    def set_outbox_state(self, row_id: int, state: str, note: str = "",
                         block: int | None = None, gas_used: int | None = None) -> None:
        self.db.execute(
            "UPDATE outbox SET state = ?, note = ?, block = COALESCE(?, block), "
            "gas_used = COALESCE(?, gas_used), updated = ? WHERE id = ?",
            (state, note, block, gas_used, time.time(), row_id))

    def in_flight(self) -> list[OutboxRow]:
        return [OutboxRow(*r) for r in self.db.execute(
            "SELECT id, reward_id, action, nonce, tx_hash, raw, state, note FROM outbox "
            "WHERE state IN ('signed', 'sent') ORDER BY nonce")]

    def sent_count(self, reward_id: bytes, action: str) -> int:
        """Transactions of this kind for this reward that reached the chain (mined)."""
        return self.db.execute(
            "SELECT COUNT(*) FROM outbox WHERE reward_id = ? AND action = ? AND state = 'mined'",
            (reward_id, action)).fetchone()[0]
