"""Floods against real node processes: from one member (issue 9) and from clients (issue 11).

Member floods: a 4-node cluster with a ledger of some size; node 3 is stopped and played
by a `rogue.RogueMember`, which sends `count` well-signed frames of one kind to each
honest node as fast as their sockets take them (`rogue.flood_frames`: ever-higher
VIEW-CHANGEs, StateRequests for the whole ledger, Fetches of 1024 bodies, lying
PeerStatus, votes, checkpoints, PRE-PREPAREs of a non-primary, ...). Like a real attacker
it does not read what the nodes send back while it floods. A client stream keeps running
against the three honest nodes (a quorum). Per kind the run reports what each honest node
did: its resident memory before and at its peak (`rss.RssSampler`), requests the client
got acknowledged during the flood and before it, and the frames dropped by reason against
the member (`dtnbus_peer_drops_total{peer="3"}`) and taken.

Client flood: the cluster's capacity is measured with a closed-loop stream; then open-loop
streams offer `factor` times that for `seconds`; peak memory, BUSY answers, throughput
during and after; at the end every acknowledged request must be in every ledger once.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dtnbus.chaos import check_acknowledged
from dtnbus.cluster import cluster_up, running_pids, stop_nodes
from dtnbus.config import ClusterConfig
from dtnbus.fuzzrun import scrape, wait_level
from dtnbus.ledger_check import check_cluster
from dtnbus.messages import Outcome
from dtnbus.rogue import FLOOD_KINDS, RogueMember, flood_frames
from dtnbus.rss import RssSampler
from dtnbus.stream import RequestStream, percentile

ROGUE = 3
HONEST = (0, 1, 2)
MIB = 2**20


@dataclass
class KindResult:
    kind: str
    count: int
    send_seconds: float  # until the rogue had handed every frame to its sockets
    seconds: float  # until every honest node had read them all
    rss_before_mib: dict[int, float]
    rss_peak_mib: dict[int, float]
    rss_after_mib: dict[int, float]  # once the rogue read what was sent back to it
    acknowledged: int  # client requests acknowledged during the flood
    rate_before: float  # acknowledged per second just before it
    rate_during: float
    member_drops: dict[int, dict[str, int]]  # node -> reason -> frames dropped from member 3
    taken: dict[int, int]  # node -> frames of this kind it received and handled
    internal_errors: int
    read_all: list[int]  # honest nodes that had read the whole flood within 120 s
    sent: int  # frames sent to each (fewer than `count` if a node's RSS hit the limit)
    progress_seconds: float | None  # flood start -> the next acknowledgement (None: none)

    @property
    def growth_mib(self) -> float:
        return max(self.rss_peak_mib[n] - self.rss_before_mib[n] for n in self.rss_peak_mib)


@dataclass
class MemberFloodResult:
    kinds: list[KindResult]
    ledger_blocks: int
    ledger_txs: int
    ledgers_agree: bool
    acknowledged: int
    missing: int
    violations: list[str] = field(default_factory=list)
    directory: str = ""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for row, kind in zip(out["kinds"], self.kinds, strict=True):
            row["growth_mib"] = kind.growth_mib
        return out


def _peer_drops(metrics: dict, peer: str) -> dict[str, float]:
    return {dict(labels)["reason"]: value for (name, labels), value in metrics.items()
            if name == "dtnbus_peer_drops_total" and dict(labels).get("peer") == peer}


def _received(metrics: dict) -> dict[str, float]:
    return {dict(labels)["kind"]: value for (name, labels), value in metrics.items()
            if name == "dtnbus_messages_total" and dict(labels).get("direction") == "in"}


def _internal(metrics: dict) -> float:
    return metrics.get(("dtnbus_dropped_messages_total", (("reason", "internal_error"),)), 0.0)


def _wire_kind(kind: str) -> str:
    return {"view_change": "viewchange", "state_request": "staterequest",
            "peer_status": "peerstatus", "new_view": "newview",
            "state_reply": "statereply"}.get(kind, kind)


def preload(config: ClusterConfig, txs: int, tx_bytes: int = 300,
            request_txs: int = 256) -> int:
    """Put `txs` transactions in the ledger (what a StateRequest flood asks for again and
    again). Returns the number acknowledged."""
    from dtnbus.client import Client
    from dtnbus.sync import chunk, make_transactions

    if txs <= 0:
        return 0
    with Client(config) as client:
        result = client.submit(chunk(make_transactions(txs, tx_bytes, seed=7), request_txs),
                               timeout=120.0, window=64)
    return result.committed_txs


def run_member_floods(kinds: tuple[str, ...] = FLOOD_KINDS, count: int = 10_000,
                      ledger_txs: int = 20_000, directory: Path | None = None,
                      calm_seconds: float = 1.0, rss_limit_mib: float = 1024.0,
                      rate: float | None = None, stream_txs: int = 1,
                      log: Callable[[str], None] = lambda line: None) -> MemberFloodResult:
    """Each kind in turn, `count` frames to each honest node (see the module docstring),
    as fast as the sockets take them, or `rate` per second (a patient attacker: what a
    per-peer budget lets through then all gets served). The client stream's requests
    carry `stream_txs` transactions of 300 bytes (bodies a Fetch flood asks for). A node
    above `rss_limit_mib` stops the flood at once (the machine is shared); the kind is
    then reported as exceeding it."""
    where = directory or Path(tempfile.mkdtemp(prefix="dtnbus-flood-"))
    config = cluster_up(where, 4, fresh=True)
    violations: list[str] = []
    rows: list[KindResult] = []
    try:
        preload(config, ledger_txs)
        stop_nodes(where, ids=[ROGUE])
        pids = {k: v for k, v in running_pids(where).items() if k in HONEST}
        stream = RequestStream(config, window=8, request_txs=stream_txs, tx_bytes=300).start()
        sampler = RssSampler(pids, limit=int(rss_limit_mib * MIB),
                             kill_above=int(2 * rss_limit_mib * MIB)).start()
        try:
            with RogueMember(config, ROGUE) as rogue:
                if not rogue.announce():
                    violations.append("the honest nodes never heard the rogue member")
                if not rogue.quiet():  # only the fuzz's exact accounting needs silence
                    log("note: the honest nodes kept saying hello")
                for kind in kinds:
                    sampler.exceeded.clear()
                    row = _one_kind(config, rogue, stream, sampler, kind, count, calm_seconds,
                                    rate)
                    if sampler.exceeded.is_set():
                        violations.append(f"{kind}: a node's RSS went above {rss_limit_mib:.0f}"
                                          f" MiB; the flood was stopped after {row.sent} frames")
                    rows.append(row)
                    log(f"flood {kind}: {count} frames in {row.seconds:.1f} s; RSS growth "
                        f"{row.growth_mib:.0f} MiB; {row.rate_during:.0f} acks/s during "
                        f"(before {row.rate_before:.0f}/s)")
                    if len(row.read_all) < len(HONEST):
                        violations.append(f"{kind}: nodes {sorted(set(HONEST) - set(row.read_all))}"
                                          " had not read the flood within 120 s")
                    if row.internal_errors:
                        violations.append(f"{kind}: {row.internal_errors} internal errors")
                    if row.progress_seconds is None:
                        violations.append(f"{kind}: nothing committed from the flood's start "
                                          "until 10 s after its end")
                    if not row.taken and not any(row.member_drops.values()):
                        violations.append(f"{kind}: no node counted the flood")
        finally:
            sampler.stop()
            left = stream.drain(30)
            stream.stop()
        if left:
            violations.append(f"{left} requests not acknowledged 30 s after the floods")
        if sampler.killed:
            violations.append(f"nodes killed above {2 * rss_limit_mib:.0f} MiB of RSS: "
                              f"{ {n: v // MIB for n, v in sampler.killed.items()} }")
        missing, duplicated, wrong = check_acknowledged(config, stream, HONEST)
        if missing or duplicated or wrong:
            violations.append(f"acknowledged requests: {missing} missing, {duplicated} "
                              f"duplicated, {wrong} elsewhere than the client was told")
        reports, findings = check_cluster(config, set(HONEST))
        agree = not findings and len({r.head for r in reports}) == 1
        if not agree:
            violations.append("honest ledgers disagree: "
                              + (findings[0].line() if findings else "heads differ"))
        blocks = max((r.height for r in reports), default=0)
        for log_file in sorted((where / "logs").glob("node-*.log")):
            if "Traceback" in log_file.read_text(errors="replace"):
                violations.append(f"{log_file.name} logged a traceback")
        return MemberFloodResult(rows, blocks, ledger_txs, agree, stream.accepted_count(),
                                 missing, violations, str(where))
    finally:
        stop_nodes(where)


def _one_kind(config: ClusterConfig, rogue: RogueMember, stream: RequestStream,
              sampler: RssSampler, kind: str, count: int, calm: float,
              rate: float | None = None) -> KindResult:
    status = rogue.sync(30)
    rogue.discard_incoming()
    view = max((s.view for s in status.values()), default=0)
    digests = [a.digest for a in stream.accepted()[-1024:]]
    frames = flood_frames(rogue, kind, count, view=view, digests=digests)
    before = {n: scrape(config.node(n).metrics) for n in HONEST}
    acks_start = stream.accepted_count()
    time.sleep(calm)  # a calm second before the flood: the rate it is compared with
    rate_before = (stream.accepted_count() - acks_start) / calm
    sampler.reset_peaks()
    rss_before = {n: sampler.last.get(n, 0) / MIB for n in HONEST}
    acks0 = stream.accepted_count()
    start = time.monotonic()
    # like an attacker: it does not read what comes back while it floods
    sent = rogue.send(frames, read=False, stop=sampler.exceeded, rate=rate)
    send_seconds = time.monotonic() - start
    answered = rogue.sync(120, read=False)
    seconds = time.monotonic() - start
    acknowledged = stream.accepted_count() - acks0
    progress = None  # seconds from the flood's start to the first acknowledgement after it
    while progress is None and time.monotonic() < start + seconds + 10:
        later = [t for t in stream.accept_times[acks0:acks0 + 1] if t >= start]
        if later:
            progress = later[0] - start
        else:
            time.sleep(0.02)  # the stream's thread records acknowledgements: poll it
    peak = {n: sampler.peak.get(n, 0) / MIB for n in HONEST}
    wire = _wire_kind(kind)

    def accounted(before_n: dict, after_n: dict) -> tuple[dict[str, int], int]:
        dropped = {r: int(v - _peer_drops(before_n, "3").get(r, 0))
                   for r, v in _peer_drops(after_n, "3").items()
                   if v - _peer_drops(before_n, "3").get(r, 0)}
        return dropped, int(_received(after_n).get(wire, 0) - _received(before_n).get(wire, 0))

    # A node exports its message tallies every 0.25 s (metrics.NodeMetrics.flush), so a
    # scrape right after the flood can miss the last of them: read until every frame is
    # accounted for, or for at most 2 s (then what is missing is a finding, not a lag).
    deadline = time.monotonic() + 2.0
    while True:
        after = {n: scrape(config.node(n).metrics) for n in HONEST}
        counts = {n: accounted(before[n], after[n]) for n in HONEST}
        if all(sum(d.values()) + t >= sent for d, t in counts.values()) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.1)  # the next export of the nodes' tallies
    rogue.discard_incoming()  # now read (and free) what the nodes queued for it
    time.sleep(0.5)  # give the nodes' queues a moment to drain before the next reading
    rss_after = {n: sampler.last.get(n, 0) / MIB for n in HONEST}
    drops = {n: counts[n][0] for n in HONEST}
    taken = {n: counts[n][1] for n in HONEST}
    internal = int(sum(_internal(after[n]) - _internal(before[n]) for n in HONEST))
    return KindResult(kind, count, send_seconds, seconds, rss_before, peak, rss_after,
                      acknowledged, rate_before, acknowledged / seconds if seconds else 0.0,
                      drops, taken, internal, sorted(answered), sent, progress)


# ------------------------------------------------------------ client flood

@dataclass
class ClientFloodResult:
    capacity_rps: float  # closed-loop acknowledged requests per second, measured first
    offered_rps: float  # what the flooding clients sent (new requests per second)
    factor: float  # offered / capacity
    seconds: float
    acknowledged_during: int
    rate_during: float
    rate_after: float  # closed loop again, after the flood
    drain_seconds: float  # flood end -> every flood request acknowledged (or given up)
    busy_answers: int  # BUSY replies the flooding clients got
    busy_requests: int  # requests that got at least one
    held_back: int  # due but not sent: the client's window was full
    not_executed: dict[str, int]  # decided with another outcome than executed
    rss_before_mib: dict[int, float]
    rss_peak_mib: dict[int, float]
    latency_p99_during: float | None
    acknowledged: int
    missing: int
    duplicated: int
    ledgers_agree: bool
    violations: list[str] = field(default_factory=list)
    directory: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_client_flood(seconds: float = 60.0, factor: float = 10.0, clients: int = 4,
                     request_txs: int = 16, tx_bytes: int = 100, window: int = 4096,
                     protocol: dict[str, Any] | None = None, measure_seconds: float = 5.0,
                     directory: Path | None = None, rss_limit_mib: float = 1024.0,
                     log: Callable[[str], None] = lambda line: None) -> ClientFloodResult:
    """Measure capacity, offer `factor` times it from `clients` open-loop streams for
    `seconds`, then measure again (see the module docstring). Each stream keeps at most
    `window` requests outstanding (a session's window in the replicas' client table:
    beyond it, the oldest gaps would be answered STALE)."""
    where = directory or Path(tempfile.mkdtemp(prefix="dtnbus-clientflood-"))
    config = cluster_up(where, 4, protocol=protocol, fresh=True)
    violations: list[str] = []
    streams: list[RequestStream] = []
    try:
        pids = running_pids(where)
        sampler = RssSampler(pids, limit=int(rss_limit_mib * MIB),
                             kill_above=int(2 * rss_limit_mib * MIB)).start()
        capacity = _closed_loop_rate(config, measure_seconds, request_txs, tx_bytes, tag=1,
                                     streams=streams)
        log(f"capacity: {capacity:.0f} requests/s of {request_txs} txs (closed loop)")
        sampler.reset_peaks()
        rss_before = {n: sampler.last.get(n, 0) / MIB for n in pids}
        rate = max(1.0, capacity * factor / clients)
        flooders = [RequestStream(config, window=window, rate=rate,
                                  request_txs=request_txs, tx_bytes=tx_bytes, tag=10 + i,
                                  retry_after=2.0).start()
                    for i in range(clients)]
        streams.extend(flooders)
        start = time.monotonic()
        acks0 = sum(s.accepted_count() for s in flooders)
        while time.monotonic() - start < seconds and not sampler.exceeded.is_set():
            time.sleep(0.25)  # the flood runs in the streams' threads; we only wait it out
        if sampler.exceeded.is_set():
            violations.append(f"a node's RSS went above {rss_limit_mib:.0f} MiB: flood stopped "
                              f"after {time.monotonic() - start:.1f} s")
        elapsed = time.monotonic() - start
        offered = sum(s.offered for s in flooders) / elapsed
        held_back = sum(s.skipped for s in flooders)
        during = sum(s.accepted_count() for s in flooders) - acks0
        peak = {n: sampler.peak.get(n, 0) / MIB for n in pids}
        log(f"flood: offered {offered:.0f}/s ({offered / capacity:.1f}x), acknowledged "
            f"{during / elapsed:.0f}/s, peak RSS {max(peak.values()):.0f} MiB")
        drain_start = time.monotonic()
        for s in flooders:
            s.stop_offering()
        drain_by = drain_start + max(60.0, 2 * seconds)
        left = sum(s.drain(max(0.0, drain_by - time.monotonic())) for s in flooders)
        drained = time.monotonic() - drain_start
        for s in flooders:
            s.stop()
        if left:
            violations.append(f"{left} flood requests not acknowledged {drained:.0f} s after "
                              "the flood")
        log(f"drained the backlog in {drained:.1f} s ({left} requests left)")
        after = _closed_loop_rate(config, measure_seconds, request_txs, tx_bytes, tag=2,
                                  streams=streams)
        sampler.stop()
        if sampler.killed:
            violations.append(f"nodes killed above {2 * rss_limit_mib:.0f} MiB of RSS: "
                              f"{ {n: v // MIB for n, v in sampler.killed.items()} }")
        if not wait_level(config, 60):
            violations.append("nodes not level 60 s after the flood")
        latencies = [a.latency for s in flooders for a in s.accepted()
                     if a.sent - start < seconds]
        busy_requests = sum(1 for s in flooders for a in s.acks.values() if a.busy_answers)
        other = Counter(Outcome.NAMES.get(a.key[3], str(a.key[3])) for s in streams
                        for a in s.accepted() if a.key is not None and not a.executed)
        total_missing = total_dup = 0
        for s in streams:
            missing, duplicated, wrong = check_acknowledged(config, s, tuple(pids))
            total_missing += missing + wrong
            total_dup += duplicated
            if missing or wrong:
                log(f"stream tag {s.tag} session {s.session}: {missing} missing, {wrong} "
                    f"misplaced of {s.accepted_count()} acknowledged")
        if total_missing or total_dup:
            violations.append(f"acknowledged requests: {total_missing} missing or misplaced, "
                              f"{total_dup} duplicated")
        reports, findings = check_cluster(config)
        agree = not findings and len({r.head for r in reports}) == 1
        if not agree:
            violations.append("ledgers disagree: "
                              + (findings[0].line() if findings else "heads differ"))
        for log_file in sorted((where / "logs").glob("node-*.log")):
            if "Traceback" in log_file.read_text(errors="replace"):
                violations.append(f"{log_file.name} logged a traceback")
        return ClientFloodResult(
            capacity_rps=capacity, offered_rps=offered, factor=offered / capacity,
            seconds=elapsed, acknowledged_during=during, rate_during=during / elapsed,
            rate_after=after, drain_seconds=drained,
            busy_answers=sum(s.busy_answers for s in flooders),
            busy_requests=busy_requests, held_back=held_back, not_executed=dict(other),
            rss_before_mib=rss_before, rss_peak_mib=peak,
            latency_p99_during=percentile(latencies, 99),
            acknowledged=sum(s.accepted_count() for s in streams), missing=total_missing,
            duplicated=total_dup, ledgers_agree=agree, violations=violations,
            directory=str(where))
    finally:
        for s in streams:
            s.stop()
        stop_nodes(where)


def _closed_loop_rate(config: ClusterConfig, seconds: float, request_txs: int,
                      tx_bytes: int, tag: int, streams: list[RequestStream]) -> float:
    """Acknowledged requests per second of a closed-loop stream with a deep window (the
    most the cluster takes when every request is answered before the next is due)."""
    stream = RequestStream(config, window=256, request_txs=request_txs, tx_bytes=tx_bytes,
                           tag=tag).start()
    streams.append(stream)
    time.sleep(min(1.0, seconds / 4))  # warm-up: not measured
    start, acks = time.monotonic(), stream.accepted_count()
    time.sleep(seconds)  # the measurement window
    rate = (stream.accepted_count() - acks) / (time.monotonic() - start)
    stream.drain(30)
    stream.stop()
    return rate
