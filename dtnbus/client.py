"""The client: submit requests to every replica, accept on f+1 matching replies.

It also measures what `dtnbus sync` reports, from the replies themselves: the time
until every request has f+1 matching replies (client-visible commit), until 2f+1
replicas have executed everything (the figure comparable with the reference), and
until all n have. A reply is sent only after its block is durable in the ledger.
"""

from __future__ import annotations

import os
import random
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import countOf

import zmq

from dtnbus.config import ClusterConfig
from dtnbus.curve import HandshakeWatch, connect_to
from dtnbus.errors import LocalError, PeerError
from dtnbus.messages import (
    Outcome,
    Reply,
    Request,
    Status,
    StatusQuery,
    commit_quorum,
    reply_quorum,
)
from dtnbus.metrics import ClientMetrics
from dtnbus.transport import waiting_frames
from dtnbus.wire import Codec, is_tagged


def new_session() -> int:
    """A session id that grows with time (milliseconds since the epoch, shifted) with 20
    random low bits: processes sharing one client key never share a session, in practice;
    if two ever did, the replicas refuse the second request under a taken identity
    (CONFLICT), never confuse them."""
    return ((time.time_ns() // 1_000_000) << 20) | secrets.randbits(20)


ReplyKey = tuple[int, int, bytes, int]  # (seq, position, block hash, outcome)

# how long a MAC-authenticating client signs everything it sends after a request of it
# needed a retransmission in the view it was sent in (`SignAfterRetry`)
SIGN_AFTER_RETRY = 30.0


@dataclass
class SignAfterRetry:
    """When a client that MAC-tags its requests signs one instead. A replica that saw our
    tag fail on a request the order needed (a faulty primary can make one up in our name,
    or a copy was spoiled on the way) orders none of our tagged requests for a while
    (`Replica._distrust`); a signature holds at every replica. So a request that went
    unanswered for the retransmission interval is sent again signed (`signs_retry`),
    and once such a request is accepted in the view it was first sent in (a distrusting
    primary, not a view change, held it up), everything we send for the next
    `SIGN_AFTER_RETRY` seconds is signed: a distrusting primary then costs us one
    retransmission every half minute, not one per request. A view change (a crashed
    primary) makes every client retransmit, and costs no signing window."""

    until: float = float("-inf")
    view: int = 0  # the highest view a reply named

    def saw(self, view: int) -> None:
        """A reply named this view."""
        if view > self.view:
            self.view = view

    def signs_new(self, now: float) -> bool:
        """Sign a new request instead of tagging it?"""
        return now < self.until

    @staticmethod
    def signs_retry(timed_out: bool, frame: bytes) -> bool:
        """Send this request again signed? Yes when it went unanswered (not when it waited
        for room: BUSY answers) and is still MAC-tagged."""
        return timed_out and is_tagged(frame)

    @classmethod
    def resend(cls, codec: Codec, frame: bytes, timed_out: bool) -> bytes:
        """What to send again (`signs_retry`): the same payload and digest, the same
        request, signed or as it was."""
        return codec.signed_request(frame) if cls.signs_retry(timed_out, frame) else frame

    def accepted(self, timed_out: bool, view_sent: int, now: float) -> None:
        """A request was accepted: after a retransmission for want of an answer, in the
        view it was first sent in, sign for a while."""
        if timed_out and self.view <= view_sent:
            self.until = now + SIGN_AFTER_RETRY


@dataclass(kw_only=True)
class Answers:
    """What each replica answered one request, filed where the client's rule looks: the
    one place every client (submit, stream, bench, simulator) decides."""

    committed: dict[int, ReplyKey] = field(default_factory=dict)  # replica -> durable answer
    tentative: dict[int, ReplyKey] = field(default_factory=dict)  # ... once prepared
    early: dict[int, tuple[int, ReplyKey]] = field(default_factory=dict)  # view, key: once
    # pre-prepared (speculative) or prepared (tentative)

    def note(self, replica: int, key: ReplyKey, view: int, tentative: bool,
             speculative: bool) -> bool:
        """File one authentic reply (a `Reply`'s fields) under its kind; False if it adds
        nothing (the replica said it before, or a speculative answer after its tentative
        one)."""
        if not tentative:
            if self.committed.get(replica) == key:
                return False
            self.committed[replica] = key
            return True
        early = (view, key)
        if speculative:
            if self.early.get(replica) == early or replica in self.tentative:
                return False
        elif self.tentative.get(replica) == key:
            return False
        else:
            self.tentative[replica] = key
        self.early[replica] = early
        return True

    def decides(self, key: ReplyKey, n: int) -> bool:
        """Does `key` meet the client's rule (`accepts`) yet?"""
        return accepts(key, self.committed, self.tentative, n, self.early)

    def promised(self, key: ReplyKey) -> int:
        """Replicas that prepared `key` but have not said it is committed."""
        return countOf(self.tentative.values(), key)

    def retry_at(self, key: ReplyKey, f1: int, sent: float, now: float) -> float | None:
        """When to ask again for committed answers: f+1 promised `key` (prepared it) but q
        have not, so a replica is slow or faulty and the promised ones hold the committed
        answer by then; None while fewer promised it."""
        return None if self.promised(key) < f1 else now + max(0.05, now - sent)


@dataclass
class _Pending(Answers):
    number: int
    digest: bytes  # what every reply must name
    frame: bytes
    txs: int
    first_sent: float
    next_retry: float
    retries: int = 0
    busy: set[int] = field(default_factory=set)  # replicas whose pool was full
    backing_off: bool = False
    backoff: float = 0.025
    accepted: ReplyKey | None = None
    accepted_at: float = 0.0
    view_sent: int = 0  # the highest view a reply named when it was first sent
    timed_out: bool = False  # sent again for want of an answer


def accepts(key: ReplyKey, committed: dict[int, ReplyKey], tentative: dict[int, ReplyKey],
            n: int, early: dict[int, tuple[int, ReplyKey]] | None = None) -> bool:
    """The client's rule: f+1 matching committed replies (one is from a correct replica that
    executed it), or a commit quorum of matching replies of any kind, each replica counted
    once with its committed answer if it gave one (q tentative replies prove a quorum
    prepared it, so every later view keeps it). A replica's tentative answer never counts
    as its committed one. The fast path (`early`: replica -> (view, key) of its speculative
    or tentative answer): all n replicas answered `key`, the early ones in one view (every
    correct replica accepted that PRE-PREPARE, so every later view keeps it)."""
    durable = countOf(committed.values(), key) if committed else 0
    if durable >= reply_quorum(n):
        return True
    if committed:  # a replica's committed answer stands for it, not its tentative one
        matching = durable + sum(1 for r, k in tentative.items()
                                 if k == key and r not in committed)
    else:  # (the usual case, counted in C: this runs for every reply a client takes)
        matching = countOf(tentative.values(), key)
    if matching >= commit_quorum(n):
        return True
    voters = early.keys() | committed.keys() if early else ()
    if len(voters) < n:
        return False
    return any(all(committed.get(r) == key or early.get(r) == (view, key) for r in voters)
               for view in {v for v, k in early.values() if k == key})


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """What one submission achieved; times are seconds from the first send (None: never)."""

    requests: int
    transactions: int
    seconds_f1: float | None  # every request decided: f+1 matching (or q tentative) replies
    seconds_2f1: float | None  # the client holds q matching replies for every request
    seconds_all: float | None  # ... from all n replicas
    replicas_done: int  # replicas that executed (committed) everything
    retransmissions: int
    mismatched_replies: int
    results: dict[int, tuple[int, bytes]]  # request number -> (seq, block hash): committed
    seconds_2f1_committed: float | None = None  # q replicas executed everything (durable)
    seconds_all_committed: float | None = None  # all n did
    refused: dict[str, int] = field(default_factory=dict)  # outcome name -> requests
    busy_answers: int = 0  # "pool full" answers received (we backed off and sent again)
    committed_txs: int = 0
    session: int = 0
    backed_off_seconds: float = 0.0  # waited because f+1 replicas had no room
    refused_txs: int = 0  # transactions in requests decided but not executed

    @property
    def decided(self) -> int:
        return len(self.results) + sum(self.refused.values())

    def summary(self) -> dict:
        """What this submission achieved, as plain data: what `dtnbus submit` prints and
        its --json carries, so the library and the command line say the same thing."""
        last = max(self.results.values()) if self.results else None
        return {
            "transactions": self.transactions, "requests": self.requests,
            "committed_txs": self.committed_txs, "committed_requests": len(self.results),
            "refused": dict(self.refused), "refused_txs": self.refused_txs,
            "undecided_requests": self.requests - self.decided,
            "undecided_txs": self.transactions - self.committed_txs - self.refused_txs,
            "retransmissions": self.retransmissions, "busy_answers": self.busy_answers,
            "backed_off_s": round(self.backed_off_seconds, 3), "seconds": self.seconds_f1,
            "last_seq": last[0] if last else None, "head": last[1].hex() if last else None,
        }


def check_frame_size(frame: bytes, index: int, txs: Sequence[bytes], limit: int) -> None:
    """Refuse, before anything is sent, a request the nodes could never take: libzmq
    drops a frame over its size cap unseen, so the client would only wait and time out."""
    if len(frame) <= limit:
        return
    mib = f"{limit / 2**20:g} MiB"
    biggest = max((len(t) for t in txs), default=0)
    per_tx = len(frame) / max(1, len(txs))
    fits = int(limit * 0.99 // per_tx)
    if fits < 1:
        raise LocalError(f"a transaction of {biggest:,} bytes does not fit in the {mib} "
                         "frame limit of a request; split it into smaller transactions")
    raise LocalError(f"request {index + 1} is {len(frame):,} bytes ({len(txs)} transactions), "
                     f"over the {mib} frame limit; send at most {fits} transactions of this "
                     f"size per request (--request-txs {fits})")


class Client:
    """One client session: a client identity (its key) with a session of its own and a
    DEALER connection to every replica. Requests are numbered 1, 2, 3, ... in the session."""

    def __init__(self, config: ClusterConfig, client_id: str | None = None,
                 session: int | None = None, next_number: int = 1,
                 authentication: str = "mac") -> None:
        """`authentication`: "mac" (PBFT's authenticator: a tag for each replica, ~1 us;
        Ed25519 clusters) or "signature" (a client signature any third party can check).
        Replicas accept both; replies come back MAC-authenticated when they can."""
        if authentication not in ("mac", "signature"):
            raise LocalError(f"authentication must be 'mac' or 'signature', got "
                             f"{authentication!r}")
        spec = config.client(client_id)
        self.authentication = authentication
        self.signing = SignAfterRetry()
        self.session = new_session() if session is None else session
        self.next_number = next_number
        self.config = config
        self.id = spec.id
        self.codec = Codec(config.client_signer(spec.id), config.replica_verifiers(),
                           config.client_verifiers())
        curve = None
        if config.curve is not None:
            local = config.local_curve_key(spec.id)
            curve = config.curve.client_end(spec.id, local)
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
        self._nonce = time.time_ns()

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

    def request(self, txs: tuple[bytes, ...]) -> tuple[int, bytes, bytes]:
        """Number and sign the next request: (number, request digest, frame)."""
        number = self.next_number
        self.next_number += 1
        authentication = ("signature" if self.signing.signs_new(time.monotonic())
                          else self.authentication)
        frame, digest = self.codec.encode_request(Request(self.id, self.session, number,
                                                          tuple(txs)), authentication)
        return number, digest, frame

    def resend_frame(self, frame: bytes, timed_out: bool) -> bytes:
        """What to send again (`SignAfterRetry.resend`)."""
        return self.signing.resend(self.codec, frame, timed_out)

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
            for frame in waiting_frames(sock):
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
               on_progress: Callable[[int, int], None] | None = None,
               window: int | None = None,
               on_tick: Callable[[int, int, dict[int, int]], None] | None = None,
               ) -> SubmitResult:
        """Send each request (a tuple of transactions) to every replica, at most `window`
        outstanding at once (None: all at once); return when all are decided (f+1 matching
        committed replies, or q matching of any kind), or also when q / all n executed them
        (within `wait_all` seconds more), or at `timeout`. A replica whose pool is full
        answers BUSY: once f+1 have, the request cannot be ordered now, so we back off
        (exponentially with jitter, from 50 ms to 1 s) and send it again, and halve how
        many requests we keep outstanding (growing it back by one per decision, as TCP
        does); the result says how long we waited. A
        request over the frame limit is refused before anything is sent. `on_tick(decided,
        total, replies per replica)` is called each turn of the wait loop (at least every
        50 ms), for a progress display."""
        start = time.monotonic()
        pending: dict[int, _Pending] = {}
        for index, txs in enumerate(requests):
            number, digest, frame = self.request(tuple(txs))
            check_frame_size(frame, index, txs, self.codec.max_frame)
            pending[number] = _Pending(number, digest, frame, len(txs), start, start)
        return self._collect(pending, start, timeout, wait_all, retry_after, on_progress,
                             window or len(pending) or 1, on_tick)

    def _first_send(self, p: _Pending, now: float, retry_after: float) -> None:
        arrived = max(self._send(replica, p.frame, now) for replica in self.sockets)
        # the retransmission clock starts when the request is there, not when it was
        # queued behind the others on a slow emulated link
        p.first_sent = now
        p.next_retry = arrived + retry_after
        p.view_sent = self.signing.view
        self.metrics.request_sent()

    def _collect(self, pending: dict[int, _Pending], start: float, timeout: float,
                 wait_all: float, retry_after: float,
                 on_progress: Callable[[int, int], None] | None, window: int,
                 on_tick: Callable[[int, int, dict[int, int]], None] | None = None,
                 ) -> SubmitResult:
        n, q2, f1 = self.config.n, commit_quorum(self.config.n), reply_quorum(self.config.n)
        replied = dict.fromkeys(self.sockets, 0)  # requests each replica answered
        executed = dict.fromkeys(self.sockets, 0)  # ... with a committed (durable) answer
        t_f1 = t_2f1 = t_all = t_2f1_done = t_all_done = None
        decided = retransmissions = mismatched = busy_answers = 0
        backed_off = 0.0
        deadline = start + timeout
        all_deadline = deadline
        total = len(pending)
        unsent = list(pending.values())  # request-major: every replica gets #1 first
        unsent.reverse()
        outstanding = 0
        inflight: dict[int, _Pending] = {}
        next_scan = 0.0
        allowed = float(window)  # AIMD: halved by f+1 BUSY answers, +1 per decision
        while True:
            now = time.monotonic()
            while unsent and outstanding < allowed:
                p = unsent.pop()
                self._first_send(p, now, retry_after)
                inflight[p.number] = p
                outstanding += 1
            self._release(now)
            for replica, msg in self._receive(self._wait(min(deadline, all_deadline))):
                if not isinstance(msg, Reply) or msg.client != self.id \
                        or msg.session != self.session:
                    continue
                p = pending.get(msg.number)
                if p is None or msg.request != p.digest:
                    mismatched += 1  # never another request's answer
                    continue
                if msg.outcome == Outcome.BUSY:
                    busy_answers += 1
                    p.busy.add(replica)
                    if len(p.busy) >= f1 and p.accepted is None and not p.backing_off:
                        # f+1 replicas have no room: it cannot be ordered now; wait, and
                        # keep fewer requests outstanding
                        p.backing_off = True
                        p.backoff = min(1.0, max(0.05, 2 * p.backoff))
                        wait = p.backoff * random.uniform(0.5, 1.0)
                        p.next_retry = time.monotonic() + wait
                        backed_off += wait
                        allowed = max(1.0, allowed / 2)
                    continue
                self.signing.saw(msg.view)
                key: ReplyKey = (msg.seq, msg.position, msg.result, msg.outcome)
                first = replica not in p.committed and replica not in p.early
                if not p.note(replica, key, msg.view, msg.tentative, msg.speculative):
                    continue
                if first:
                    replied[replica] += 1
                if not msg.tentative:
                    executed[replica] += 1
                p.busy.discard(replica)
                now = time.monotonic()
                if p.accepted is None and msg.tentative and \
                        (retry := p.retry_at(key, f1, p.first_sent, now)) is not None:
                    p.next_retry = min(p.next_retry, retry)
                if p.accepted is None and p.decides(key, n):
                    p.accepted, p.accepted_at = key, now
                    self.signing.accepted(p.timed_out, p.view_sent, now)
                    decided += 1
                    outstanding -= 1
                    allowed = min(float(window), allowed + 1)
                    self.metrics.request_accepted(now - p.first_sent)
                    if on_progress:
                        on_progress(decided, total)
                    if decided == total:
                        t_f1 = now - start
                        all_deadline = min(deadline, now + wait_all)
                answered = sum(1 for c in replied.values() if c == total)
                done = sum(1 for c in executed.values() if c == total)
                # a speculative answer is no decision on its own: q answers count once the
                # client decided (on the fast path it then holds all n)
                if t_2f1 is None and answered >= q2 and decided == total:
                    t_2f1 = now - start
                if t_all is None and answered == n and decided == total:
                    t_all = now - start
                if t_2f1_done is None and done >= q2:
                    t_2f1_done = now - start
                if t_all_done is None and done == n:
                    t_all_done = now - start
            if on_tick is not None:
                on_tick(decided, total, replied)
            now = time.monotonic()
            if t_f1 is not None and (t_all_done is not None or now >= all_deadline
                                     or (wait_all == 0.0)):
                break
            if now >= deadline:
                break
            if now >= next_scan:  # sent, not yet decided, and due: send again
                next_scan = now + 0.01
                for p in [p for p in inflight.values() if p.accepted is not None]:
                    del inflight[p.number]
                for p in inflight.values():
                    if now >= p.next_retry:
                        self._retransmit(p, now, retry_after)
                        retransmissions += 1
        results: dict[int, tuple[int, bytes]] = {}
        refused: dict[str, int] = {}
        committed_txs = refused_txs = 0
        for p in pending.values():
            if p.accepted is None:
                continue
            mismatched += sum(1 for k in {**p.tentative, **p.committed}.values()
                              if k != p.accepted)
            seq, _pos, result, outcome = p.accepted
            if outcome == Outcome.EXECUTED:
                results[p.number] = (seq, result)
                committed_txs += p.txs
            else:
                name = Outcome.NAMES.get(outcome, str(outcome))
                refused[name] = refused.get(name, 0) + 1
                refused_txs += p.txs
        return SubmitResult(total, sum(p.txs for p in pending.values()), t_f1, t_2f1, t_all,
                            sum(1 for c in executed.values() if c == total),
                            retransmissions, mismatched, results, t_2f1_done, t_all_done,
                            refused, busy_answers, committed_txs, self.session, backed_off,
                            refused_txs)

    def _retransmit(self, p: _Pending, now: float, retry_after: float) -> None:
        """Send a request again to the replicas that have not answered it (and those that
        were too busy to take it), backing off so a loaded cluster is not flooded."""
        p.retries += 1
        self.metrics.request_retransmitted()
        # a replica that answered tentatively holds the committed answer by now: ask it too
        targets = [r for r in self.sockets if r not in p.committed]
        p.timed_out = p.timed_out or not p.backing_off
        p.frame = self.resend_frame(p.frame, not p.backing_off)
        arrived = max((self._send(r, p.frame, now) for r in targets), default=now)
        if p.backing_off:
            p.backing_off = False
            p.busy.clear()
            p.next_retry = arrived + retry_after
        else:
            p.next_retry = arrived + min(60.0, retry_after * 2 ** p.retries)

    # ------------------------------------------------------------ status

    def status(self, timeout: float = 2.0) -> dict[int, Status]:
        """Ask every replica for its status; those that answer within `timeout`."""
        self._nonce += 1
        nonce = self._nonce
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
