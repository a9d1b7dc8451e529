"""The headline measurement: synchronize D transactions across n nodes; how long?

The reference's `genPBFTSynchronize(numNodes, data, clientAddr, bandwidth, latency)`
becomes `synchronize(nodes, data, bandwidth_mbps, latency_ms)`. Start-up and key
generation are not timed. The clock starts at the client's first send and reports:
  seconds_f1  - every transaction has f+1 matching replies (client-visible commit)
  seconds_2f1 - the client holds a commit quorum q (2f+1 when n = 3f+1) of matching
                replies for everything, and decided it: the reference's stopping rule;
                replies are sent once a node executed (durably), with `tentative` once
                it prepared, with `speculative` also once it pre-prepared (the client
                then decides on all n of those, or on q tentative ones)
  seconds_all - the client holds replies from all n nodes
plus the per-phase means the nodes' own metrics recorded, whether every node's ledger
ends at the same head, and the two figures to read them against (dtnbus.bound): the strict
floor `latency_floor_s` (no run can beat it) and the expectation `latency_expected_s` (what
a run takes on average under the latency model; runs beat it about half the time).

The emulated latencies are drawn from `seed`: a fresh one per run unless given, so
repeated runs sample the latency model instead of replaying one draw.
"""

from __future__ import annotations

import random
import secrets
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dtnbus.bound import SyncBounds, sync_bounds
from dtnbus.client import Client
from dtnbus.cluster import cluster_up, stop_nodes
from dtnbus.errors import LocalError
from dtnbus.messages import commit_quorum
from dtnbus.shaping import AUTO_BURST
from dtnbus.storage import compare_ledgers

PHASE_ORDER = ("request_to_preprepare", "preprepare_to_prepared", "prepared_to_committed",
               "committed_to_executed")


@dataclass(frozen=True)
class SyncResult:
    nodes: int
    tx: int
    tx_bytes: int
    bandwidth_mbps: float
    latency_ms: float
    seconds_f1: float | None  # every transaction accepted by the client
    seconds_2f1: float | None  # the client holds q (= 2f+1 at n = 3f+1) matching replies
    seconds_all: float | None  # ... from all n nodes
    phases: dict[str, float]  # mean seconds per batch, averaged over the nodes
    client_request_seconds: float | None  # mean request -> f+1 replies
    requests: int
    request_txs: int
    retransmissions: int
    ledger_heights: dict[int, int] = field(default_factory=dict)
    ledger_heads: dict[int, str] = field(default_factory=dict)
    ledgers_identical: bool = False
    ledger_error: str | None = None
    latency_floor_s: float | None = None  # the strict floor: no run can beat it
    floor_terms: dict[str, float] = field(default_factory=dict)
    latency_expected_s: float | None = None  # the expectation under the latency model
    expected_dominant: str | None = None  # its largest term
    expected_terms: dict[str, float] = field(default_factory=dict)
    seed: int | None = None  # drew the emulated latencies (uniform-F, jitter)
    tentative: bool = False  # replies were sent once prepared (PBFT tentative execution)
    speculative: bool = False  # ... and once pre-prepared (the fast path)
    seconds_2f1_committed: float | None = None  # q nodes executed everything (durable)
    seconds_all_committed: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def make_transactions(count: int, size: int, seed: int | None = None) -> list[bytes]:
    """Printable transactions of `size` bytes: a hex prefix unique per (seed, index), then
    letters drawn from the seed. The same seed gives the same bytes (a resumed
    submission sends the same transactions); no seed draws a fresh one. Printable, so
    `ledger export --format lines` can be diffed against them."""
    if size < 12:
        raise LocalError(f"--tx-bytes must be at least 12, got {size}")
    if count >= 16**8:
        raise LocalError(f"at most {16**8 - 1} generated transactions per seed, got {count}")
    seed = secrets.randbits(32) if seed is None else seed
    letters = random.Random(seed).choices(b"abcdefghijklmnopqrstuvwxyz", k=size)
    if size >= 16:  # 32 bits of seed: two fresh seeds all but never meet
        return [b"%08x%08x" % (seed & 0xFFFFFFFF, i) + bytes(letters[16:]) for i in range(count)]
    return [b"%04x%08x" % (seed & 0xFFFF, i) + bytes(letters[12:]) for i in range(count)]


def chunk(items: Sequence[bytes], size: int) -> list[tuple[bytes, ...]]:
    return [tuple(items[i:i + size]) for i in range(0, len(items), size)]


def synchronize(nodes: int, data: int | Sequence[bytes], bandwidth_mbps: float = 0.0,
                latency_ms: float = 0.0, *, tx_bytes: int = 300, request_txs: int = 256,
                scheme: str = "ed25519", directory: Path | None = None,
                protocol: dict[str, Any] | None = None,
                shaping: dict[str, Any] | None = None, tentative: bool | None = None,
                speculative: bool | None = None, timeout: float | None = None,
                wait_all: float = 30.0, fresh: bool = False, curve: bool = False,
                seed: int | None = None,
                on_progress: Callable[[int, int], None] | None = None) -> SyncResult:
    """Start an n-node cluster (not timed), synchronize `data` (a count of generated
    `tx_bytes`-byte transactions, or the transactions themselves), stop the cluster.
    A `directory` that already holds a cluster is refused unless `fresh`. `seed` draws
    the emulated latencies (None: a fresh seed, reported in the result). `tentative`:
    reply once prepared (True), once executed (False), or the protocol's default (None);
    `speculative`: also once pre-prepared (None: the protocol's default with `tentative`,
    off without it: the five-hop path); both always written into the cluster file, so
    the floor counts the hops the nodes run."""
    if bandwidth_mbps < 0 or latency_ms < 0:
        raise LocalError("bandwidth and latency must be >= 0 (0/0 means no shaping)")
    if request_txs < 1:
        raise LocalError(f"--request-txs must be at least 1, got {request_txs}")
    txs = make_transactions(data, tx_bytes) if isinstance(data, int) else list(data)
    if not txs:
        raise LocalError("nothing to synchronize: give at least one transaction")
    shaping_table = dict(shaping or {})
    protocol = dict(protocol or {})
    if tentative is None:
        tentative = bool(protocol.get("tentative", protocol_default("tentative")))
    protocol["tentative"] = tentative
    if speculative is None:
        speculative = tentative and bool(protocol.get("speculative",
                                                      protocol_default("speculative")))
    protocol["speculative"] = speculative
    if tentative:  # the committed replies too: sync reports when q / all n executed
        protocol.setdefault("reply_after_tentative", True)
    if bandwidth_mbps or latency_ms:
        shaping_table.update(bandwidth_mbps=bandwidth_mbps, latency_ms=latency_ms)
    if seed is None:
        seed = shaping_table.get("seed", fresh_seed())
    shaping_table["seed"] = seed
    tmp = None
    if directory is None:
        tmp = tempfile.TemporaryDirectory(prefix="dtnbus-sync-")
        directory = Path(tmp.name)
    payload = sum(len(t) for t in txs)
    if timeout is None:
        rate = bandwidth_mbps * 1e6 / 8 if bandwidth_mbps else 1e9
        timeout = 60 + 10 * payload / rate + 0.05 * len(txs) ** 0.5 * nodes
    bound = bounds_for(nodes, len(txs), payload // len(txs), bandwidth_mbps, latency_ms,
                           request_txs, scheme, shaping_table, tentative, speculative)
    # retransmit only when a reply is clearly overdue: on an emulated slow network a copy of
    # every request to every replica is exactly the load that makes replies later still
    retry_after = max(2.0, 3 * bound.expected_s) if bound else 2.0
    try:
        config = cluster_up(directory, nodes, scheme, protocol=protocol,
                            shaping=shaping_table or None, fresh=fresh, curve=curve)
        try:
            with Client(config) as client:
                result = client.submit(chunk(txs, request_txs), timeout=timeout,
                                       wait_all=wait_all, on_progress=on_progress,
                                       retry_after=retry_after)
                statuses = client.status(timeout=5.0)
            reports, error = compare_ledgers([s.ledger for s in config.nodes])
        finally:
            stop_nodes(directory)
    finally:
        if tmp is not None:
            tmp.cleanup()
    if result.seconds_f1 is None:
        raise LocalError(f"sync did not complete within {timeout:.0f}s: "
                         f"{len(result.results)}/{result.requests} requests accepted")
    phases: dict[str, float] = {}
    for name in PHASE_ORDER:
        means = [total / count for s in statuses.values()
                 for (pname, count, total) in s.phases if pname == name and count]
        if means:
            phases[name] = sum(means) / len(means)
    client_phase = client.metrics.phase_summary().get("request_to_reply_quorum")
    return SyncResult(
        nodes=nodes, tx=len(txs), tx_bytes=tx_bytes, bandwidth_mbps=bandwidth_mbps,
        latency_ms=latency_ms, seconds_f1=result.seconds_f1, seconds_2f1=result.seconds_2f1,
        seconds_all=result.seconds_all, phases=phases,
        client_request_seconds=(client_phase[1] / client_phase[0]
                                if client_phase and client_phase[0] else None),
        requests=result.requests, request_txs=request_txs,
        retransmissions=result.retransmissions,
        ledger_heights={i: r.height for i, r in enumerate(reports)},
        ledger_heads={i: r.head.hex() for i, r in enumerate(reports)},
        ledgers_identical=error is None and len({r.head for r in reports}) == 1,
        ledger_error=error,
        latency_floor_s=bound.floor_s if bound else None,
        floor_terms=bound.floor_terms() if bound else {},
        latency_expected_s=bound.expected_s if bound else None,
        expected_dominant=bound.dominant if bound else None,
        expected_terms=bound.expected_terms() if bound else {},
        seed=seed,
        tentative=tentative,
        speculative=speculative,
        seconds_2f1_committed=result.seconds_2f1_committed,
        seconds_all_committed=result.seconds_all_committed,
        extra={"latency_dist": shaping_table.get("latency_dist", "constant"),
               "mode": shaping_table.get("mode", "link"),
               "mbps_base": shaping_table.get("mbps_base", 1e6), "scheme": scheme,
               "curve": curve},
    )


def protocol_default(name: str) -> Any:
    """A protocol setting's value when the cluster file does not say (`tentative`: reply
    once prepared; `speculative`: once pre-prepared)."""
    from dtnbus.replica import ReplicaConfig

    return ReplicaConfig.__dataclass_fields__[name].default



def fresh_seed() -> int:
    """A new seed for the emulated latencies: 31 bits, short enough to type back."""
    return secrets.randbelow(2**31)


def bounds_for(nodes: int, tx: int, tx_bytes: int, bandwidth_mbps: float,
               latency_ms: float, request_txs: int, scheme: str,
               shaping: dict[str, Any], tentative: bool = False,
               speculative: bool = False) -> SyncBounds | None:
    """The strict floor and the expectation for this run (None where undefined)."""
    try:
        return sync_bounds(
            nodes, tx, tx_bytes, bandwidth_mbps, latency_ms, request_txs=request_txs,
            scheme=scheme, mode=shaping.get("mode", "link"),
            mbps_base=shaping.get("mbps_base", 1e6),
            latency_dist=shaping.get("latency_dist", "constant"),
            burst_bytes=shaping.get("burst_bytes", AUTO_BURST),
            reply_quorum=commit_quorum(nodes), tentative=tentative,
            speculative=speculative)
    except ValueError:
        return None
