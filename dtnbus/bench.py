"""`dtnbus bench`: throughput and latency under many independent clients.

The workload that matters: many clients, each with its own key, each request one
signed (or MAC-authenticated) transaction. One load-generator process multiplexes all
client sessions over one DEALER per replica (replies are routed per request, so sessions
share connections) and keeps either `pipeline` requests outstanding per client (closed
loop) or offers `rate` requests per second (open loop, for the latency-vs-load curve).
A client accepts a request on f+1 matching committed replies that name it, exactly as
`dtnbus.client` does, checking only the replies it needs (the rest are counted, not
verified). The requests made in one loop leave as one multipart message per replica (a
node reads each part as one frame), and a MAC-authenticated reply is checked on a lean
path (unpacked, matched, its tag checked) without building a message object, so the
load generator leaves the nodes as much of the machine as it can.

Reported: committed transactions per second over the measured window (after a warm-up),
client-visible commit latency p50/p99/p99.9, the nodes' CPU per committed transaction
(from their own /proc accounting, so the gap to the cost of the cryptography is
visible), how much of the machine the load generator used, and whether the ledgers are
identical afterwards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import os
import random
import secrets
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgpack
import zmq

from dtnbus.client import Answers, new_session
from dtnbus.cluster import cluster_up, running_pids, stop_nodes
from dtnbus.config import ClusterConfig
from dtnbus.errors import LocalError, PeerError
from dtnbus.messages import Outcome, Reply, Request, reply_quorum
from dtnbus.storage import compare_ledgers
from dtnbus.transport import waiting_frames
from dtnbus.wire import Codec, bundle

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BUNDLE = 256  # request frames per bundle at most


def _unpack(raw: bytes) -> object:
    return msgpack.unpackb(raw, raw=False, use_list=True, max_str_len=256, max_array_len=16,
                           max_map_len=0)


@dataclass(frozen=True)
class BenchResult:
    nodes: int
    clients: int
    request_txs: int
    tx_bytes: int
    mode: str  # "closed" (pipeline per client) or "open" (offered rate)
    offered_per_s: float | None
    tx: int  # committed in the measured window
    seconds: float
    tx_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    cpu_us_per_tx: float | None  # all node processes together, per committed transaction
    node_cpu_share: float  # of the whole machine (1.0 = every core busy)
    client_cpu_share: float
    busy_answers: int
    retransmissions: int
    ledgers_identical: bool
    ledger_error: str | None
    authentication: str
    durability: str = "fsync"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class _Out(Answers):
    client: int
    number: int
    digest: bytes
    frame: bytes
    sent: float
    next_retry: float
    txs: int


class LoadGenerator:
    """Many client sessions, one process, one DEALER per replica."""

    def __init__(self, config: ClusterConfig, client_ids: list[str], tx_bytes: int,
                 request_txs: int) -> None:
        self.config = config
        self.n = config.n
        self.f1 = reply_quorum(config.n)
        self.codecs = [Codec(config.client_signer(c), config.replica_verifiers(), {})
                       for c in client_ids]
        self.client_ids = client_ids
        self.sessions = [new_session() for _ in client_ids]
        self.numbers = [0] * len(client_ids)
        self.ctx = zmq.Context()
        self.socks = []
        token = secrets.token_hex(4)
        for spec in config.nodes:
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
            sock.setsockopt(zmq.IDENTITY, f"bench-{os.getpid()}-{token}-{spec.id}".encode())
            sock.connect(spec.router)
            self.socks.append(sock)
        self.poller = zmq.Poller()
        for sock in self.socks:
            self.poller.register(sock, zmq.POLLIN)
        self.filler = bytes(random.Random(7).choices(b"abcdefghijklmnopqrstuvwxyz",
                                                     k=tx_bytes))
        self.tx_bytes = tx_bytes
        self.request_txs = request_txs
        self.out: dict[tuple[int, int], _Out] = {}
        self.latencies: list[float] = []
        self.committed_txs = 0
        self.busy = 0
        self.retransmissions = 0
        self.measuring = False
        # (client, session, number) of every request seen executed, when a caller checks
        # them against the ledgers (`BackgroundLoad`); None: not kept
        self.executed: set[tuple[str, int, int]] | None = None
        self.authentication = "mac"
        self.unsent: list[bytes] = []  # request frames not sent yet (`flush`)
        self.node_ids = [spec.id for spec in config.nodes]
        self._by_name = {c: i for i, c in enumerate(client_ids)}
        # replica id -> its Ed25519 key, which names the pair whose MAC a reply carries
        # (none: the clients cannot MAC, and replies are checked on the codec's path)
        self.replica_keys: dict[int, bytes] = {}
        if all(codec.can_mac for codec in self.codecs):
            self.replica_keys = {spec.id: self.codecs[0].replicas[spec.id].raw_key
                                 for spec in config.nodes}

    def close(self) -> None:
        self.ctx.destroy(linger=0)

    def send(self, client: int, now: float) -> None:
        self.numbers[client] += 1
        number = self.numbers[client]
        prefix = b"%04x%08x%010x" % (client, number, self.sessions[client] & 0xFFFFFFFFFF)
        txs = tuple(prefix + b"-%d-" % k + self.filler[:max(0, self.tx_bytes - len(prefix) - 8)]
                    for k in range(self.request_txs))
        req = Request(self.client_ids[client], self.sessions[client], number, txs)
        frame, digest = self.codecs[client].encode_request(req, self.authentication)
        self.unsent.append(frame)
        self.out[(client, number)] = _Out(client, number, digest, frame, now, now + 2.0,
                                          len(txs))

    def flush(self) -> None:
        """The requests made since the last flush, as one bundle per replica (`wire.bundle`:
        a node takes each frame in it as sent singly): one send per replica, not one per
        request."""
        if not self.unsent:
            return
        frames, self.unsent = self.unsent, []
        for start in range(0, len(frames), BUNDLE):
            part = bundle(frames[start:start + BUNDLE])
            for sock in self.socks:
                sock.send(part, zmq.NOBLOCK)

    def receive(self, timeout_ms: int) -> list[int]:
        """Handle the replies that arrived; returns the clients with a request decided."""
        freed = []
        for sock, _ in self.poller.poll(timeout_ms):
            replica = self.socks.index(sock)
            for frame in waiting_frames(sock):
                freed.extend(self._reply(replica, frame))
        return freed

    def _reply(self, replica: int, frame: bytes) -> list[int]:
        """One reply: the lean path for a MAC-authenticated one (the checks a client makes,
        without building a message object), else the codec's."""
        try:
            outer = _unpack(frame)
            if type(outer) is list and len(outer) == 3 and outer[1] == b"":
                payload, tag = outer[0], outer[2]
                items = _unpack(payload)
                if type(items) is list and len(items) == 13 and items[0] == Reply.KIND:
                    return self._lean_reply(replica, payload, tag, items)
        except Exception:  # garbage from a peer: ignored, as the codec would
            return []
        return self._full_reply(replica, frame)

    def _lean_reply(self, replica: int, payload: bytes, tag: bytes, items: list) -> list[int]:
        (_kind, view, sender, name, session, number, request, seq, position, result,
         outcome, tentative, speculative) = items
        client = self._by_name.get(name) if type(name) is str else None
        if client is None or sender != self.node_ids[replica]:
            return []
        out = self.out.get((client, number))
        if out is None or request != out.digest or session != self.sessions[client]:
            return []
        if outcome == Outcome.BUSY:
            self.busy += 1
            out.next_retry = min(out.next_retry, time.monotonic() + 0.05)
            return []
        replica_key = self.replica_keys.get(sender)
        macs = self.codecs[client].macs
        # only a reply we still need is worth a check; its MAC is keyed for its client
        if replica_key is None or macs is None or type(tag) is not bytes or \
                type(payload) is not bytes or not hmac.compare_digest(
                    tag, macs.tag(replica_key, hashlib.sha256(payload).digest())):
            return []
        if type(seq) is not int or type(position) is not int or type(result) is not bytes \
                or type(outcome) is not int or type(tentative) is not bool \
                or type(speculative) is not bool or type(view) is not int:
            return []
        return self._count(out, client, number, replica, (seq, position, result, outcome),
                           view, tentative, speculative)

    def _full_reply(self, replica: int, frame: bytes) -> list[int]:
        codec = self.codecs[0]
        try:
            raw = codec.parse(frame)
        except PeerError:
            return []
        msg = raw.msg
        if not isinstance(msg, Reply):
            return []
        client = self.client_ids.index(msg.client) if len(self.client_ids) < 64 else \
            self._index(msg.client)
        out = self.out.get((client, msg.number))
        if out is None or msg.request != out.digest or msg.session != self.sessions[client]:
            return []
        if msg.outcome == Outcome.BUSY:
            self.busy += 1
            out.next_retry = min(out.next_retry, time.monotonic() + 0.05)
            return []
        try:  # only a reply we still need is worth a check; its MAC is keyed for its client
            self.codecs[client].authenticate(raw)
        except PeerError:
            return []
        return self._count(out, client, msg.number, replica,
                           (msg.seq, msg.position, msg.result, msg.outcome), msg.view,
                           msg.tentative, msg.speculative)

    def _count(self, out: _Out, client: int, number: int, replica: int,
               key: tuple[int, int, bytes, int], view: int, tentative: bool,
               speculative: bool) -> list[int]:
        """An authentic reply to an outstanding request: decided by the client's rule?"""
        outcome = key[3]
        out.note(replica, key, view, tentative, speculative)
        if not out.decides(key, self.n):
            if tentative and (retry := out.retry_at(key, self.f1, out.sent,
                                                    time.monotonic())) is not None:
                out.next_retry = min(out.next_retry, retry)
            return []
        now = time.monotonic()
        del self.out[(client, number)]
        if self.measuring and outcome == Outcome.EXECUTED:
            self.latencies.append(now - out.sent)
            self.committed_txs += out.txs
        if self.executed is not None and outcome == Outcome.EXECUTED:
            self.executed.add((self.client_ids[client], self.sessions[client], number))
        return [client]

    def _index(self, name: str) -> int:
        return self._by_name[name]

    def fill(self, outstanding: int, now: float) -> None:
        """A closed loop's start: `outstanding` requests from every client, sent."""
        for client in range(len(self.client_ids)):
            for _ in range(outstanding):
                self.send(client, now)
        self.flush()

    def step(self, wait_ms: int, refill: bool) -> None:
        """Take the replies that arrive within wait_ms; with `refill` (a closed loop),
        send each client whose request was decided its next one; retransmit what is due."""
        for client in self.receive(wait_ms):
            if refill:
                self.send(client, time.monotonic())
        self.flush()
        self.retransmit(time.monotonic())

    def retransmit(self, now: float) -> None:
        for out in self.out.values():
            if now >= out.next_retry:
                self.retransmissions += 1
                out.next_retry = now + 2.0
                for replica, sock in enumerate(self.socks):
                    if replica not in out.committed:
                        sock.send(out.frame, zmq.NOBLOCK, copy=False)


class BackgroundLoad:
    """A closed loop at saturation on a thread, beside a run that checks something else
    (`dtnbus chaos --load`): `clients` sessions with `outstanding` one-transaction
    requests each. Every request it saw executed is kept (`executed`) so the run can look
    for each in the ledgers."""

    def __init__(self, config: ClusterConfig, clients: int, outstanding: int = 32,
                 tx_bytes: int = 300) -> None:
        self.gen = LoadGenerator(config, load_client_ids(clients), tx_bytes, 1)
        self.gen.executed = set()
        self.outstanding = outstanding
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def start(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def _run(self) -> None:
        gen = self.gen
        try:
            gen.fill(self.outstanding, time.monotonic())
            while not self._stop.is_set():
                gen.step(5, refill=True)
        except Exception as exc:  # reported by the caller: the load is part of its run
            self.error = exc

    def stop(self) -> set[tuple[str, int, int]]:
        """Stop sending (once); the requests seen executed."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self.gen.close()
        assert self.gen.executed is not None
        return self.gen.executed


def load_client_ids(clients: int) -> list[str]:
    """The names `cluster_up(extra_clients=N)` gives the load generator's clients."""
    return [f"client-{k + 1}" for k in range(clients)]


def open_loop_due(next_send: float, now: float, interval: float) -> tuple[list[float], float,
                                                                          int]:
    """Open loop: the scheduled send times due by `now`, the next one, and how long to
    poll for replies (ms). A request's latency counts from its scheduled time, so a late
    sender cannot hide queueing (no coordinated omission); the poll is rounded up to a
    whole millisecond, because rounding down spun the generator on the nodes' cores
    whenever requests were due less than 1 ms apart."""
    due = []
    while next_send <= now:
        due.append(next_send)
        next_send += interval
    return due, next_send, max(1, min(math.ceil((next_send - now) * 1000), 5))


def run_bench(nodes: int = 4, clients: int = 16, request_txs: int = 1, seconds: float = 10.0,
              tx_bytes: int = 300, pipeline: int = 32, rate: float | None = None,
              warmup: float = 2.0, protocol: dict[str, Any] | None = None,
              directory: Path | None = None, scheme: str = "ed25519",
              authentication: str = "mac", durability: str = "fsync") -> BenchResult:
    """Start a cluster (not timed), load it for `warmup` + `seconds`, stop it."""
    if clients < 1 or nodes < 4 or seconds <= 0:
        raise LocalError("bench needs --clients >= 1, --nodes >= 4 and --seconds > 0")
    tmp = None
    if directory is None:
        tmp = tempfile.TemporaryDirectory(prefix="dtnbus-bench-")
        directory = Path(tmp.name)
    try:
        config = cluster_up(directory, nodes, scheme, protocol=protocol, fresh=True,
                            extra_clients=clients, durability=durability)
        try:
            result = _load(config, directory, clients, request_txs, seconds, tx_bytes,
                           pipeline, rate, warmup, authentication)
            return dataclasses.replace(result, durability=durability)
        finally:
            stop_nodes(directory)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _load(config: ClusterConfig, directory: Path, clients: int, request_txs: int,
          seconds: float, tx_bytes: int, pipeline: int, rate: float | None,
          warmup: float, authentication: str) -> BenchResult:
    gen = LoadGenerator(config, load_client_ids(clients), tx_bytes, request_txs)
    gen.authentication = authentication
    pids = list(running_pids(directory).values())
    try:
        start = time.monotonic()
        measure_at = start + warmup
        end = measure_at + seconds
        cpu0 = node0 = client0 = 0.0
        if rate is None:
            gen.fill(pipeline, start)
        next_send = start
        rr = 0
        while True:
            now = time.monotonic()
            if not gen.measuring and now >= measure_at:
                gen.measuring = True
                node0 = sum(_cpu_seconds(p) for p in pids)
                t = os.times()
                client0 = t.user + t.system
                cpu0 = now
            if now >= end:
                break
            if rate is not None:
                due, next_send, wait = open_loop_due(next_send, now, 1.0 / rate)
                for scheduled in due:
                    gen.send(rr % clients, scheduled)
                    rr += 1
                gen.flush()
            else:
                wait = 5
            gen.step(wait, refill=rate is None)
        elapsed = time.monotonic() - cpu0
        node_cpu = sum(_cpu_seconds(p) for p in pids) - node0
        t = os.times()
        client_cpu = t.user + t.system - client0
        gen.measuring = False
        drain_until = time.monotonic() + 10.0
        while gen.out and time.monotonic() < drain_until:  # let what was sent finish
            gen.receive(20)
            gen.retransmit(time.monotonic())
    finally:
        gen.close()
    lat = sorted(gen.latencies)
    cores = os.cpu_count() or 1

    def pct(p: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 3) if lat else None

    _, error = compare_ledgers([s.ledger for s in config.nodes])
    tx = gen.committed_txs
    return BenchResult(config.n, clients, request_txs, tx_bytes,
                       "open" if rate is not None else "closed", rate, tx, round(elapsed, 3),
                       round(tx / elapsed, 1), pct(0.5), pct(0.99), pct(0.999),
                       round(node_cpu / tx * 1e6, 1) if tx else None,
                       round(node_cpu / elapsed / cores, 3),
                       round(client_cpu / elapsed / cores, 3), gen.busy, gen.retransmissions,
                       error is None, error,
                       "MAC authenticators" if authentication == "mac" and gen.codecs[0].can_mac
                       else f"{config.scheme} signatures")
