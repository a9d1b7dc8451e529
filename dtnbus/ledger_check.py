"""`dtnbus ledger verify`: find every kind of damage in every node's ledger, as data.

The command exists to find corruption, so nothing here stops at the first problem or
trusts what it reads: each block's links (sequence, previous hash, batch digest, block
hash over the outcomes), its commit certificate (q COMMITs signed by distinct members of
the cluster file, on the block's view and batch digest), each stored request (a
well-formed frame from a client the cluster file lists or the ledger itself admitted
before it, its signature (a MAC-authenticated one is vouched for by the block's commit
certificate: a faulty client's tag may fail at a node that took it vouched), its digest,
identity, transaction count and outcome as ordered), each block's transaction count, requests
whose block is gone, and then the ledgers against each other (the first block where a
node's chain leaves the others'). Findings are returned, not printed; the CLI prints one
line per finding. The ledger is read only through `storage.Ledger`.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from dtnbus import admission
from dtnbus.config import ClusterConfig
from dtnbus.crypto import Verifier, load_public_key_text
from dtnbus.errors import LocalError, PeerError
from dtnbus.messages import (
    GENESIS,
    Commit,
    Outcome,
    Request,
    batch_digest,
    block_hash,
    commit_quorum,
)
from dtnbus.storage import Block, Ledger, StoredRequest
from dtnbus.wire import Codec, parse_request_frame


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: where (node, block; None = the whole ledger), what kind, and detail."""

    node: int
    block: int | None
    kind: str
    detail: str

    def line(self) -> str:
        where = f"node {self.node}" + (f" block {self.block}" if self.block is not None else "")
        return f"{where}: {self.kind}: {self.detail}"


# kind -> what it means (docs/operations.md lists them)
KINDS = {
    "missing-ledger": "the ledger file does not exist",
    "unreadable": "SQLite cannot read the file",
    "gap": "block numbers skip (blocks missing in the middle)",
    "prev-hash": "a block does not point at the previous block's hash",
    "digest": "the batch digest is not the digest of the ordered request digests",
    "hash": "the block hash is not sha256(prev, seq, digest, outcomes)",
    "certificate": "the block's commit certificate does not prove it (q signed COMMITs on "
                   "its view and digest)",
    "request-frame": "a stored request is not a well-formed signed request",
    "request-signature": "a stored request's signature does not verify",
    "unknown-client": "a stored request names a client the cluster file does not list",
    "request-digest": "a stored request's digest is not the digest of its bytes",
    "request-identity": "a stored request's client/session/number columns differ from its "
                        "frame",
    "request-tx-count": "a stored request's transaction count differs from its frame",
    "ordered-set": "the stored requests are not the ones the block ordered, in its order",
    "outcomes": "the stored requests' outcomes differ from the block's (hashed) outcomes",
    "tx-count": "a block's transaction count differs from its executed requests",
    "missing-block": "requests are stored for a block that is not there",
    "diverged": "this ledger's chain differs from the other nodes' at this block",
}


@dataclass
class LedgerReport:
    node: int
    path: Path
    height: int = 0
    head: bytes = GENESIS
    transactions: int = 0
    hashes: dict[int, bytes] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    def add(self, block: int | None, kind: str, detail: str) -> None:
        self.findings.append(Finding(self.node, block, kind, detail))


def verifier_codec(config: ClusterConfig) -> Codec:
    """A codec that checks what any third party can: client signatures and certificates
    (no private key is read: a MAC tag proves nothing outside its node, so the block's
    commit certificate vouches for a MAC-tagged request)."""
    return Codec(None, config.replica_verifiers(), config.client_verifiers(),  # type: ignore[arg-type]
                 open_clients=config.open_admission)


def check_ledger(path: Path, node_id: int, codec: Codec,
                 operators: frozenset[str] = frozenset()) -> LedgerReport:
    """Every problem in one node's ledger file."""
    report = LedgerReport(node_id, path)
    if not path.exists():
        report.add(None, "missing-ledger", f"{path} does not exist")
        return report
    try:
        ledger = Ledger(path, synchronous="NORMAL")
    except LocalError as exc:
        report.add(None, "unreadable", str(exc))
        return report
    try:
        _check_blocks(ledger, report, codec, operators)
    except sqlite3.DatabaseError as exc:
        report.add(None, "unreadable", f"{path}: {exc}")
    finally:
        ledger.close()
    return report


def _check_blocks(ledger: Ledger, report: LedgerReport, codec: Codec,
                  operators: frozenset[str] = frozenset()) -> None:
    prev, expected = GENESIS, 1
    quorum = commit_quorum(len(codec.replicas))
    for block in ledger.blocks():
        seq = block.seq
        if seq != expected:
            report.add(seq, "gap", f"blocks {expected}..{seq - 1} are missing")
        if block.prev_hash != prev:
            report.add(seq, "prev-hash", f"points at {block.prev_hash.hex()[:16]}, the "
                                         f"previous block's hash is {prev.hex()[:16]}")
        if batch_digest(block.digests) != block.digest:
            report.add(seq, "digest", "stored batch digest does not match its request digests")
        if block_hash(block.prev_hash, seq, block.digest, block.outcomes) != block.hash:
            report.add(seq, "hash", f"stored hash {block.hash.hex()[:16]} is not the hash of "
                                    "its contents")
        _check_certificate(report, block, codec, quorum)
        requests = ledger.requests(seq)
        executed_txs = 0
        for position, stored in enumerate(requests):
            txs = _check_request(report, seq, position, stored, codec)
            if stored.outcome == Outcome.EXECUTED:
                executed_txs += stored.tx_count if txs is None else txs
                if stored.client in operators:  # clients it admits verify from here on
                    _learn_admissions(stored, codec)
        if [r.digest for r in requests] != list(block.digests):
            report.add(seq, "ordered-set", f"{len(requests)} stored request(s) are not the "
                                           f"{len(block.digests)} the block ordered, in order")
        if bytes(r.outcome for r in requests) != block.outcomes:
            report.add(seq, "outcomes", "the requests' outcomes differ from the block's")
        if executed_txs != block.tx_count:
            report.add(seq, "tx-count", f"block says {block.tx_count} transactions, its "
                                        f"executed requests hold {executed_txs}")
        report.hashes[seq] = block.hash
        report.height, report.head = seq, block.hash
        report.transactions += block.tx_count
        prev, expected = block.hash, seq + 1
    for seq in ledger.request_block_seqs():
        if seq not in report.hashes:
            report.add(seq, "missing-block", "its requests are stored but the block is not")


def _check_certificate(report: LedgerReport, block: Block, codec: Codec, quorum: int) -> None:
    """q COMMITs, each signed by a distinct member, for this block's view, seq and digest."""
    signers: set[int] = set()
    problems: list[str] = []
    for frame in block.proof:
        try:
            env = codec.decode(frame)
        except PeerError as exc:
            problems.append(f"a COMMIT does not verify ({exc.reason})")
            continue
        msg = env.msg
        if not isinstance(msg, Commit):
            problems.append(f"holds a {type(msg).__name__}, not a COMMIT")
        elif (msg.seq, msg.digest) != (block.seq, block.digest):
            problems.append(f"a COMMIT from node {msg.replica} is for another block")
        elif msg.view != block.view:
            problems.append(f"its COMMITs are for view {msg.view}, the block says view "
                            f"{block.view}")
        else:
            signers.add(msg.replica)
    if len(signers) < quorum:
        detail = "; ".join(dict.fromkeys(problems)) or "too few COMMITs"
        report.add(block.seq, "certificate", f"{len(signers)} valid COMMIT(s) of the "
                                             f"{quorum} needed: {detail}")
    elif problems:
        report.add(block.seq, "certificate", "; ".join(dict.fromkeys(problems)))


def _learn_admissions(stored: StoredRequest, codec: Codec) -> None:
    try:
        request, _ = parse_request_frame(stored.frame)
    except PeerError:
        return
    for tx in request.txs:
        change = admission.decode(tx)
        if change is not None and change.action == "add":
            try:  # a removed client's old requests still verify with the key it had
                codec.clients[change.client] = Verifier(load_public_key_text(change.public_key))
            except LocalError:
                continue


def _check_request(report: LedgerReport, seq: int, position: int, stored: StoredRequest,
                   codec: Codec) -> int | None:
    """Check one stored request; returns its transaction count as its frame says (None
    if the frame cannot be read)."""
    where = (f"request {position} (client {stored.client!r}, session {stored.session}, "
             f"number {stored.number})")
    try:
        raw = codec.parse(stored.frame)
    except PeerError as exc:
        kind = "unknown-client" if exc.reason == "unknown_sender" else "request-frame"
        report.add(seq, kind, f"{where}: {exc}")
        return None
    msg = raw.msg
    if not isinstance(msg, Request):
        report.add(seq, "request-frame", f"{where}: holds a {type(msg).__name__}, not a request")
        return None
    if raw.tags:
        # a MAC tag proves nothing to a third party, and a faulty client's may fail at a
        # node that took its request on f + 1 replicas' word (Replica.unvouched): the
        # block's commit certificate vouches for it
        env = None
    else:
        try:
            env = codec.authenticate(raw)
        except PeerError:
            what = "this node's MAC tag" if raw.tags else "the client's signature"
            report.add(seq, "request-signature", f"{where}: {what} does not verify")
            env = None
    digest = env.digest if env is not None else hashlib.sha256(raw.payload).digest()
    if digest != stored.digest:
        report.add(seq, "request-digest", f"{where}: stored digest {stored.digest.hex()[:16]} "
                                          f"is not the digest of its bytes "
                                          f"({digest.hex()[:16]})")
    if (msg.client, msg.session, msg.number) != (stored.client, stored.session, stored.number):
        report.add(seq, "request-identity", f"{where}: the frame says client {msg.client!r}, "
                                            f"session {msg.session}, number {msg.number}")
    if len(msg.txs) != stored.tx_count:
        report.add(seq, "request-tx-count", f"{where}: stored count {stored.tx_count}, the "
                                            f"frame holds {len(msg.txs)}")
    return len(msg.txs)


def compare(reports: list[LedgerReport]) -> list[Finding]:
    """Where a node's chain leaves the majority's: its first differing block."""
    findings = []
    top = max((r.height for r in reports), default=0)
    diverged: set[int] = set()
    for seq in range(1, top + 1):
        held = {r.node: r.hashes[seq] for r in reports if seq in r.hashes}
        if len(set(held.values())) <= 1:
            continue
        majority, count = Counter(held.values()).most_common(1)[0]
        for node, value in held.items():
            if node in diverged:
                continue
            if value != majority or count * 2 <= len(held):
                diverged.add(node)
                others = sorted(n for n, v in held.items() if v != value)
                findings.append(Finding(node, seq, "diverged",
                                        f"hash {value.hex()[:16]} differs from node(s) "
                                        f"{','.join(map(str, others))}"))
        if len(diverged) == len(reports):
            break
    return findings


def check_cluster(config: ClusterConfig, only: set[int] | None = None,
                  ) -> tuple[list[LedgerReport], list[Finding]]:
    """Every node's ledger (or those in `only`), checked alone and against each other.
    Returns the per-node reports and all findings (per node, per block). Certificates and
    signatures are checked against every member of the cluster file."""
    reports = [check_ledger(spec.ledger, spec.id, verifier_codec(config),
                            config.operators())
               for spec in config.nodes if only is None or spec.id in only]
    present = [r for r in reports if not any(f.kind in ("missing-ledger", "unreadable")
                                             for f in r.findings)]
    findings = [f for r in reports for f in r.findings] + compare(present)
    return reports, findings
