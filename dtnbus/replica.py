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
    NewView,
    Prepare,
    PrePrepare,
    Reply,
    Request,
    StateRequest,
    ViewChange,
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
    skipped: tuple[ExecutedRequest, ...] = ()  # ordered, but replays: kept, not executed


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


@dataclass(frozen=True, slots=True)
class ViewEntered:
    """This replica now works in `view` (a NEW-VIEW was accepted)."""

    view: int


Effect = (
    Broadcast | Send | Forward | SendClient | Execute | Observe | Drop | CheckpointStable
    | ViewEntered
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
    fetch_after: float = 1.0  # wait this long for a client's own copy before fetching
    max_requests: int = 200_000  # bound on request bodies held (the pool)
    reply_cache: int = 100_000
    client_horizon: int = 1_000_000  # timestamps older than a client's newest minus this are stale
    tentative: bool = False  # reply once prepared (PBFT tentative execution): saves a hop
    view_change_timeout: float = 5.0  # no execution for this long with work pending: suspect
    # the primary (doubles with each view change that does not bring progress)

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
    sent_tentative: bool = False
    prepared: bool = False
    committed: bool = False
    executed: bool = False
    t_first_request: float = 0.0
    t_preprepare: float = 0.0
    t_prepared: float = 0.0
    t_committed: float = 0.0
    last_progress: float = 0.0
    helped: dict[int, float] = field(default_factory=dict)
    pp_frame: bytes = b""  # signed frames: the proof of prepared in a VIEW-CHANGE
    prepare_frames: dict[int, bytes] = field(default_factory=dict)
    commit_frames: dict[int, bytes] = field(default_factory=dict)  # proof for state transfer
    cert: _Cert | None = None  # the newest prepared certificate, kept across views


@dataclass(frozen=True, slots=True)
class _Cert:
    """Proof that a batch was prepared: the PRE-PREPARE and q-1 matching PREPAREs."""

    view: int
    digests: tuple[bytes, ...]
    frames: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class TransferredBlock:
    """A block proven by state transfer, with the bodies of everything it ordered."""

    seq: int
    view: int
    digests: tuple[bytes, ...]
    bodies: dict[bytes, tuple[Request, bytes]]


@dataclass(frozen=True, slots=True)
class StateOffer:
    """What a replica can hand a lagging peer (see `Replica.state_for`)."""

    stable_seq: int
    stable_proof: tuple[bytes, ...]  # q CHECKPOINT frames for stable_seq
    end_seq: int  # blocks up to here can be proven
    commit_certs: tuple[bytes, ...]  # q COMMIT frames per block after stable_seq
    new_view: bytes


@dataclass(frozen=True, slots=True)
class _ViewChangeVote:
    """A verified VIEW-CHANGE: what it proves, and its frame for a NEW-VIEW."""

    replica: int
    stable_seq: int
    stable_state: bytes
    certs: dict[int, tuple[int, tuple[bytes, ...]]]  # seq -> (view, digests)
    frame: bytes


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
        # view change
        self.active = True  # False between sending VIEW-CHANGE and accepting NEW-VIEW
        self.vc_deadline: float | None = None
        self.vc_timeout = config.view_change_timeout
        self.view_changes: dict[int, dict[int, _ViewChangeVote]] = {}
        self.new_view_sent: set[int] = set()
        self.expected: dict[int, tuple[bytes, ...]] = {}  # seq -> digests a NEW-VIEW fixed
        self.checkpoint_frames: dict[int, dict[int, bytes]] = {}
        self.stable_proof: tuple[bytes, ...] = ()
        self.proof_seq = 0  # the checkpoint `stable_proof` proves (<= stable_checkpoint)
        self.new_view_frame = b""  # the NEW-VIEW that started this view, for lagging peers
        # state transfer: evidence that others are ahead, and our requests for state
        self.ahead: dict[int, int] = {}  # replica -> newest checkpoint seq beyond our window
        self.view_ahead: dict[int, int] = {}  # replica -> a view above ours it voted in
        self.behind_since: float | None = None
        self.state_requests_left = 0
        self.next_state_request = 0.0
        self.state_peer = self.id
        self.recovering = False  # restarted and not yet seen the cluster work: never accuse

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
        if self.state_requests_left or self.behind_since is not None:
            times.append(max(self.next_state_request,
                             (self.behind_since or 0.0) + self.config.retransmit_after))
        if self.vc_deadline is not None:
            times.append(self.vc_deadline)
        elif self.active and self._has_work() and self.behind_since is None \
                and not self.state_requests_left and not self.recovering:
            return 0.0  # arm the view-change timer now
        if self.is_primary and self.active and self.pending and can_order:
            oldest = self.pool[next(iter(self.pending))].arrived
            times.append(oldest + self.config.batch_delay)
        for slot in self.slots.values():
            if slot.executed:
                continue
            if slot.missing:
                times.append(slot.missing_since + self.config.fetch_after * (1 + slot.fetch_round))
            times.append(slot.last_progress + self.config.retransmit_after)
        return min(times) if times else None

    def wants(self, msg: Message) -> bool:
        """Would `step` use this message? False for votes a slot no longer needs, so the
        caller can skip verifying their signatures (about 1/3 of all votes at large n).
        A vote repeated by the same sender is wanted: it signals a peer that lost ours."""
        if isinstance(msg, Prepare | Commit):
            slot = self.slots.get(msg.seq)
            if slot is None or msg.view != slot.view:
                return True
            votes = slot.commits if isinstance(msg, Commit) else slot.prepares
            if msg.replica in votes:
                return True
            return not (slot.committed if isinstance(msg, Commit) else slot.prepared)
        if isinstance(msg, Checkpoint):
            return msg.seq > self.stable_checkpoint
        return True

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
            self._on_preprepare(msg, env.frame, now, out)
        elif isinstance(msg, Prepare):
            self._on_vote(msg, env.frame, now, out, is_commit=False)
        elif isinstance(msg, Commit):
            self._on_vote(msg, env.frame, now, out, is_commit=True)
        elif isinstance(msg, Checkpoint):
            self._on_checkpoint(msg, env.frame, now, out)
        elif isinstance(msg, ViewChange):
            self._on_view_change(env, now, out)
        elif isinstance(msg, NewView):
            self._on_new_view(env, now, out)
        elif isinstance(msg, Fetch):
            self._on_fetch(msg, out)
        else:
            out.append(Drop("malformed"))
        return out

    def tick(self, now: float) -> list[Effect]:
        """Let time pass: cut due batches, fetch missing bodies, retransmit stalled votes."""
        out: list[Effect] = []
        self._state_transfer_timer(now, out)
        self._view_change_timer(now, out)
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
        while self.active and self.pending and self.next_seq <= self.high:
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

    def _admissible(self, view: int, seq: int, out: list[Effect], sender: int = -1,
                    now: float = 0.0) -> bool:
        if view > self.view and sender >= 0:
            self.view_ahead[sender] = view
            if len(self.view_ahead) > self.f:  # f+1 replicas work in a view we never entered
                self._behind(now)
        if view != self.view or not self.active:
            out.append(Drop("stale_view"))
            return False
        if not self.low < seq <= self.high:
            out.append(Drop("out_of_window"))
            return False
        return True

    def _on_preprepare(self, pp: PrePrepare, frame: bytes, now: float,
                       out: list[Effect]) -> None:
        if not self._admissible(pp.view, pp.seq, out, pp.replica, now):
            return
        if pp.replica != primary_of(pp.view, self.n) or pp.replica == self.id:
            out.append(Drop("unknown_sender"))  # only the view's primary may order
            return
        expected = self.expected.get(pp.seq)
        if expected is not None and expected != pp.digests:
            out.append(Drop("malformed"))  # the NEW-VIEW fixed this sequence otherwise
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
        slot.pp_frame = frame
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

    def _on_vote(self, vote: Prepare | Commit, frame: bytes, now: float, out: list[Effect],
                 is_commit: bool) -> None:
        if not self._admissible(vote.view, vote.seq, out, vote.replica, now):
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
        (slot.commit_frames if is_commit else slot.prepare_frames)[vote.replica] = frame
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
            self._reply_tentatively(slot, out)
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
            if slot is None or slot.executed:
                return
            if not slot.committed:
                self._reply_tentatively(slot, out)  # its predecessors are now executed
                return
            self._execute(slot, out)

    def _reply_tentatively(self, slot: _Slot, out: list[Effect]) -> None:
        """Tentative execution: once a slot is prepared and everything before it is
        executed, its result (the block hash) is already determined: tell the clients.
        q matching tentative replies prove a quorum prepared it, so it survives any
        view change; the committed reply follows at execution."""
        if (not self.config.tentative or slot.sent_tentative or not slot.prepared
                or slot.committed or slot.seq != self.last_executed + 1
                or slot.preprepare is None):
            return
        slot.sent_tentative = True
        result = block_hash(self.head, slot.seq, slot.digest)
        for digest in slot.preprepare.digests:
            req = self.pool[digest].msg
            if not self._client_has_executed(req.client, req.timestamp):
                out.append(SendClient(req.client, Reply(slot.view, self.id, req.client,
                                                        req.timestamp, slot.seq, result, True)))

    def _execute(self, slot: _Slot, out: list[Effect]) -> None:
        assert slot.preprepare is not None
        bodies = {d: (self.pool[d].msg, self.pool[d].frame) for d in slot.preprepare.digests}
        slot.executed = True
        self.recovering = False  # we saw the cluster work: from now on, we may accuse
        self.vc_deadline = None  # progress: the primary is doing its job
        self.vc_timeout = self.config.view_change_timeout
        self._apply_block(slot.seq, slot.view, slot.preprepare.digests, bodies,
                          slot.t_committed, out, reply=True)

    def _apply_block(self, seq: int, view: int, digests: tuple[bytes, ...],
                     bodies: dict[bytes, tuple[Request, bytes]], committed_at: float,
                     out: list[Effect], reply: bool) -> None:
        """Execute one ordered batch: the same code for a committed slot and for a block
        taken by state transfer, so both make the same replay decisions and hashes."""
        executed: list[ExecutedRequest] = []
        skipped: list[ExecutedRequest] = []
        for digest in digests:
            req, frame = bodies[digest]
            record = ExecutedRequest(req.client, req.timestamp, digest, frame, len(req.txs))
            if self._client_has_executed(req.client, req.timestamp):
                skipped.append(record)  # ordered twice: execute once, deterministically
                continue
            self._mark_done(req.client, req.timestamp)
            executed.append(record)
        prev = self.head
        self.head = block_hash(prev, seq, batch_digest(digests))
        self.last_executed = seq
        self.next_seq = max(self.next_seq, seq + 1)
        self.executed_txs += sum(r.txs for r in executed)
        out.append(Execute(seq, view, batch_digest(digests), prev, self.head, digests,
                           tuple(executed), committed_at, tuple(skipped)))
        if reply:
            for req in executed:
                answer = Reply(view, self.id, req.client, req.timestamp, seq, self.head)
                self._cache_reply(answer)
                out.append(SendClient(req.client, answer))
        if seq % self.config.checkpoint_interval == 0:
            self.own_checkpoints[seq] = self.head
            self.checkpoints.setdefault(seq, {})[self.id] = self.head
            out.append(Broadcast(Checkpoint(self.id, seq, self.head)))
            self._try_stabilize(seq, out)

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

    def _on_checkpoint(self, cp: Checkpoint, frame: bytes, now: float,
                       out: list[Effect]) -> None:
        if cp.seq > self.high:
            self.ahead[cp.replica] = max(cp.seq, self.ahead.get(cp.replica, 0))
            if len(self.ahead) > self.f:  # a correct replica is a window ahead of us
                self._behind(now)
            out.append(Drop("out_of_window"))
            return
        if cp.seq <= self.stable_checkpoint:
            out.append(Drop("out_of_window"))
            return
        votes = self.checkpoints.setdefault(cp.seq, {})
        if cp.replica in votes:
            out.append(Drop("duplicate"))
            return
        votes[cp.replica] = cp.state
        self.checkpoint_frames.setdefault(cp.seq, {})[cp.replica] = frame
        self._try_stabilize(cp.seq, out)
        if cp.seq > self.last_executed and _matching(votes, cp.state) >= commit_quorum(self.n):
            self._behind(now)  # a quorum executed past us; if we do not catch up, fetch

    def _try_stabilize(self, seq: int, out: list[Effect]) -> None:
        mine = self.own_checkpoints.get(seq)
        if mine is None or seq <= self.stable_checkpoint:
            return
        votes = self.checkpoints.get(seq, {})
        if _matching(votes, mine) < commit_quorum(self.n):
            return
        frames = self.checkpoint_frames.get(seq, {})
        proof = tuple(frames[r] for r, state in sorted(votes.items())
                      if state == mine and frames.get(r))[:commit_quorum(self.n)]
        if len(proof) < commit_quorum(self.n):
            return  # our own signed CHECKPOINT is not back yet (note_signed): next time
        self.stable_proof = proof
        self.proof_seq = seq
        self._adopt_stable(seq)
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


    # ------------------------------------------------------------ own signed frames

    def note_signed(self, msg: Message, frame: bytes, now: float) -> list[Effect]:
        """The caller signed one of our messages: keep the frame, to prove later what we
        said (prepared certificates, checkpoint proofs, our VIEW-CHANGE in a NEW-VIEW)."""
        out: list[Effect] = []
        if isinstance(msg, PrePrepare | Prepare | Commit):
            slot = self.slots.get(msg.seq)
            if slot is not None and msg.view == slot.view:
                if isinstance(msg, PrePrepare):
                    slot.pp_frame = frame
                elif isinstance(msg, Prepare):
                    slot.prepare_frames[msg.replica] = frame
                else:
                    slot.commit_frames[msg.replica] = frame
        elif isinstance(msg, Checkpoint):
            self.checkpoint_frames.setdefault(msg.seq, {})[msg.replica] = frame
            self._try_stabilize(msg.seq, out)
        elif isinstance(msg, NewView):
            if msg.view == self.view:
                self.new_view_frame = frame
        elif isinstance(msg, ViewChange):
            vote = self.view_changes.get(msg.new_view, {}).get(self.id)
            if vote is not None:
                self.view_changes[msg.new_view][self.id] = _ViewChangeVote(
                    vote.replica, vote.stable_seq, vote.stable_state, vote.certs, frame)
                self._maybe_new_view(now, out)
        return out

    # ------------------------------------------------------------ view change

    def _has_work(self) -> bool:
        return bool(self.pending) or any(
            s.preprepare is not None and not s.executed for s in self.slots.values())

    def _view_change_timer(self, now: float, out: list[Effect]) -> None:
        catching_up = (self.behind_since is not None or self.state_requests_left > 0
                       or self.recovering)
        if self.active and (catching_up or not self._has_work()):
            # nothing to wait for; or we cannot execute because *we* are behind, which
            # says nothing about the primary: do not accuse it
            self.vc_deadline = None
            return
        if self.vc_deadline is None:
            self.vc_deadline = now + self.vc_timeout
        elif now >= self.vc_deadline:
            self._start_view_change(self.view + 1, now, out)
        if not self.active:
            self._maybe_new_view(now, out)

    def _certificate(self, slot: _Slot) -> _Cert | None:
        """The slot's newest prepared certificate, as signed frames."""
        if slot.prepared and slot.preprepare is not None and slot.pp_frame:
            frames = [f for r, f in sorted(slot.prepare_frames.items())
                      if slot.prepares.get(r) == slot.digest and f]
            need = prepare_quorum(self.n)
            if len(frames) >= need:
                return _Cert(slot.view, slot.preprepare.digests,
                             (slot.pp_frame, *frames[:need]))
        return slot.cert

    def _start_view_change(self, new_view: int, now: float, out: list[Effect]) -> None:
        """Stop working in this view and vote for `new_view`, with our proofs."""
        if new_view <= self.view:
            return
        self.view = new_view
        self.active = False
        self.vc_timeout *= 2  # if this view does not bring progress either, wait longer
        self.vc_deadline = now + self.vc_timeout
        proofs: list[bytes] = list(self.stable_proof)
        certs: dict[int, tuple[int, tuple[bytes, ...]]] = {}
        for seq, slot in sorted(self.slots.items()):
            cert = self._certificate(slot) if seq > self.stable_checkpoint else None
            if cert is not None:
                certs[seq] = (cert.view, cert.digests)
                proofs.extend(cert.frames)
        state = self.own_checkpoints.get(self.proof_seq, GENESIS)
        self.view_changes.setdefault(new_view, {})[self.id] = _ViewChangeVote(
            self.id, self.proof_seq, state, certs, b"")
        out.append(Broadcast(ViewChange(new_view, self.id, self.proof_seq, tuple(proofs))))

    def _parse_view_change(self, env: Envelope) -> _ViewChangeVote | None:
        """Check a VIEW-CHANGE's proofs (already authenticated by the wire layer)."""
        vc = env.msg
        assert isinstance(vc, ViewChange)
        q = commit_quorum(self.n)
        checkpoints: dict[int, bytes] = {}
        preprepares: dict[int, PrePrepare] = {}
        prepares: dict[int, dict[int, Prepare]] = {}
        for inner in env.nested:
            m = inner.msg
            if isinstance(m, Checkpoint) and m.seq == vc.stable_seq:
                checkpoints[m.replica] = m.state
            elif isinstance(m, PrePrepare) and vc.stable_seq < m.seq and m.view < vc.new_view:
                if m.replica != primary_of(m.view, self.n) or m.seq in preprepares:
                    return None
                preprepares[m.seq] = m
            elif isinstance(m, Prepare) and m.view < vc.new_view:
                prepares.setdefault(m.seq, {})[m.replica] = m
            else:
                return None
        state = GENESIS
        if vc.stable_seq > 0:
            states = set(checkpoints.values())
            if len(checkpoints) < q or len(states) != 1:
                return None
            state = states.pop()
        certs: dict[int, tuple[int, tuple[bytes, ...]]] = {}
        for seq, pp in preprepares.items():
            digest = batch_digest(pp.digests)
            votes = [p for r, p in prepares.get(seq, {}).items()
                     if p.view == pp.view and p.digest == digest
                     and r != primary_of(pp.view, self.n)]
            if len(votes) < prepare_quorum(self.n):
                return None
            certs[seq] = (pp.view, pp.digests)
        if any(seq not in preprepares for seq in prepares):
            return None
        return _ViewChangeVote(vc.replica, vc.stable_seq, state, certs, env.frame)

    def _on_view_change(self, env: Envelope, now: float, out: list[Effect]) -> None:
        vc = env.msg
        assert isinstance(vc, ViewChange)
        if vc.new_view < self.view or (vc.new_view == self.view and self.active):
            out.append(Drop("stale_view"))
            return
        vote = self._parse_view_change(env)
        if vote is None:
            out.append(Drop("malformed"))
            return
        votes = self.view_changes.setdefault(vc.new_view, {})
        if vc.replica in votes:
            out.append(Drop("duplicate"))
            return
        votes[vc.replica] = vote
        # f+1 others want a later view: at least one correct replica suspects the
        # primary, so join the smallest such view rather than wait for our own timer
        later = {v: set(vs) - {self.id} for v, vs in self.view_changes.items() if v > self.view}
        if len(set().union(*later.values())) > self.f:
            self._start_view_change(min(v for v, rs in later.items() if rs), now, out)
        self._maybe_new_view(now, out)

    def _maybe_new_view(self, now: float, out: list[Effect]) -> None:
        """As the primary of a view being changed to: announce it once q votes are in."""
        view = self.view
        if self.active or primary_of(view, self.n) != self.id or view in self.new_view_sent:
            return
        votes = self.view_changes.get(view, {})
        own = votes.get(self.id)
        if own is None or not own.frame:
            return
        chosen = [own] + [v for r, v in sorted(votes.items()) if r != self.id]
        chosen = chosen[:commit_quorum(self.n)]
        if len(chosen) < commit_quorum(self.n):
            return
        self.new_view_sent.add(view)
        out.append(Broadcast(NewView(view, self.id, tuple(v.frame for v in chosen))))
        self._enter_view(view, chosen, now, out)

    def _on_new_view(self, env: Envelope, now: float, out: list[Effect]) -> None:
        nv = env.msg
        assert isinstance(nv, NewView)
        if nv.view < self.view or (nv.view == self.view and self.active) or nv.view == 0:
            out.append(Drop("stale_view"))
            return
        if nv.replica != primary_of(nv.view, self.n):
            out.append(Drop("unknown_sender"))
            return
        chosen: dict[int, _ViewChangeVote] = {}
        for inner in env.nested:
            if not isinstance(inner.msg, ViewChange) or inner.msg.new_view != nv.view:
                out.append(Drop("malformed"))
                return
            vote = self._parse_view_change(inner)
            if vote is None or vote.replica in chosen:
                out.append(Drop("malformed"))
                return
            chosen[vote.replica] = vote
        if len(chosen) < commit_quorum(self.n):
            out.append(Drop("malformed"))
            return
        self.new_view_frame = env.frame
        self._enter_view(nv.view, list(chosen.values()), now, out)

    def _enter_view(self, view: int, votes: list[_ViewChangeVote], now: float,
                    out: list[Effect]) -> None:
        """Start working in `view`: every sequence a quorum may have prepared is ordered
        again with the same batch (the newest certificate wins); gaps get empty batches."""
        min_s = max(v.stable_seq for v in votes)
        chosen: dict[int, tuple[int, tuple[bytes, ...]]] = {}
        for vote in votes:
            for seq, (cert_view, digests) in vote.certs.items():
                if seq > min_s and (seq not in chosen or cert_view > chosen[seq][0]):
                    chosen[seq] = (cert_view, digests)
        max_s = max(chosen, default=min_s)
        self.view = view
        self.active = True
        self.vc_deadline = None
        self.view_ahead = {r: v for r, v in self.view_ahead.items() if v > view}
        out.append(ViewEntered(view))
        if min_s > self.stable_checkpoint:
            state = next(v.stable_state for v in votes if v.stable_seq == min_s)
            if self.own_checkpoints.get(min_s) == state:
                self.checkpoints.setdefault(min_s, {})
                self._adopt_stable(min_s)
            elif self.last_executed < min_s:
                self._behind(now)  # the new view starts above what we hold
        for old in [v for v in self.view_changes if v <= view]:
            del self.view_changes[old]
        start = max(min_s, self.stable_checkpoint)
        self.expected = {seq: (chosen[seq][1] if seq in chosen else ())
                         for seq in range(start + 1, max_s + 1)}
        ordered: set[bytes] = set()
        for seq in list(self.slots):
            slot = self.slots[seq]
            if seq > max_s and not slot.executed:
                del self.slots[seq]  # never prepared by a quorum: its requests go back
                continue
            cert = self._certificate(slot)
            fresh = _Slot(seq, view, last_progress=now, executed=slot.executed, cert=cert)
            self.slots[seq] = fresh
        self.waiting.clear()
        for digests in self.expected.values():
            ordered.update(digests)
        self.pending.clear()
        self.pending_txs = 0
        for digest, pooled in self.pool.items():
            req = pooled.msg
            if digest in ordered or self._client_has_executed(req.client, req.timestamp):
                continue
            pooled.seq = 0
            self.pending[digest] = None
            self.pending_txs += len(req.txs)
        self.next_seq = max(max_s, self.last_executed) + 1
        if primary_of(view, self.n) == self.id:
            for seq, digests in sorted(self.expected.items()):
                pp = PrePrepare(view, seq, self.id, digests)
                self._accept_preprepare(self._slot(seq, now), pp, now, out)
                out.append(Broadcast(pp))
            self._cut_batches(now, out)

    # ------------------------------------------------------------ state transfer

    def restore(self, height: int, head: bytes, executed: list[tuple[str, int]]) -> None:
        """Resume from our own durable ledger after a restart, then ask peers what we
        missed. Nothing is executed twice: replays of `executed` are refused."""
        self.last_executed = self.stable_checkpoint = height
        self.next_seq = height + 1
        self.head = head
        for client, timestamp in executed:
            self._mark_done(client, timestamp)
        self.state_requests_left = 3
        self.recovering = True  # until we execute a batch with the others again

    def _behind(self, now: float) -> None:
        if self.behind_since is None:
            self.behind_since = now

    def _state_transfer_timer(self, now: float, out: list[Effect]) -> None:
        if self.behind_since is not None and now >= self.behind_since + \
                self.config.retransmit_after and self.state_requests_left == 0:
            self.state_requests_left = 1  # still behind after a grace period: fetch
        if self.state_requests_left and now >= self.next_state_request:
            self.state_requests_left -= 1
            self.next_state_request = now + 2 * self.config.retransmit_after
            self.state_peer = (self.state_peer + 1) % self.n
            if self.state_peer == self.id:
                self.state_peer = (self.state_peer + 1) % self.n
            out.append(Send(self.state_peer, StateRequest(self.id, self.last_executed + 1)))

    def state_for(self, from_seq: int) -> StateOffer:
        """What we can prove to a lagging peer: our stable checkpoint with its proof, and
        after it every executed batch for which we hold q signed COMMITs (blocks come from
        the ledger), plus the NEW-VIEW of our view."""
        certs: list[bytes] = []
        end = self.proof_seq
        q = commit_quorum(self.n)
        for seq in range(max(self.proof_seq, from_seq - 1) + 1, self.last_executed + 1):
            slot = self.slots.get(seq)
            if slot is None or not slot.executed:
                break
            frames = [f for r, f in sorted(slot.commit_frames.items())
                      if f and slot.commits.get(r) == slot.digest][:q]
            if len(frames) < q:
                break
            certs.extend(frames)
            end = seq
        return StateOffer(self.proof_seq, self.stable_proof, end, tuple(certs),
                          self.new_view_frame)

    def adopt_state(self, stable_seq: int, stable_proof: tuple[Envelope, ...],
                    blocks: list[TransferredBlock], now: float) -> list[Effect]:
        """Execute blocks a peer proved (the caller checked them against `stable_proof`
        and commit certificates) as if we had committed them: same replay decisions,
        same hashes, Execute effects to persist, no replies. Nothing newer: stop asking."""
        out: list[Effect] = []
        blocks = [b for b in blocks if b.seq > self.last_executed]
        if not blocks or blocks[0].seq != self.last_executed + 1:
            self.state_requests_left = 0  # the peer has nothing newer than us
            if self.behind_since is not None and not self.ahead and not self.view_ahead:
                self.behind_since = None
            return out
        for block in blocks:
            slot = self.slots.get(block.seq)
            if slot is not None:
                slot.executed = True
            self._apply_block(block.seq, block.view, block.digests, block.bodies, 0.0, out,
                              reply=False)  # committed_at 0: no phase to observe
        signers = {e.msg.replica for e in stable_proof
                   if isinstance(e.msg, Checkpoint) and e.msg.seq == stable_seq
                   and self.own_checkpoints.get(stable_seq) == e.msg.state}
        if stable_seq > self.stable_checkpoint and len(signers) >= commit_quorum(self.n):
            self.stable_proof = tuple(e.frame for e in stable_proof)
            self.proof_seq = stable_seq
            self._adopt_stable(stable_seq)
            out.append(CheckpointStable(stable_seq))
        for digest in [d for d in self.pending if self.pool.get(d) is None
                       or self._client_has_executed(self.pool[d].msg.client,
                                                     self.pool[d].msg.timestamp)]:
            pooled = self.pool.pop(digest, None)
            del self.pending[digest]
            if pooled is not None:
                self.pending_txs -= len(pooled.msg.txs)
        self.ahead = {r: s for r, s in self.ahead.items() if s > self.high}
        self.behind_since = None
        self.state_requests_left = 0
        self.vc_deadline = None
        self._execute_in_order(now, out)
        return out

    def _adopt_stable(self, seq: int) -> None:
        """A checkpoint proved to us: collect the log below it, move the window."""
        self.stable_checkpoint = seq
        for old in [s for s in self.checkpoints if s <= seq]:
            del self.checkpoints[old]
            self.checkpoint_frames.pop(old, None)
        for old in [s for s in self.own_checkpoints if s < seq]:
            del self.own_checkpoints[old]
        for old in [s for s in self.slots if s <= seq]:
            slot = self.slots.pop(old)
            if slot.preprepare is not None:
                for digest in slot.preprepare.digests:
                    self.pool.pop(digest, None)


def _matching(votes: dict[int, bytes], digest: bytes) -> int:
    return sum(1 for d in votes.values() if d == digest)
