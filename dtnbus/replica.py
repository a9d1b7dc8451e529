"""The PBFT replica: a pure state machine (no sockets, no clock, no disk).

Input: authenticated envelopes (`step`) and the passage of time (`tick`), both with
`now` given by the caller. Output: a list of effects (plain data) that the node, or
a simulator, carries out in order. Same state + same input = same output.

Normal case (Castro & Liskov, with requests sent by the client to every replica and
PRE-PREPAREs that order request digests, so payload crosses the critical path once):

    request -> PRE-PREPARE (primary = view mod n) -> PREPARE (a backup holds the
    bodies) -> prepared: PRE-PREPARE + 2f matching PREPAREs -> COMMIT ->
    committed-local: 2f+1 matching COMMITs -> execute in sequence order -> REPLY

Early messages (a PREPARE before its PRE-PREPARE, a COMMIT before prepared) are
kept per slot, bounded by the watermark window and one vote per replica. Views are
carried everywhere; view change itself is not implemented yet (see docs/protocol.md).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from dtnbus.messages import (
    GENESIS,
    Checkpoint,
    Commit,
    Fetch,
    Message,
    Prepare,
    PrePrepare,
    Reply,
    Request,
    batch_digest,
    block_hash,
    commit_quorum,
    max_faulty,
    prepare_quorum,
    primary_of,
)
from dtnbus.wire import Envelope

# ---------------------------------------------------------------- effects


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send to every other replica."""

    msg: Message


@dataclass(frozen=True, slots=True)
class Send:
    """Send to one replica."""

    to: int
    msg: Message


@dataclass(frozen=True, slots=True)
class Forward:
    """Pass a client's signed request frame, unchanged, to one replica (answers a Fetch)."""

    to: int
    frame: bytes


@dataclass(frozen=True, slots=True)
class SendClient:
    client: str
    msg: Reply


@dataclass(frozen=True, slots=True)
class ExecutedRequest:
    client: str
    timestamp: int
    digest: bytes
    frame: bytes
    txs: int


@dataclass(frozen=True, slots=True)
class Execute:
    """Append one block to the ledger; must be durable before the replies that follow it."""

    seq: int
    view: int
    digest: bytes
    prev_hash: bytes
    hash: bytes
    digests: tuple[bytes, ...]  # everything the PRE-PREPARE ordered (`digest` hashes these)
    requests: tuple[ExecutedRequest, ...]  # what was executed (replays skipped)
    committed_at: float


@dataclass(frozen=True, slots=True)
class Observe:
    """A phase latency, measured on the caller's clock (`now`), once per batch."""

    phase: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Drop:
    """A message that was authentic but not acceptable, and why (for the drop counters)."""

    reason: str


@dataclass(frozen=True, slots=True)
class CheckpointStable:
    seq: int


Effect = (
    Broadcast | Send | Forward | SendClient | Execute | Observe | Drop | CheckpointStable
)

# ---------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    """Protocol parameters; every replica of a cluster must use the same ones."""

    replica_id: int
    n: int
    batch_max_txs: int = 4096  # the primary cuts a batch at this many transactions...
    batch_max_requests: int = 1024
    batch_delay: float = 0.002  # ...or when its oldest request waited this long...
    pipeline: int = 4  # ...or at once when fewer batches than this are in flight
    window: int = 256  # high watermark = stable checkpoint + window
    checkpoint_interval: int = 64
    retransmit_after: float = 1.0
    fetch_after: float = 0.25  # wait this long for a client's own copy before fetching
    max_requests: int = 200_000  # bound on request bodies held (the pool)
    reply_cache: int = 100_000
    client_horizon: int = 1_000_000  # timestamps older than a client's newest minus this are stale

    def __post_init__(self) -> None:
        if self.n < 1 or not 0 <= self.replica_id < self.n:
            raise ValueError(f"replica id {self.replica_id} is not in 0..{self.n - 1}")
        if self.checkpoint_interval < 1 or self.window < 2 * self.checkpoint_interval:
            raise ValueError("window must be at least twice the checkpoint interval")
        if min(self.batch_max_txs, self.batch_max_requests, self.pipeline) < 1:
            raise ValueError("batch sizes and pipeline depth must be positive")


# ---------------------------------------------------------------- state


@dataclass(slots=True)
class _Pooled:
    msg: Request
    frame: bytes
    arrived: float
    seq: int = 0  # the sequence that ordered it, once assigned


@dataclass(slots=True)
class _Slot:
    seq: int
    view: int = 0
    preprepare: PrePrepare | None = None
    digest: bytes = b""
    prepares: dict[int, bytes] = field(default_factory=dict)
    commits: dict[int, bytes] = field(default_factory=dict)
    missing: set[bytes] = field(default_factory=set)
    missing_since: float = 0.0
    fetch_round: int = 0
    sent_prepare: bool = False
    prepared: bool = False
    committed: bool = False
    executed: bool = False
    t_first_request: float = 0.0
    t_preprepare: float = 0.0
    t_prepared: float = 0.0
    t_committed: float = 0.0
    last_progress: float = 0.0
    helped: dict[int, float] = field(default_factory=dict)


class Replica:
    """One PBFT replica's protocol state. Inspect it freely; change it only through
    `step` and `tick`."""

    def __init__(self, config: ReplicaConfig) -> None:
        self.config = config
        self.id = config.replica_id
        self.n = config.n
        self.f = max_faulty(config.n)
        self.view = 0
        self.next_seq = 1  # the primary's next sequence number to assign
        self.last_executed = 0
        self.head = GENESIS  # hash of the last executed block
        self.stable_checkpoint = 0
        self.executed_txs = 0
        self.slots: dict[int, _Slot] = {}
        self.pool: dict[bytes, _Pooled] = {}  # request digest -> body
        self.pending: dict[bytes, None] = {}  # digests not yet ordered, in arrival order
        self.pending_txs = 0
        self.waiting: dict[bytes, set[int]] = {}  # missing digest -> slots that need it
        self.checkpoints: dict[int, dict[int, bytes]] = {}
        self.own_checkpoints: dict[int, bytes] = {}
        self.client_newest: dict[str, int] = {}
        self.client_done: dict[str, set[int]] = {}
        self.replies: OrderedDict[tuple[str, int], Reply] = OrderedDict()

    # ------------------------------------------------------------ queries

    @property
    def primary(self) -> int:
        return primary_of(self.view, self.n)

    @property
    def is_primary(self) -> bool:
        return self.primary == self.id

    @property
    def low(self) -> int:
        return self.stable_checkpoint

    @property
    def high(self) -> int:
        return self.stable_checkpoint + self.config.window

    def in_flight(self) -> int:
        """Sequences ordered (by us as primary, or seen) but not yet executed."""
        return max(self.next_seq - 1, max(self.slots, default=0)) - self.last_executed

    def next_wakeup(self) -> float | None:
        """The earliest `now` at which `tick` has something to do (None: only on input)."""
        times = []
        can_order = (self.next_seq <= self.high
                     and self.next_seq - 1 - self.last_executed < self.config.pipeline)
        if self.is_primary and self.pending and can_order:
            oldest = self.pool[next(iter(self.pending))].arrived
            times.append(oldest + self.config.batch_delay)
        for slot in self.slots.values():
            if slot.executed:
                continue
            if slot.missing:
                times.append(slot.missing_since + self.config.fetch_after * (1 + slot.fetch_round))
            times.append(slot.last_progress + self.config.retransmit_after)
        return min(times) if times else None

    # ------------------------------------------------------------ input

    def step(self, env: Envelope, now: float) -> list[Effect]:
        """Handle one authenticated message."""
        out: list[Effect] = []
        msg = env.msg
        if isinstance(msg, Request):
            self._on_request(msg, env, now, out)
            if self.is_primary:
                self._cut_batches(now, out)
        elif isinstance(msg, PrePrepare):
            self._on_preprepare(msg, now, out)
        elif isinstance(msg, Prepare):
            self._on_vote(msg, now, out, is_commit=False)
        elif isinstance(msg, Commit):
            self._on_vote(msg, now, out, is_commit=True)
        elif isinstance(msg, Checkpoint):
            self._on_checkpoint(msg, out)
        elif isinstance(msg, Fetch):
            self._on_fetch(msg, out)
        else:
            out.append(Drop("malformed"))
        return out

    def tick(self, now: float) -> list[Effect]:
        """Let time pass: cut due batches, fetch missing bodies, retransmit stalled votes."""
        out: list[Effect] = []
        if self.is_primary:
            self._cut_batches(now, out)
        for slot in list(self.slots.values()):
            if slot.executed:
                continue
            if slot.missing and now >= slot.missing_since + self.config.fetch_after * (
                    1 + slot.fetch_round):
                # ask the primary first, then each other replica in turn
                target = (self.primary + slot.fetch_round) % self.n
                if target == self.id:
                    target = (target + 1) % self.n
                slot.fetch_round += 1
                out.append(Send(target, Fetch(self.id, tuple(sorted(slot.missing)))))
            if now >= slot.last_progress + self.config.retransmit_after:
                slot.last_progress = now
                self._retransmit(slot, out)
        return out

    # ------------------------------------------------------------ requests

    def _on_request(self, msg: Request, env: Envelope, now: float, out: list[Effect]) -> None:
        key = (msg.client, msg.timestamp)
        if self._client_has_executed(msg.client, msg.timestamp):
            cached = self.replies.get(key)
            if cached is not None:
                out.append(SendClient(msg.client, cached))  # a replay: answer, never re-execute
            else:
                out.append(Drop("duplicate"))
            return
        if env.digest in self.pool:
            out.append(Drop("duplicate"))
            return
        if len(self.pool) >= self.config.max_requests:
            out.append(Drop("pool_full"))
            return
        self.pool[env.digest] = _Pooled(msg, env.frame, now)
        slots = self.waiting.pop(env.digest, None)
        if slots:  # a body we were missing
            for seq in sorted(slots):
                slot = self.slots.get(seq)
                if slot is None:
                    continue
                slot.missing.discard(env.digest)
                self.pool[env.digest].seq = seq
                self._progress(slot, now, out)
            return
        self.pending[env.digest] = None
        self.pending_txs += len(msg.txs)

    def _client_has_executed(self, client: str, timestamp: int) -> bool:
        newest = self.client_newest.get(client, -1)
        if timestamp <= newest - self.config.client_horizon:
            return True  # too old to tell apart from a replay: refuse to execute
        return timestamp in self.client_done.get(client, ())

    def _cut_batches(self, now: float, out: list[Effect]) -> None:
        """Natural batching: order at once when idle, else when a batch is full or due,
        never more than `pipeline` batches in flight or beyond the high watermark."""
        cfg = self.config
        while self.pending and self.next_seq <= self.high:
            inflight = self.next_seq - 1 - self.last_executed
            if inflight >= cfg.pipeline:
                return
            full = (self.pending_txs >= cfg.batch_max_txs
                    or len(self.pending) >= cfg.batch_max_requests)
            oldest = self.pool[next(iter(self.pending))].arrived
            if not (full or inflight == 0 or now - oldest >= cfg.batch_delay):
                return
            digests: list[bytes] = []
            txs = 0
            while self.pending and len(digests) < cfg.batch_max_requests:
                digest = next(iter(self.pending))
                size = len(self.pool[digest].msg.txs)
                if digests and txs + size > cfg.batch_max_txs:
                    break
                del self.pending[digest]
                digests.append(digest)
                txs += size
            self.pending_txs -= txs
            seq = self.next_seq
            self.next_seq += 1
            pp = PrePrepare(self.view, seq, self.id, tuple(digests))
            slot = self._slot(seq, now)
            self._accept_preprepare(slot, pp, now, out)
            out.append(Broadcast(pp))

    # ------------------------------------------------------------ three phases

    def _slot(self, seq: int, now: float) -> _Slot:
        slot = self.slots.get(seq)
        if slot is None:
            slot = self.slots[seq] = _Slot(seq, self.view, last_progress=now)
        return slot

    def _admissible(self, view: int, seq: int, out: list[Effect]) -> bool:
        if view != self.view:
            out.append(Drop("stale_view"))
            return False
        if not self.low < seq <= self.high:
            out.append(Drop("out_of_window"))
            return False
        return True

    def _on_preprepare(self, pp: PrePrepare, now: float, out: list[Effect]) -> None:
        if not self._admissible(pp.view, pp.seq, out):
            return
        if pp.replica != primary_of(pp.view, self.n) or pp.replica == self.id:
            out.append(Drop("unknown_sender"))  # only the view's primary may order
            return
        slot = self._slot(pp.seq, now)
        if slot.preprepare is not None:
            if slot.preprepare != pp:
                out.append(Drop("duplicate"))  # equivocation is kept out; view change handles it
            else:
                self._help_peer(slot, pp.replica, now, out)
            return
        if len(set(pp.digests)) != len(pp.digests):
            out.append(Drop("malformed"))
            return
        self._accept_preprepare(slot, pp, now, out)

    def _accept_preprepare(self, slot: _Slot, pp: PrePrepare, now: float,
                           out: list[Effect]) -> None:
        slot.preprepare = pp
        slot.view = pp.view
        slot.digest = batch_digest(pp.digests)
        slot.t_preprepare = now
        slot.last_progress = now
        first = now
        for digest in pp.digests:
            pooled = self.pool.get(digest)
            if pooled is None:
                slot.missing.add(digest)
                self.waiting.setdefault(digest, set()).add(slot.seq)
                continue
            pooled.seq = slot.seq
            first = min(first, pooled.arrived)
            if digest in self.pending:
                del self.pending[digest]
                self.pending_txs -= len(pooled.msg.txs)
        if slot.missing:
            slot.missing_since = now
        slot.t_first_request = first
        out.append(Observe("request_to_preprepare", now - first))
        self._progress(slot, now, out)

    def _on_vote(self, vote: Prepare | Commit, now: float, out: list[Effect],
                 is_commit: bool) -> None:
        if not self._admissible(vote.view, vote.seq, out):
            return
        if not is_commit and vote.replica == primary_of(vote.view, self.n):
            out.append(Drop("unknown_sender"))  # the primary's PRE-PREPARE is its prepare
            return
        slot = self._slot(vote.seq, now)
        votes = slot.commits if is_commit else slot.prepares
        if vote.replica in votes:
            out.append(Drop("duplicate"))
            self._help_peer(slot, vote.replica, now, out)
            return
        votes[vote.replica] = vote.digest
        if not slot.executed:
            self._progress(slot, now, out)

    def _progress(self, slot: _Slot, now: float, out: list[Effect]) -> None:
        """Advance a slot as far as its votes allow, then execute what is in order."""
        if slot.preprepare is None or slot.missing:
            return
        me = self.id
        if not slot.sent_prepare and me != primary_of(slot.view, self.n):
            slot.sent_prepare = True
            slot.prepares[me] = slot.digest
            out.append(Broadcast(Prepare(slot.view, slot.seq, me, slot.digest)))
        if not slot.prepared and _matching(slot.prepares, slot.digest) >= prepare_quorum(self.n):
            slot.prepared = True
            slot.t_prepared = now
            slot.last_progress = now
            out.append(Observe("preprepare_to_prepared", now - slot.t_preprepare))
            slot.commits[me] = slot.digest
            out.append(Broadcast(Commit(slot.view, slot.seq, me, slot.digest)))
        if (slot.prepared and not slot.committed
                and _matching(slot.commits, slot.digest) >= commit_quorum(self.n)):
            slot.committed = True
            slot.t_committed = now
            slot.last_progress = now
            out.append(Observe("prepared_to_committed", now - slot.t_prepared))
            self._execute_in_order(now, out)

    def _execute_in_order(self, now: float, out: list[Effect]) -> None:
        while True:
            slot = self.slots.get(self.last_executed + 1)
            if slot is None or not slot.committed or slot.executed:
                return
            self._execute(slot, out)

    def _execute(self, slot: _Slot, out: list[Effect]) -> None:
        assert slot.preprepare is not None
        executed: list[ExecutedRequest] = []
        for digest in slot.preprepare.digests:
            pooled = self.pool[digest]
            req = pooled.msg
            if self._client_has_executed(req.client, req.timestamp):
                continue  # the same request ordered twice: execute once, deterministically
            self._mark_done(req.client, req.timestamp)
            executed.append(ExecutedRequest(req.client, req.timestamp, digest, pooled.frame,
                                            len(req.txs)))
        prev = self.head
        self.head = block_hash(prev, slot.seq, slot.digest)
        self.last_executed = slot.seq
        self.next_seq = max(self.next_seq, slot.seq + 1)
        slot.executed = True
        self.executed_txs += sum(r.txs for r in executed)
        out.append(Execute(slot.seq, slot.view, slot.digest, prev, self.head,
                           slot.preprepare.digests, tuple(executed), slot.t_committed))
        for req in executed:
            reply = Reply(slot.view, self.id, req.client, req.timestamp, slot.seq, self.head)
            self._cache_reply(reply)
            out.append(SendClient(req.client, reply))
        if slot.seq % self.config.checkpoint_interval == 0:
            self.own_checkpoints[slot.seq] = self.head
            self.checkpoints.setdefault(slot.seq, {})[self.id] = self.head
            out.append(Broadcast(Checkpoint(self.id, slot.seq, self.head)))
            self._try_stabilize(slot.seq, out)

    def _mark_done(self, client: str, timestamp: int) -> None:
        done = self.client_done.setdefault(client, set())
        done.add(timestamp)
        newest = max(self.client_newest.get(client, -1), timestamp)
        self.client_newest[client] = newest
        if len(done) > 2 * self.config.reply_cache:  # keep memory bounded
            floor = newest - self.config.client_horizon
            self.client_done[client] = {t for t in done if t > floor}

    def _cache_reply(self, reply: Reply) -> None:
        self.replies[(reply.client, reply.timestamp)] = reply
        while len(self.replies) > self.config.reply_cache:
            self.replies.popitem(last=False)

    # ------------------------------------------------------------ checkpoints

    def _on_checkpoint(self, cp: Checkpoint, out: list[Effect]) -> None:
        if cp.seq <= self.stable_checkpoint or cp.seq > self.high:
            out.append(Drop("out_of_window"))
            return
        votes = self.checkpoints.setdefault(cp.seq, {})
        if cp.replica in votes:
            out.append(Drop("duplicate"))
            return
        votes[cp.replica] = cp.state
        self._try_stabilize(cp.seq, out)

    def _try_stabilize(self, seq: int, out: list[Effect]) -> None:
        mine = self.own_checkpoints.get(seq)
        if mine is None or seq <= self.stable_checkpoint:
            return
        if _matching(self.checkpoints.get(seq, {}), mine) < commit_quorum(self.n):
            return
        self.stable_checkpoint = seq
        for old in [s for s in self.slots if s <= seq]:
            slot = self.slots.pop(old)
            if slot.preprepare is not None:
                for digest in slot.preprepare.digests:
                    self.pool.pop(digest, None)
        for old in [s for s in self.checkpoints if s <= seq]:
            del self.checkpoints[old]
        for old in [s for s in self.own_checkpoints if s < seq]:
            del self.own_checkpoints[old]
        out.append(CheckpointStable(seq))

    # ------------------------------------------------------------ recovery of lost messages

    def _on_fetch(self, fetch: Fetch, out: list[Effect]) -> None:
        for digest in fetch.digests[:1024]:
            pooled = self.pool.get(digest)
            if pooled is not None:
                out.append(Forward(fetch.replica, pooled.frame))

    def _retransmit(self, slot: _Slot, out: list[Effect]) -> None:
        """A stalled slot re-sends what this replica already said about it."""
        pp = slot.preprepare
        if pp is not None and pp.replica == self.id:
            out.append(Broadcast(pp))
        if slot.sent_prepare:
            out.append(Broadcast(Prepare(slot.view, slot.seq, self.id, slot.digest)))
        if slot.prepared:
            out.append(Broadcast(Commit(slot.view, slot.seq, self.id, slot.digest)))

    def _help_peer(self, slot: _Slot, peer: int, now: float, out: list[Effect]) -> None:
        """A peer repeats itself about a slot we are past: it likely lost our votes."""
        if peer == self.id or now - slot.helped.get(peer, -1e18) < self.config.retransmit_after:
            return
        slot.helped[peer] = now
        pp = slot.preprepare
        if pp is not None and pp.replica == self.id:
            out.append(Send(peer, pp))
        if slot.sent_prepare:
            out.append(Send(peer, Prepare(slot.view, slot.seq, self.id, slot.digest)))
        if slot.prepared:
            out.append(Send(peer, Commit(slot.view, slot.seq, self.id, slot.digest)))


def _matching(votes: dict[int, bytes], digest: bytes) -> int:
    return sum(1 for d in votes.values() if d == digest)
