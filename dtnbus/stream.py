"""A client session that keeps requests flowing, for fault runs (chaos, floods).

`Client.submit` answers "how long does this set of requests take"; a fault run asks
something else: while nodes die and peers misbehave, which requests did the client see
acknowledged, when, and how long did each take? `RequestStream` keeps requests flowing
(closed loop: at most `window` outstanding; or open loop: `rate` new requests per
second whatever the answers, to offer more than the cluster can take) and records one
`Ack` per request: when it was first sent, when the client's acceptance rule
(`client.accepts`: f+1 matching committed replies, or a commit quorum of matching ones,
tentative replies included) was met, where it was ordered, and how many
replicas answered BUSY. It runs in its own thread (`start`/`stop`); its sockets are
used by that thread only.

A request that is not accepted within `retry_after` is sent again to the replicas that
have not answered it, with the wait doubling up to `MAX_RETRY` (as `Client.submit`
does: an overloaded cluster is not flooded with copies); f+1 BUSY answers make it wait
(doubling from 50 ms to 5 s) before it is sent again. Nothing here decides what a fault
run concludes: the caller compares the acknowledgements with the ledgers.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from dtnbus.client import Answers, Client, ReplyKey
from dtnbus.config import ClusterConfig
from dtnbus.errors import PeerError
from dtnbus.messages import Outcome, Reply, reply_quorum
from dtnbus.transport import waiting_frames

BUSY_BACKOFF = (0.05, 5.0)  # first and longest wait after f+1 BUSY answers
MAX_RETRY = 8.0  # longest wait between two sends of a request nobody answered


@dataclass
class Ack(Answers):
    """One request of the stream and what became of it."""

    number: int
    digest: bytes
    frame: bytes
    txs: int
    sent: float  # first send (time.monotonic)
    next_retry: float
    retries: int = 0
    busy: set[int] = field(default_factory=set)  # replicas whose last answer was BUSY
    busy_answers: int = 0
    backing_off: bool = False
    backoff: float = BUSY_BACKOFF[0] / 2
    accepted: float | None = None  # when the client's acceptance rule was met
    key: ReplyKey | None = None  # (seq, position, block hash, outcome) accepted
    view_sent: int = 0  # the highest view a reply named when it was sent (SignAfterRetry)
    timed_out: bool = False  # sent again for want of an answer

    @property
    def latency(self) -> float | None:
        return None if self.accepted is None else self.accepted - self.sent

    @property
    def executed(self) -> bool:
        return self.key is not None and self.key[3] == Outcome.EXECUTED


class RequestStream:
    """Requests of `request_txs` transactions of `tx_bytes` bytes, numbered in one session.

    `window`: closed loop, at most this many outstanding. `rate`: open loop, this many new
    requests per second (and `window` is then the most kept outstanding before new ones
    are no longer offered, a memory bound for the client, not a courtesy to the cluster).
    """

    def __init__(self, config: ClusterConfig, window: int = 8, rate: float | None = None,
                 request_txs: int = 1, tx_bytes: int = 100, retry_after: float = 1.0,
                 client_id: str | None = None, tag: int = 0,
                 capture: Callable[[bytes], None] | None = None) -> None:
        self.config = config
        self.window = window
        self.rate = rate
        self.request_txs = request_txs
        self.tx_bytes = max(12, tx_bytes)
        self.retry_after = retry_after
        self.client_id = client_id
        self.tag = tag  # makes transactions of parallel streams distinct
        self.capture = capture  # sees every frame received, as it came (fuzz corpora)
        self.acks: dict[int, Ack] = {}
        self.accept_times: list[float] = []  # acceptance moments, in order (append-only)
        self.busy_answers = 0
        self.contradictions = 0  # committed replies that differ from an accepted answer
        self.offered = 0
        self.skipped = 0  # open loop: due but not sent, `window` being full
        self.session = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._drain = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # ------------------------------------------------------------ control

    def start(self) -> RequestStream:
        self._thread = threading.Thread(target=self._run, name="request-stream", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop_offering(self) -> None:
        """Offer nothing new from now on; requests already sent are still followed up."""
        self._drain.set()

    def drain(self, timeout: float) -> int:
        """Offer nothing new; wait (bounded) until every request sent is accepted. Returns
        how many are still not accepted."""
        self._drain.set()
        deadline = time.monotonic() + timeout
        while self.outstanding() and time.monotonic() < deadline and self.alive():
            time.sleep(0.05)  # the stream thread owns the sockets: poll its progress
        return self.outstanding()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------ views (any thread)

    def outstanding(self) -> int:
        return sum(1 for a in list(self.acks.values()) if a.accepted is None)

    def accepted(self) -> list[Ack]:
        return [a for a in list(self.acks.values()) if a.accepted is not None]

    def accepted_count(self) -> int:
        return len(self.accept_times)

    # ------------------------------------------------------------ the loop

    def _run(self) -> None:
        try:
            with Client(self.config, self.client_id) as client:
                self.session = client.session
                self._ready.set()
                self._loop(client)
        except BaseException as exc:  # reported to the caller, who decides
            self.error = exc
            self._ready.set()

    def _loop(self, client: Client) -> None:
        n = self.config.n
        f1 = reply_quorum(n)
        filler = bytes(self.tx_bytes - 12)
        counter = 0
        start = time.monotonic()
        open_: list[Ack] = []
        next_scan = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if not self._drain.is_set():
                due = self.window - len(open_)
                if self.rate is not None:
                    owed = int((now - start) * self.rate) - self.offered - self.skipped
                    due = min(owed, max(0, due))
                    self.skipped += max(0, owed - due)
                for _ in range(max(0, due)):
                    txs = []
                    for _ in range(self.request_txs):
                        counter += 1
                        txs.append(self.tag.to_bytes(4, "big") + counter.to_bytes(8, "big")
                                   + filler)
                    number, digest, frame = client.request(tuple(txs))
                    ack = Ack(number, digest, frame, len(txs), now, now + self.retry_after,
                              view_sent=client.signing.view)
                    self.acks[number] = ack
                    open_.append(ack)
                    self.offered += 1
                    for sock in client.sockets.values():
                        _send(sock, frame)
            for replica, msg in _receive(client, 0.005 if self.rate else 0.02, self.capture):
                if msg.client != client.id or msg.session != client.session:
                    continue
                ack = self.acks.get(msg.number)
                if ack is None or msg.request != ack.digest:
                    continue
                if ack.accepted is not None:
                    if not msg.tentative and msg.outcome != Outcome.BUSY and ack.key != \
                            (msg.seq, msg.position, msg.result, msg.outcome):
                        self.contradictions += 1  # a durable answer unlike the accepted one
                    continue
                if msg.outcome == Outcome.BUSY:
                    self.busy_answers += 1
                    ack.busy_answers += 1
                    ack.busy.add(replica)
                    if len(ack.busy) >= f1 and not ack.backing_off:
                        # f+1 replicas have no room: it cannot be ordered now; wait
                        ack.backing_off = True
                        ack.backoff = min(BUSY_BACKOFF[1], 2 * ack.backoff)
                        ack.next_retry = time.monotonic() + ack.backoff
                    continue
                client.signing.saw(msg.view)
                key: ReplyKey = (msg.seq, msg.position, msg.result, msg.outcome)
                ack.note(replica, key, msg.view, msg.tentative, msg.speculative)
                ack.busy.discard(replica)
                if msg.tentative and (retry := ack.retry_at(key, f1, ack.sent,
                                                            time.monotonic())) is not None:
                    ack.next_retry = min(ack.next_retry, retry)
                if ack.decides(key, n):
                    ack.accepted = time.monotonic()
                    ack.key = key
                    client.signing.accepted(ack.timed_out, ack.view_sent, ack.accepted)
                    self.accept_times.append(ack.accepted)
            now = time.monotonic()
            if now >= next_scan:
                next_scan = now + 0.02
                open_ = [a for a in open_ if a.accepted is None]
                for ack in open_:
                    if now >= ack.next_retry:
                        self._retransmit(client, ack, now)

    def _retransmit(self, client: Client, ack: Ack, now: float) -> None:
        ack.retries += 1
        ack.timed_out = ack.timed_out or not ack.backing_off
        ack.frame = client.resend_frame(ack.frame, not ack.backing_off)
        for replica, sock in client.sockets.items():
            if replica not in ack.committed:  # a tentative answer: its committed one now
                _send(sock, ack.frame)
        if ack.backing_off:  # it waited for room: send it again soon if still none
            ack.next_retry = now + self.retry_after
        else:
            ack.next_retry = now + min(MAX_RETRY, self.retry_after * 2 ** ack.retries)
        ack.backing_off = False
        ack.busy.clear()


def _send(sock: zmq.Socket, frame: bytes) -> None:
    """Queue a frame for one replica; a full queue (a replica down for long) drops it: the
    request is sent again at its next retry."""
    with contextlib.suppress(zmq.Again):
        sock.send(frame, zmq.NOBLOCK, copy=len(frame) < 65536)


def _receive(client: Client, timeout: float,
             capture: Callable[[bytes], None] | None) -> list[tuple[int, Reply]]:
    out = []
    for sock, _ in client.poller.poll(max(0, int(timeout * 1000))):
        for frame in waiting_frames(sock):
            if capture is not None:
                capture(frame)
            try:
                env = client.codec.decode(frame)
            except PeerError:
                continue
            if isinstance(env.msg, Reply):
                out.append((env.msg.replica, env.msg))
    return out


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100), nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]
