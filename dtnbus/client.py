"""The client: submit requests to every replica, accept on f+1 matching replies.

It also measures what `dtnbus sync` reports, from the replies themselves: the time
until every request has f+1 matching replies (client-visible commit), until 2f+1
replicas have executed everything (the figure comparable with the reference), and
until all n have. A reply is sent only after its block is durable in the ledger.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import zmq

from dtnbus.config import ClusterConfig
from dtnbus.curve import HandshakeWatch, connect_to
from dtnbus.errors import LocalError, PeerError
from dtnbus.messages import Reply, Request, Status, StatusQuery, commit_quorum, reply_quorum
from dtnbus.metrics import ClientMetrics
from dtnbus.wire import Codec


@dataclass
class _Pending:
    timestamp: int
    frame: bytes
    first_sent: float
    next_retry: float
    retries: int = 0
    replies: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # first, any kind
    committed: set[int] = field(default_factory=set)  # replicas whose committed reply came
    accepted: tuple[int, bytes] | None = None
    accepted_at: float = 0.0


def accepts(key: tuple[int, bytes], replies: dict[int, tuple[int, bytes]],
            committed: set[int], n: int) -> bool:
    """The client's rule: f+1 matching committed replies (one is from a correct replica
    that executed it), or a commit quorum of matching replies of any kind (tentative ones
    prove a quorum prepared it, so every later view keeps it)."""
    durable = sum(1 for r in committed if replies.get(r) == key)
    matching = sum(1 for r in replies.values() if r == key)
    return durable >= reply_quorum(n) or matching >= commit_quorum(n)


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """What one submission achieved; times are seconds from the first send (None: never)."""

    requests: int
    transactions: int
    seconds_f1: float | None  # every request accepted: f+1 matching (or q tentative) replies
    seconds_2f1: float | None  # the client holds q matching replies for every request
    seconds_all: float | None  # ... from all n replicas
    replicas_done: int  # replicas that executed (committed) everything
    retransmissions: int
    mismatched_replies: int
    results: dict[int, tuple[int, bytes]]  # timestamp -> (seq, block hash) accepted
    seconds_2f1_committed: float | None = None  # q replicas executed everything (durable)
    seconds_all_committed: float | None = None  # all n did


class Client:
    """One client identity with a DEALER connection to every replica."""

    def __init__(self, config: ClusterConfig, client_id: str | None = None) -> None:
        spec = config.client(client_id)
        self.config = config
        self.id = spec.id
        self.codec = Codec(config.signer(spec.key_file, f"client {spec.id}"),
                           config.replica_verifiers(), config.client_verifiers())
        curve = config.curve.client_end(spec.id) if config.curve is not None else None
        self.ctx = zmq.Context()
        self.sockets: dict[int, zmq.Socket] = {}
        self.poller = zmq.Poller()
        token = secrets.token_hex(4)  # a fresh identity per Client: a ROUTER refuses a
        # second connection under an identity it still holds (even from this process)
        for node in config.nodes:
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 1_000_000)
            sock.setsockopt(zmq.RCVHWM, 1_000_000)
            sock.setsockopt(zmq.IDENTITY, f"{spec.id}-{os.getpid()}-{token}-{node.id}".encode())
            if curve is None:
                sock.connect(node.router)
            else:
                connect_to(sock, curve, node.id, node.router)
            self.sockets[node.id] = sock
            self.poller.register(sock, zmq.POLLIN)
        self.handshakes = HandshakeWatch(self.sockets) if curve is not None else None
        self.shaper = config.shaper(spec.id)  # a client's links are shaped like a node's
        self.metrics = ClientMetrics()
        self._clock = time.time_ns() // 1000  # µs since the epoch: grows across restarts

    def close(self) -> None:
        if self.handshakes is not None:
            self.handshakes.close()
        for sock in self.sockets.values():
            sock.close(linger=0)
        self.ctx.term()

    def refused_by(self) -> str | None:
        """Why nodes refused our CURVE handshake, as one sentence (None: none did)."""
        return self.handshakes.summary() if self.handshakes is not None else None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ sending

    def _timestamp(self) -> int:
        self._clock = max(self._clock + 1, time.time_ns() // 1000)
        return self._clock

    def _send(self, replica: int, frame: bytes, now: float) -> float:
        """Send (or queue on the emulated link); return when it will have arrived."""
        if self.shaper is not None and not self.shaper.is_unshaped(replica):
            return self.shaper.submit(now, replica, len(frame), frame)
        _send_nowait(self.sockets[replica], frame)
        return now

    def _release(self, now: float) -> None:
        if self.shaper is not None:
            for replica, frame in self.shaper.pop_due(now):
                _send_nowait(self.sockets[replica], frame)

    def _receive(self, timeout: float) -> list[tuple[int, object]]:
        """Authenticated messages that arrived within `timeout` seconds, as (replica, msg)."""
        out = []
        for sock, _ in self.poller.poll(max(0, int(timeout * 1000))):
            while True:
                try:
                    frame = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    env = self.codec.decode(frame)
                except PeerError:
                    continue
                if isinstance(env.msg, Reply | Status):
                    out.append((env.msg.replica, env.msg))
        return out

    def _wait(self, deadline: float) -> float:
        now = time.monotonic()
        until = deadline
        if self.shaper is not None:
            due = self.shaper.next_due()
            if due is not None:
                until = min(until, due)
        return max(0.0, min(until - now, 0.05))

    # ------------------------------------------------------------ requests

    def submit(self, requests: Sequence[tuple[bytes, ...]], timeout: float = 60.0,
               wait_all: float = 0.0, retry_after: float = 2.0,
               on_progress: Callable[[int, int], None] | None = None) -> SubmitResult:
        """Send each request (a tuple of transactions) to every replica; return when all
        have f+1 matching replies, or also 2f+1 / all n executed them (within `wait_all`
        seconds more), or at `timeout`."""
        n, q2 = self.config.n, commit_quorum(self.config.n)
        start = time.monotonic()
        pending: dict[int, _Pending] = {}
        for txs in requests:
            ts = self._timestamp()
            frame = self.codec.encode(Request(self.id, ts, tuple(txs)))
            pending[ts] = _Pending(ts, frame, start, start + retry_after)
        for p in pending.values():  # request-major: every replica gets request 1 first
            arrived = max(self._send(replica, p.frame, start) for replica in self.sockets)
            # the retransmission clock starts when the request is there, not when it was
            # queued behind the others on a slow emulated link
            p.next_retry = arrived + retry_after
            self.metrics.request_sent()
        replied = dict.fromkeys(self.sockets, 0)  # requests each replica answered
        executed = dict.fromkeys(self.sockets, 0)  # ... with a committed (durable) reply
        t_f1 = t_2f1 = t_all = t_2f1_done = t_all_done = None
        accepted = retransmissions = mismatched = 0
        deadline = start + timeout
        all_deadline = deadline
        total = len(pending)
        while True:
            now = time.monotonic()
            self._release(now)
            for replica, msg in self._receive(self._wait(min(deadline, all_deadline))):
                if not isinstance(msg, Reply) or msg.client != self.id:
                    continue
                p = pending.get(msg.timestamp)
                if p is None:
                    continue
                key = (msg.seq, msg.result)
                fresh = replica not in p.replies
                if fresh:
                    p.replies[replica] = key
                    replied[replica] += 1
                if not msg.tentative and replica not in p.committed:
                    p.committed.add(replica)
                    executed[replica] += 1
                elif not fresh:
                    continue
                now = time.monotonic()
                if p.accepted is None and accepts(key, p.replies, p.committed, n):
                    p.accepted, p.accepted_at = key, now
                    accepted += 1
                    self.metrics.request_accepted(now - p.first_sent)
                    if on_progress:
                        on_progress(accepted, total)
                    if accepted == total:
                        t_f1 = now - start
                        all_deadline = min(deadline, now + wait_all)
                answered = sum(1 for c in replied.values() if c == total)
                done = sum(1 for c in executed.values() if c == total)
                if t_2f1 is None and answered >= q2:
                    t_2f1 = now - start
                if t_all is None and answered == n:
                    t_all = now - start
                if t_2f1_done is None and done >= q2:
                    t_2f1_done = now - start
                if t_all_done is None and done == n:
                    t_all_done = now - start
            now = time.monotonic()
            if t_f1 is not None and (t_all_done is not None or now >= all_deadline
                                     or (wait_all == 0.0)):
                break
            if now >= deadline:
                break
            for p in pending.values():
                if p.accepted is None and now >= p.next_retry:
                    retransmissions += 1
                    p.retries += 1
                    self.metrics.request_retransmitted()
                    # only replicas that have not answered it need it again
                    arrived = max((self._send(replica, p.frame, now)
                                   for replica in self.sockets if replica not in p.replies),
                                  default=now)
                    # back off: a loaded cluster must not be flooded with copies
                    p.next_retry = arrived + min(60.0, retry_after * 2 ** p.retries)
        for p in pending.values():
            if p.accepted is not None:
                mismatched += sum(1 for r in p.replies.values() if r != p.accepted)
        results = {ts: p.accepted for ts, p in pending.items() if p.accepted is not None}
        return SubmitResult(total, sum(len(t) for t in requests), t_f1, t_2f1, t_all,
                            sum(1 for c in executed.values() if c == total),
                            retransmissions, mismatched, results, t_2f1_done, t_all_done)

    # ------------------------------------------------------------ status

    def status(self, timeout: float = 2.0) -> dict[int, Status]:
        """Ask every replica for its status; those that answer within `timeout`."""
        nonce = self._timestamp()
        frame = self.codec.encode(StatusQuery(self.id, nonce))
        for sock in self.sockets.values():
            _send_nowait(sock, frame)  # status is control traffic: never shaped
        answers: dict[int, Status] = {}
        deadline = time.monotonic() + timeout
        while len(answers) < self.config.n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for replica, msg in self._receive(min(left, 0.05)):
                if isinstance(msg, Status) and msg.nonce == nonce:
                    answers[replica] = msg
        return answers

    def wait_ready(self, timeout: float = 30.0, nodes: int | None = None) -> dict[int, Status]:
        """Poll status until `nodes` (default: all) report ready: every PUB/SUB link is up."""
        want = self.config.n if nodes is None else nodes
        deadline = time.monotonic() + timeout
        answers: dict[int, Status] = {}
        while time.monotonic() < deadline:
            # a node that said ready stays counted: with 100 busy nodes starting up, one
            # round of status answers rarely holds them all
            fresh = self.status(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
            answers.update({r: s for r, s in fresh.items() if s.ready or r not in answers})
            if sum(1 for s in answers.values() if s.ready) >= want:
                return answers
        ready = sorted(r for r, s in answers.items() if s.ready)
        raise LocalError(f"cluster not ready after {timeout:.0f}s: ready nodes {ready} of "
                         f"{self.config.n}; see the node logs")


def _send_nowait(sock: zmq.Socket, frame: bytes) -> bool:
    """Send without blocking; False if the frame could not be queued. A DEALER whose
    only connection was refused (a CURVE key the node does not admit) has no peer, and
    a blocking send would then hang forever; the retransmission timer tries again."""
    try:
        sock.send(frame, zmq.NOBLOCK, copy=len(frame) < 65536)
    except zmq.Again:
        return False
    return True
