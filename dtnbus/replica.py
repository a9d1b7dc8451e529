"""The PBFT replica: a pure state machine (no sockets, no clock, no disk).

Input: authenticated envelopes (`step`), the passage of time (`tick`), blocks a peer
proved (`adopt_state`), and, after a restart, what it persisted (`restore`); `now` is
always an argument. Output: a list of effects (`dtnbus.effects`) the caller carries out
in order, durable ones before any message after them. Same state + same input = same
output. The replica signs its own protocol messages (`sign`), so what it says and what it
persisted are one and the same frame.

Normal case (Castro & Liskov, with requests sent by the client to every replica and
PRE-PREPAREs that order request digests, so payload crosses the critical path once):

    request -> PRE-PREPARE (primary = view mod n) -> PREPARE (a backup holds the
    bodies) -> prepared: PRE-PREPARE + q-1 matching PREPAREs -> COMMIT ->
    committed-local: q matching COMMITs -> execute in sequence order -> REPLY

Around it: checkpoints and garbage collection, view change (suspicion on the oldest
waiting request, f+1 suspicions before anyone leaves a view, VIEW-CHANGE / NEW-VIEW with
certificates), status exchange, catch-up by state transfer, and the persisted protocol
state that makes a restart safe. The pieces with invariants of their own live in their
own modules: `pool` (bodies and who needs them), `clients` (exactly-once decisions),
`log` (slots, certificates, the stable checkpoint with its proof), `view_change` (proof
checks and the new view's order). docs/protocol.md is the specification.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from dtnbus.budget import PeerBudget
from dtnbus.catchup import CatchUp
from dtnbus.clients import ClientTable, Decision
from dtnbus.effects import (
    Broadcast,
    CheckpointStable,
    Drop,
    DurableState,
    Effect,
    Execute,
    Forget,
    Forward,
    LookupReply,
    Observe,
    OrderedRequest,
    Persist,
    Send,
    SendClient,
    TransferredBlock,
    ViewChangeStarted,
    ViewEntered,
)
from dtnbus.log import Cert, Checkpoints, Slot, StableCheckpoint
from dtnbus.messages import (
    GENESIS,
    Checkpoint,
    Commit,
    Fetch,
    Message,
    NewView,
    Outcome,
    PeerStatus,
    Prepare,
    PrePrepare,
    Reply,
    Request,
    StateReply,
    StateRequest,
    Suspect,
    ViewChange,
    batch_digest,
    block_hash,
    commit_quorum,
    max_faulty,
    prepare_quorum,
    primary_of,
)
from dtnbus.pool import Pooled, RequestPool
from dtnbus.state_transfer import check_reply_shape
from dtnbus.view_change import (
    NewViewPlan,
    ViewChangeVote,
    check_view_change,
    max_proofs,
    plan_new_view,
)
from dtnbus.wire import Envelope, Unverified, is_tagged

Signer = Callable[[Message], bytes]
UNNEEDED = "unneeded"  # `admit`'s answer for a vote no slot needs: skip it, uncounted
_BUDGETED: dict[type, str] = {ViewChange: "view_change", NewView: "new_view",
                              Suspect: "suspect", PeerStatus: "status", Fetch: "fetch",
                              StateRequest: "state"}
# outcomes this block decides on its own: answered at once (the others were decided
# before, and the ledger holds their one true answer)
DIRECT_ANSWERS = frozenset({Outcome.EXECUTED, Outcome.CONFLICT, Outcome.REFUSED})
# requests we hold but never order (`Replica.unvouched`: our MAC tag failed, or the client
# is distrusted), for a slot that may need them: bounded, oldest out first
UNVOUCHED_MAX = 256
UNVOUCHED_BYTES = 8 * 2**20
# how long a client whose MAC tag failed here on a request the order needed (or on its own
# CURVE connection) is not trusted by its tags: its correct self signs meanwhile
DISTRUST_SECONDS = 600.0
# the primary's pace (ReplicaConfig.pace_factor): judged on this many PRE-PREPAREs in a row,
# against the slowest of this many recent rounds (no judgement before that many)
PACE_SAMPLES = 8
PACE_ROUNDS = 16


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    """Protocol parameters; every replica of a cluster must use the same ones."""

    replica_id: int
    n: int
    batch_max_txs: int = 4096  # the primary cuts a batch at this many transactions...
    batch_max_requests: int = 1024
    batch_delay: float = 0.002  # ...or when its oldest request waited this long...
    pipeline: int = 4  # ...or at once when fewer batches than this are in flight
    busy_pending: int = 64  # with this many requests waiting and a batch in flight, the
    # primary waits for that batch to execute and then orders them all in one: per-batch
    # work (votes, signatures, fsync) is paid per batch, so under load bigger batches win
    window: int = 256  # high watermark = stable checkpoint + window
    checkpoint_interval: int = 64
    retransmit_after: float = 1.0
    fetch_after: float = 1.0  # wait this long for a client's own copy before fetching
    max_requests: int = 50_000  # bound on request bodies held (the pool)...
    max_pool_bytes: int = 256 * 1024 * 1024  # ...and on their bytes
    reply_cache: int = 100_000  # recent replies kept to answer retransmissions at once
    session_window: int = 4096  # numbers one client session may have outstanding
    sessions_per_client: int = 1024
    max_sessions: int = 200_000
    tentative: bool = True  # reply once prepared (PBFT tentative execution): saves a hop;
    # durable (the prepared certificate is on disk first) and safe (clients need q of them)
    speculative: bool = True  # the fast path: also reply once pre-prepared (before any
    # vote); a client needs all n matching in one view, and the new-view rule keeps them;
    # skipped under load: the node reports its loop CPU-bound (`Replica.backlogged`), or
    # the batch and the requests waiting reach `busy_pending`
    reply_after_tentative: bool = False  # also send the committed reply of a request that
    # was answered tentatively (Castro-Liskov do not: a client that lacks q tentative
    # replies asks again and gets it then); `dtnbus sync` turns it on to time execution
    view_change_timeout: float = 5.0  # the oldest waiting request waited this long:
    # suspect the primary (doubles with each view change that brings no progress)
    pace_factor: float = 4.0  # a backup suspects a primary whose PRE-PREPAREs, PACE_SAMPLES
    # in a row, came later after the newest request of their batch than this many of its
    # own slowest recent rounds per batch queued ahead (and pace_floor): a slow primary must
    # not throttle the bus just short of the view-change timer (Aardvark, Prime); 0: off
    pace_floor: float = 0.05  # seconds
    status_interval: float = 1.0  # PeerStatus every this many seconds (times n/16 if larger)

    def __post_init__(self) -> None:
        if self.n < 1 or not 0 <= self.replica_id < self.n:
            raise ValueError(f"replica id {self.replica_id} is not in 0..{self.n - 1}")
        if self.checkpoint_interval < 1 or self.window < 2 * self.checkpoint_interval:
            raise ValueError("window must be at least twice the checkpoint interval")
        if min(self.batch_max_txs, self.batch_max_requests, self.pipeline,
               self.busy_pending) < 1:
            raise ValueError("batch sizes and pipeline depth must be positive")
        if min(self.max_requests, self.max_pool_bytes, self.session_window,
               self.sessions_per_client, self.max_sessions) < 1:
            raise ValueError("pool, session and client-table bounds must be positive")
        if min(self.view_change_timeout, self.retransmit_after, self.status_interval,
               self.pace_floor) <= 0:
            raise ValueError("timeouts and intervals must be positive")
        if self.pace_factor < 0:
            raise ValueError("pace_factor must be 0 (off) or positive")


class Replica:
    """One PBFT replica's protocol state. Inspect it freely; change it only through
    `step`, `tick`, `adopt_state` and `restore`."""

    def __init__(self, config: ReplicaConfig, sign: Signer,
                 admitted: dict[str, str] | None = None, operators: frozenset[str] = frozenset(),
                 open_admission: bool = False) -> None:
        """`admitted`/`operators`/`open_admission`: the cluster file's client admission at
        genesis (see `dtnbus.admission`); None admits whoever the wire authenticates."""
        self.config = config
        self.sign = sign
        self.id = config.replica_id
        self.n = config.n
        self.f = max_faulty(config.n)
        self.q = commit_quorum(config.n)
        self.view = 0
        self.active = True  # False between sending VIEW-CHANGE and accepting NEW-VIEW
        self.view_started = 0.0  # when we entered this view (or left the last one)
        self.next_seq = 1  # the primary's next sequence number to assign
        self.backlogged = False  # set by the host: its loop has had no idle time lately
        # (CPU-bound); a pure input, so the simulator and tests leave it False or set it
        self.last_executed = 0
        self.head = GENESIS  # hash of the last executed block
        self.executed_txs = 0
        self.executed_digests: dict[int, bytes] = {}  # seq above stable -> batch digest
        self.slots: dict[int, Slot] = {}
        self.pool = RequestPool(config.max_requests, config.max_pool_bytes)
        self.clients = ClientTable(config.session_window, config.sessions_per_client,
                                   config.max_sessions, admitted, operators, open_admission)
        # recent answers, kept to answer a retransmission at once: (view, request digest,
        # seq, position, block hash, outcome) per identity; the Reply is built on a hit
        self.replies: OrderedDict[tuple[str, int, int],
                                  tuple[int, bytes, int, int, bytes, int]] = OrderedDict()
        self.checkpoints = Checkpoints(self.q)
        # view change
        self.vc_timeout = config.view_change_timeout
        self.suspects: set[int] = set()  # replicas that suspect the primary of this view
        self.suspect_sent = -1.0  # when we last said so (-1: we do not suspect)
        self.view_changes: dict[int, ViewChangeVote] = {}  # newest per replica
        self.own_vc: tuple[ViewChange, bytes] | None = None
        self.vc_sent = 0.0
        self.new_view_frame = b""  # the NEW-VIEW that started this view, for lagging peers
        self.expected: dict[int, tuple[bytes, ...]] = {}  # seq -> digests the NEW-VIEW fixed
        # what we know of the others, and catching up with them
        self.catchup = CatchUp(self.id, self.f, self.q, config.retransmit_after)
        self.next_status = 0.0
        self.helped_view: dict[int, float] = {}
        # peers that wait alone in a later view (they may not come back: chaos-1)
        self.lone: dict[int, tuple[int, float]] = {}  # replica -> (its view, seen since)
        self.lone_grace = 4 * config.view_change_timeout
        # digest -> (request, authenticated here): requests we hold but never order
        self.held_requests: OrderedDict[bytes, tuple[Envelope, bool]] = OrderedDict()
        self.held_bytes = 0
        # client -> until when we order none of its MAC-tagged requests (only signed
        # ones): its tag failed here on a request the order needed, see `unvouched`
        self.tags_distrusted: dict[str, float] = {}
        # the primary's pace, as a backup sees it (`_judge_pace`): how long the newest
        # request of its last batches waited here, and how long our own rounds
        # (pre-prepared -> executed) take
        self.pace_waits: deque[float] = deque(maxlen=PACE_SAMPLES)
        self.rounds: deque[float] = deque(maxlen=PACE_ROUNDS)
        # what a correct peer needs at most, per authenticated sender (a forger's frames fail
        # their signature check before they are charged: chaos-2); proofs are bounded by
        # the shape checks, not by a bucket a legitimate NEW-VIEW might not fit (sim-3)
        changes = 2.0 / config.view_change_timeout  # a correct replica moves on once a timeout
        self.budget = PeerBudget({
            "view_change": (changes, 4.0), "new_view": (changes, 4.0),
            "suspect": (4.0, 8.0), "status": (10.0, 10.0), "fetch": (50.0, 100.0),
            "state": (20.0, 20.0),
            # the bodies a peer's Fetches make us forward: bytes we queue for it (chaos-4)
            "fetch_bytes": (16.0 * 2**20, 32.0 * 2**20),
        })

    # ------------------------------------------------------------ queries

    @property
    def primary(self) -> int:
        return primary_of(self.view, self.n)

    @property
    def is_primary(self) -> bool:
        return self.primary == self.id

    @property
    def stable_checkpoint(self) -> int:
        return self.checkpoints.stable.seq

    @property
    def low(self) -> int:
        return self.checkpoints.stable.seq

    @property
    def high(self) -> int:
        return self.checkpoints.stable.seq + self.config.window

    @property
    def pending(self) -> int:
        return len(self.pool.pending)

    def in_flight(self) -> int:
        """Sequences ordered (by us as primary, or seen) but not yet executed."""
        return max(self.next_seq - 1, max(self.slots, default=0)) - self.last_executed

    def _status_every(self) -> float:
        return self.config.status_interval * max(1.0, self.n / 16)

    def next_wakeup(self, heartbeat: bool = True) -> float | None:
        """The earliest `now` at which `tick` has something to do (None: only on input).
        `heartbeat=False` leaves out the periodic status message (a quiet cluster)."""
        cfg = self.config
        times = [self.next_status] if heartbeat else []
        catchup = self.catchup.wakeup()
        if catchup is not None:
            times.append(catchup)
        if self.active:
            if self.suspect_sent < 0:
                times.extend(max(since, self.view_started) + self.lone_grace
                             for view, since in self.lone.values() if view > self.view)
            oldest = self.pool.oldest_waiting()
            if oldest is not None and not self.catchup.asking:
                if self.suspect_sent < 0:
                    times.append(max(oldest, self.view_started) + self.vc_timeout)
                else:
                    times.append(self.suspect_sent + cfg.retransmit_after)
        else:
            times.append(min(self.view_started + self.vc_timeout,
                             self.vc_sent + cfg.retransmit_after))
        due = self._batch_due()
        if due is not None:
            times.append(due)
        for slot in self.slots.values():
            if slot.executed and slot.committed:
                continue
            if slot.missing:
                times.append(slot.missing_since + cfg.fetch_after * (1 + slot.fetch_round))
            if slot.preprepare is not None or slot.prepares or slot.commits:
                times.append(slot.last_progress + cfg.retransmit_after)
        return min(times) if times else None

    def _can_order(self) -> bool:
        return (self.next_seq <= self.high
                and self.next_seq - 1 - self.last_executed < self.config.pipeline)

    # ------------------------------------------------------------ admission

    def admit(self, raw: Unverified, now: float) -> str | None:
        """Before any signature is checked: would `step` use this message, and is its
        shape sane? None: verify it and step it. UNNEEDED: a vote no slot needs (skip it,
        about 1/3 of all votes at large n). Anything else: a drop reason."""
        msg = raw.msg
        if type(msg) is Request:  # the common case: nothing to check before its MAC
            return None
        if isinstance(msg, PrePrepare | Prepare | Commit):
            # what `step` would drop anyway costs no signature check (a flood of them
            # drains at parse speed: chaos-5); a higher view goes on, as evidence
            if msg.view < self.view or (msg.view == self.view and not self.active):
                return "stale_view"
            from_primary = msg.replica == primary_of(msg.view, self.n)
            if isinstance(msg, PrePrepare) != from_primary and not isinstance(msg, Commit):
                return "unknown_sender"  # only the primary orders; it never prepares
            if msg.view == self.view and not self.low < msg.seq <= self.high:
                return "out_of_window"
        if isinstance(msg, Prepare | Commit):
            slot = self.slots.get(msg.seq)
            if slot is None or msg.view != slot.view:
                return None
            votes = slot.commits if isinstance(msg, Commit) else slot.prepares
            if msg.replica in votes:
                return None  # a repeated vote signals a peer that lost ours
            return UNNEEDED if (slot.committed if isinstance(msg, Commit) else slot.prepared) \
                else None
        if isinstance(msg, Checkpoint):
            return None if msg.seq > self.stable_checkpoint else UNNEEDED
        if isinstance(msg, PrePrepare):
            return "malformed" if len(msg.digests) > self.config.batch_max_requests else None
        if isinstance(msg, ViewChange):
            return self._admit_view_change(msg, raw.nested, now)
        if isinstance(msg, NewView):
            if msg.view < self.view or (msg.view == self.view and self.active) or msg.view == 0:
                return "stale_view"
            if msg.replica != primary_of(msg.view, self.n):
                return "unknown_sender"
            if not self.q <= len(msg.view_changes) <= self.n:
                return "malformed"
            for inner in raw.nested:
                vc = inner.msg
                if not isinstance(vc, ViewChange) or vc.new_view != msg.view:
                    return "malformed"
                checked = check_view_change(vc, [(p.msg, p.frame) for p in inner.nested],
                                            self.n, self.config.window,
                                            self.config.batch_max_requests)
                if isinstance(checked, str):
                    return "malformed"
            return None
        if isinstance(msg, Suspect):
            return "stale_view" if msg.view != self.view or not self.active else None
        if isinstance(msg, Fetch):
            return "malformed" if len(msg.digests) > self.config.batch_max_requests else None
        if isinstance(msg, StateReply):
            if msg.replica != self.catchup.asked or msg.from_seq != self.last_executed + 1:
                return "unsolicited"
            return check_reply_shape(msg, self.q)
        return None

    def charge(self, msg: Message, now: float) -> str | None:
        """After the sender's own signature held, before anything costly is done for it
        (its nested proofs checked, a state reply built): is the sender within what a
        correct peer needs? None, or "rate_limited"."""
        kind = _BUDGETED.get(type(msg))
        if kind is None:
            return None
        return None if self.budget.allow(msg.replica, kind, now) else "rate_limited"

    def _admit_view_change(self, vc: ViewChange, nested: tuple[Unverified, ...],
                           now: float) -> str | None:
        if vc.new_view < self.view or (vc.new_view == self.view and self.active):
            return "stale_view"
        held = self.view_changes.get(vc.replica)
        if held is not None and held.new_view >= vc.new_view:
            return "duplicate"  # one VIEW-CHANGE per replica: its newest
        if len(vc.proofs) > max_proofs(self.n, self.config.window):
            return "malformed"
        checked = check_view_change(vc, [(p.msg, p.frame) for p in nested], self.n,
                                    self.config.window, self.config.batch_max_requests)
        return "malformed" if isinstance(checked, str) else None

    # ------------------------------------------------------------ input

    def step(self, env: Envelope, now: float) -> list[Effect]:
        """Handle one authenticated message (admitted by `admit`)."""
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
        elif isinstance(msg, Suspect):
            self._on_suspect(msg, now, out)
        elif isinstance(msg, PeerStatus):
            self._on_peer_status(msg, now, out)
        elif isinstance(msg, Fetch):
            self._on_fetch(msg, now, out)
        else:
            out.append(Drop("malformed", msg.replica if hasattr(msg, "replica") else None))
        return out

    def tick(self, now: float) -> list[Effect]:
        """Let time pass: cut due batches, fetch missing bodies, retransmit stalled votes,
        suspect a primary, catch up, tell the others how we are."""
        out: list[Effect] = []
        cfg = self.config
        if self.view_started < 0:  # the first tick after a restart: the clock starts now
            self.view_started = self.vc_sent = now
            self.catchup.clock_starts(now)
            for slot in self.slots.values():  # restored without their bodies: fetch them
                if slot.missing:  # now (no client sends them again), then per fetch_after
                    slot.missing_since = now - cfg.fetch_after
        if now >= self.next_status:
            self.next_status = now + self._status_every()
            self._broadcast(PeerStatus(self.id, self.view, self.active, self.last_executed,
                                       self.stable_checkpoint), out)
        peer = self.catchup.next_peer(self.view, self.last_executed, now)
        if peer is not None:
            self._send(peer, StateRequest(self.id, self.last_executed + 1), out)
        self._view_change_timer(now, out)
        if self.is_primary:
            self._cut_batches(now, out)
        for slot in list(self.slots.values()):
            if slot.executed and slot.committed:
                continue
            if slot.missing and now >= slot.missing_since + cfg.fetch_after * (
                    1 + slot.fetch_round):
                # ask the primary first, then each other replica in turn
                target = (self.primary + slot.fetch_round) % self.n
                if target == self.id:
                    target = (target + 1) % self.n
                slot.fetch_round += 1
                self._send(target, Fetch(self.id, tuple(sorted(slot.missing))[
                    :cfg.batch_max_requests]), out)
            if now >= slot.last_progress + cfg.retransmit_after:
                slot.last_progress = now
                self._retransmit(slot, out)
        return out

    # ------------------------------------------------------------ sending

    def _broadcast(self, msg: Message, out: list[Effect]) -> bytes:
        frame = self.sign(msg)
        out.append(Broadcast(msg, frame))
        return frame

    def _send(self, to: int, msg: Message, out: list[Effect]) -> bytes:
        frame = self.sign(msg)
        out.append(Send(to, msg, frame))
        return frame

    # ------------------------------------------------------------ requests

    def _on_request(self, msg: Request, env: Envelope, now: float, out: list[Effect]) -> None:
        if env.tagged and self.tags_distrusted and self._distrusts(msg.client, now) \
                and env.digest not in self.pool.missing and env.digest not in self.pool:
            self._hold(env, authentic=True)  # never ordered by us; a slot may take it
            return
        ident = (msg.client, msg.session, msg.number)
        # a body an ordered slot waits for is taken whatever its identity says: the order
        # decides its outcome (CONFLICT, STALE); refused, the slot never prepares here
        if env.digest not in self.pool.missing and self.clients.is_decided(*ident):
            cached = self.replies.get(ident)
            if cached is not None and cached[1] == env.digest:  # a replay: answer it, never
                out.append(SendClient(msg.client, Reply(  # execute it again
                    cached[0], self.id, *ident, env.digest, *cached[2:])))
            else:
                out.append(LookupReply(*ident, env.digest, self.view))
            return
        if env.digest in self.pool:
            out.append(Drop("duplicate", msg.client))
            return
        if env.digest not in self.pool.missing and not self.pool.has_room(len(env.frame)):
            out.append(Drop("pool_full", msg.client))
            out.append(SendClient(msg.client, Reply(self.view, self.id, *ident, env.digest, 0, 0,
                                                    b"", Outcome.BUSY)))
            return
        for slot in self._pool_body(env.digest, msg, env.frame, now):
            self._progress(slot, now, out)  # a body it was missing

    def _pool_body(self, digest: bytes, msg: Request, frame: bytes,
                   now: float) -> list[Slot]:
        """Hold a new body; the slots that waited for it (no longer missing it)."""
        waiting = []
        for seq in sorted(self.pool.add(digest, msg, frame, now)):
            slot = self.slots.get(seq)
            if slot is not None:
                slot.missing.discard(digest)
                waiting.append(slot)
        return waiting

    def unvouched(self, env: Envelope, now: float, from_client: bool = False) -> list[Effect]:
        """A request whose MAC tag for us failed (the host counted it dropped). A faulty
        client can make its authenticator hold at some replicas only (Aardvark's "Big MAC
        attack"): the primary may order it, and those that cannot take it would never
        prepare, which stalls every later sequence once f + 1 of them are stuck. So we
        hold it, and take it for a slot that f + 1 replicas vouch for: at least one of
        them is correct and authenticated it with its own tag. We never order it
        ourselves (it never enters the pending queue).

        Held at f or fewer replicas, the primary among them, no one can vouch: the slot
        waits for a view change. So we stop trusting the client's tags (`_distrust`) once
        the primary's PRE-PREPARE needs a request whose tag fails here: the primary signed
        that it took this very request, so a spoofed copy cannot do it (with or without
        CURVE, and whether the body came from the client or by Fetch). Under CURVE a
        failed tag on the client's own connection (`from_client`; a replica's forward
        proves nothing of the client) does it at once."""
        out: list[Effect] = []
        digest = env.digest
        if not isinstance(env.msg, Request):
            return out
        if from_client:
            self._distrust(env.msg.client, now)
        if digest in self.pool:
            return out
        waiting = [slot for seq in self.pool.missing.get(digest, ())
                   if (slot := self.slots.get(seq)) is not None]
        if waiting:
            self._distrust(env.msg.client, now)  # a PRE-PREPARE set each slot's `missing`
        if any(self._vouched(slot) for slot in waiting):
            self._on_request(env.msg, env, now, out)
            return out
        self._hold(env, authentic=False)
        return out

    def _distrust(self, client: str, now: float) -> None:
        """Order none of `client`'s MAC-tagged requests for `DISTRUST_SECONDS` (a correct
        client signs when its request is not answered, `Client.resend_frame`). A faulty
        primary can have a correct client distrusted this way (it orders a request it
        made up in the client's name): that costs the client a signature per request for
        a while, and the primary its view. Expired entries go when a client is distrusted anew."""
        fresh = not self._distrusts(client, now)
        if fresh:
            self.tags_distrusted = {c: u for c, u in self.tags_distrusted.items() if u > now}
        self.tags_distrusted[client] = now + DISTRUST_SECONDS
        if fresh:
            self._unpend_distrusted(now)

    def _unpend_distrusted(self, now: float) -> None:
        """Take the distrusted clients' MAC-tagged requests off the pending queue into the
        held ones (a slot may still take them). As primary we would order them, and a
        batch in which each backup lacks a different one of them never prepares
        anywhere; as a backup our view-change timer would wait for them. Run when a
        client is distrusted and when a view starts (its releases queue requests again)."""
        for digest in list(self.pool.pending):
            pooled = self.pool.get(digest)
            if pooled is not None and self._distrusts(pooled.msg.client, now) \
                    and is_tagged(pooled.frame):
                self.pool.discard_pending(digest)
                self._hold(Envelope(pooled.msg, digest, pooled.frame, (), True), authentic=True)

    def distrusted_clients(self, now: float) -> int:
        """How many clients we order only signed requests from now (a gauge)."""
        return sum(1 for until in self.tags_distrusted.values() if until > now)

    def _distrusts(self, client: str, now: float) -> bool:
        until = self.tags_distrusted.get(client)
        return until is not None and until > now

    def _hold(self, env: Envelope, authentic: bool) -> None:
        """Keep a request we will not order, for a slot that may need it (bounded)."""
        if env.digest in self.held_requests:
            return
        self.held_requests[env.digest] = (env, authentic)
        self.held_bytes += len(env.frame)
        while len(self.held_requests) > UNVOUCHED_MAX or self.held_bytes > UNVOUCHED_BYTES:
            self.held_bytes -= len(self.held_requests.popitem(last=False)[1][0].frame)

    def _vouched(self, slot: Slot) -> bool:
        """f + 1 other replicas stand behind this slot's batch: its PRE-PREPARE's sender
        and those who PREPAREd or COMMITted its digest (each had every body of it)."""
        if slot.preprepare is None:
            return False
        digest = slot.digest
        vouchers = {slot.preprepare.replica}
        vouchers.update(r for r, d in slot.prepares.items() if d == digest)
        vouchers.update(r for r, d in slot.commits.items() if d == digest)
        vouchers.discard(self.id)
        return len(vouchers) > self.f

    def _take_held(self, slot: Slot, now: float) -> list[Slot]:
        """The held bodies this slot lacks, into the pool: those our own tag authenticated,
        and the others once f + 1 replicas vouch for the slot; the other slots that waited
        for them too (they progress after this one)."""
        others: list[Slot] = []
        vouched: bool | None = None
        for digest in [d for d in slot.missing if d in self.held_requests]:
            env, authentic = self.held_requests[digest]
            assert isinstance(env.msg, Request)
            if not authentic:
                self._distrust(env.msg.client, now)  # the primary ordered it (`unvouched`)
                if vouched is None:
                    vouched = self._vouched(slot)
                if not vouched:
                    continue
            del self.held_requests[digest]
            self.held_bytes -= len(env.frame)
            others += (waiting for waiting in self._pool_body(digest, env.msg, env.frame, now)
                       if waiting is not slot)
        return others

    def _batch_due(self) -> float | None:
        """When the primary may cut its next batch (None: not before more input).

        Natural batching, cut on load: a full batch at once; the first batch at once when
        nothing is in flight; while few requests wait, another partial batch after
        `batch_delay` (pipelined, for latency) or, when the host says its loop is
        CPU-bound (`backlogged`), once the last batch prepared: on a saturated machine a
        batch's fixed cost (votes, signatures, fsync) is what queues everyone, while on
        long links the timer keeps batches overlapping; while many wait, none until the
        batch in flight executes, which then orders everything that waited in one batch."""
        if not (self.is_primary and self.active and self.pool.pending and self._can_order()):
            return None
        cfg = self.config
        oldest = self.pool.oldest_pending()
        assert oldest is not None
        waiting = len(self.pool.pending)
        if (waiting >= cfg.batch_max_requests or self.pool.pending_txs >= cfg.batch_max_txs
                or self.next_seq - 1 == self.last_executed):
            return oldest
        if waiting >= cfg.busy_pending:
            return None
        if self.backlogged:  # CPU-bound: one batch per prepare phase, not per batch_delay
            last = self.slots.get(self.next_seq - 1)
            return oldest if last is None or last.prepared else None
        return oldest + cfg.batch_delay

    def _cut_batches(self, now: float, out: list[Effect]) -> None:
        """Order what `_batch_due` says is due, never more than `pipeline` batches in
        flight or beyond the high watermark."""
        cfg = self.config
        while (due := self._batch_due()) is not None and now >= due:
            digests = self.pool.take_batch(cfg.batch_max_requests, cfg.batch_max_txs)
            self._pre_prepare(self.next_seq, tuple(digests), now, out)

    def _pre_prepare(self, seq: int, digests: tuple[bytes, ...], now: float,
                     out: list[Effect]) -> None:
        """As primary: order `digests` at `seq`, durably, then tell the backups."""
        self.next_seq = max(self.next_seq, seq + 1)
        pp = PrePrepare(self.view, seq, self.id, digests)
        frame = self.sign(pp)
        out.append(Persist("preprepare", (self.view, seq), (digests, frame)))
        slot = self._slot(seq, now)
        slot.pp_frame = frame
        self._accept_preprepare(slot, pp, now, out)
        out.append(Broadcast(pp, frame))

    # ------------------------------------------------------------ three phases

    def _slot(self, seq: int, now: float) -> Slot:
        slot = self.slots.get(seq)
        if slot is None:
            slot = self.slots[seq] = Slot(seq, self.view, last_progress=now)
        return slot

    def _admissible(self, view: int, seq: int, sender: int, now: float,
                    out: list[Effect]) -> bool:
        if view > self.view:
            self.catchup.voted_in(sender, view, now)
        if view != self.view or not self.active:
            out.append(Drop("stale_view", sender))
            return False
        if not self.low < seq <= self.high:
            out.append(Drop("out_of_window", sender))
            return False
        return True

    def _on_preprepare(self, pp: PrePrepare, frame: bytes, now: float,
                       out: list[Effect]) -> None:
        if not self._admissible(pp.view, pp.seq, pp.replica, now, out):
            return
        if pp.replica != primary_of(pp.view, self.n) or pp.replica == self.id:
            out.append(Drop("unknown_sender", pp.replica))  # only the view's primary orders
            return
        expected = self.expected.get(pp.seq)
        if (expected is not None and expected != pp.digests) or \
                len(set(pp.digests)) != len(pp.digests):
            out.append(Drop("malformed", pp.replica))  # the NEW-VIEW fixed it otherwise
            return
        slot = self._slot(pp.seq, now)
        digest = batch_digest(pp.digests)
        if slot.preprepare is not None or (slot.sent_prepare and slot.digest != digest):
            if slot.preprepare != pp:
                # equivocation (or what we promised before a restart): never a second vote
                out.append(Drop("duplicate", pp.replica))
            else:
                self._help_peer(slot, pp.replica, now, out)
            return
        slot.pp_frame = frame
        self._accept_preprepare(slot, pp, now, out)

    def _accept_preprepare(self, slot: Slot, pp: PrePrepare, now: float,
                           out: list[Effect]) -> None:
        slot.preprepare = pp
        slot.view = pp.view
        slot.digest = batch_digest(pp.digests)
        slot.t_preprepare = slot.last_progress = now
        if slot.seq <= self.last_executed:
            # ordered again after we executed it (a view change): the same batch, or the
            # cluster has lost safety; vote for it without needing the bodies again
            if self.executed_digests.get(slot.seq) != slot.digest:
                slot.preprepare = None
                out.append(Drop("malformed", pp.replica))
                return
            slot.executed = True
        else:
            slot.refs = pp.digests
            slot.missing = self.pool.order(slot.seq, pp.digests)
            if slot.missing:
                slot.missing_since = now
        held = [p for d in pp.digests if (p := self.pool.get(d)) is not None]
        first = min((p.arrived for p in held), default=now)
        slot.t_first_request = first
        out.append(Observe("request_to_preprepare", now - first))
        if (held and pp.view == self.view and pp.replica != self.id and self.active
                and not self.catchup.asking):
            self._judge_pace(max(held, key=lambda p: p.arrived), now, out)
        self._progress(slot, now, out)

    def _on_vote(self, vote: Prepare | Commit, frame: bytes, now: float, out: list[Effect],
                 is_commit: bool) -> None:
        if not self._admissible(vote.view, vote.seq, vote.replica, now, out):
            return
        if not is_commit and vote.replica == primary_of(vote.view, self.n):
            out.append(Drop("unknown_sender", vote.replica))  # its PRE-PREPARE is its prepare
            return
        slot = self._slot(vote.seq, now)
        votes = slot.commits if is_commit else slot.prepares
        if vote.replica in votes:
            out.append(Drop("duplicate", vote.replica))
            self._help_peer(slot, vote.replica, now, out)
            return
        votes[vote.replica] = vote.digest
        (slot.commit_frames if is_commit else slot.prepare_frames)[vote.replica] = frame
        self._progress(slot, now, out)

    def _progress(self, slot: Slot, now: float, out: list[Effect]) -> None:
        """Advance a slot as far as its votes allow, then execute what is in order. A slot
        we executed before a view change still votes (others may need our COMMIT), but
        never executes twice."""
        if slot.missing and self.held_requests:
            for other in self._take_held(slot, now):
                self._progress(other, now, out)
        if slot.preprepare is None or slot.missing:
            return
        if not self.active or slot.view != self.view:
            # a replica that left a view never speaks in it again: its VIEW-CHANGE showed
            # what it had prepared there, and nothing may be added behind its back (sim-2)
            return
        me = self.id
        if not slot.sent_prepare and me != primary_of(slot.view, self.n):
            slot.sent_prepare = True
            vote = Prepare(slot.view, slot.seq, me, slot.digest)
            frame = self.sign(vote)
            slot.prepares[me] = slot.digest
            slot.prepare_frames[me] = frame
            out.append(Persist("prepare", (slot.view, slot.seq), (slot.digest, frame)))
            out.append(Broadcast(vote, frame))
        self._reply_early(slot, out)  # the fast path: pre-prepared, and we said so
        if not slot.prepared and slot.matching(slot.prepares) >= prepare_quorum(self.n):
            slot.prepared = True
            slot.t_prepared = slot.last_progress = now
            out.append(Observe("preprepare_to_prepared", now - slot.t_preprepare))
            cert = slot.prepared_cert(prepare_quorum(self.n))
            assert cert is not None
            slot.cert = cert
            vote = Commit(slot.view, slot.seq, me, slot.digest)
            frame = self.sign(vote)
            slot.commits[me] = slot.digest
            slot.commit_frames[me] = frame
            out.append(Persist("prepared", (slot.seq,), (cert.view, cert.digests, cert.frames)))
            out.append(Persist("commit", (slot.view, slot.seq), (slot.digest, frame)))
            out.append(Broadcast(vote, frame))
            self._reply_early(slot, out)
        if slot.prepared and not slot.committed and slot.matching(slot.commits) >= self.q:
            slot.committed = True
            slot.t_committed = slot.last_progress = now
            out.append(Observe("prepared_to_committed", now - slot.t_prepared))
            self._execute_in_order(now, out)

    def _execute_in_order(self, now: float, out: list[Effect]) -> None:
        while True:
            slot = self.slots.get(self.last_executed + 1)
            if slot is None or slot.executed:
                return
            if not slot.committed:
                self._reply_early(slot, out)  # its predecessors are now executed
                return
            self._execute(slot, now, out)

    def _reply_early(self, slot: Slot, out: list[Effect]) -> None:
        """Tentative execution and its fast path: once everything before a slot is
        executed, its result (the block hash) is determined by its batch: tell the
        clients. Prepared (tentative): q matching replies prove a quorum prepared it (the
        certificate is on disk before our COMMIT leaves). Only pre-prepared (speculative):
        n matching replies in one view prove every correct replica accepted it; we
        persist the PRE-PREPARE we answered first, our VIEW-CHANGE shows it, and
        `plan_new_view` keeps a batch f+1 votes answered (docs/protocol.md)."""
        if (slot.committed or slot.executed or slot.seq != self.last_executed + 1
                or slot.preprepare is None or slot.missing):
            return  # (a restarted replica may hold a prepared slot without its bodies: sim-5)
        if slot.prepared:
            if not self.config.tentative or slot.sent_tentative:
                return
            slot.sent_tentative = True
        else:
            # under load it is skipped: the hop it saves is then smaller than the queueing
            # its extra reply (and durable record) adds for everyone; load is a CPU-bound
            # loop (`backlogged`) or `busy_pending` requests in this batch and waiting
            if (not self.config.speculative or slot.sent_speculative or not self.active
                    or self.backlogged or slot.view != self.view or not slot.pp_frame
                    or len(slot.preprepare.digests) + len(self.pool.pending)
                    >= self.config.busy_pending
                    or not (slot.sent_prepare or slot.preprepare.replica == self.id)):
                return
            slot.sent_speculative = True
            slot.spec = (slot.view, slot.preprepare.digests, slot.pp_frame)
            out.append(Persist("speculated", (slot.seq,), slot.spec))
        speculative = not slot.prepared
        digests = slot.preprepare.digests
        requests = [self._body(d) for d in digests]
        decided = self.clients.decide_batch([(r.client, r.session, r.number, d, r.txs)
                                             for d, r in zip(digests, requests, strict=True)])
        slot.decided = (self.head, digests, decided)
        outcomes = decided[0]
        result = block_hash(self.head, slot.seq, slot.digest, outcomes)
        for pos, (digest, req) in enumerate(zip(digests, requests, strict=True)):
            if outcomes[pos] in DIRECT_ANSWERS:
                out.append(SendClient(req.client, Reply(
                    slot.view, self.id, req.client, req.session, req.number, digest, slot.seq,
                    pos, result, outcomes[pos], True, speculative)))

    def _body(self, digest: bytes) -> Request:
        pooled = self.pool.get(digest)
        assert pooled is not None, "a slot with no missing bodies holds every body"
        return pooled.msg

    def _execute(self, slot: Slot, now: float, out: list[Effect]) -> None:
        assert slot.preprepare is not None
        bodies = {}
        for d in slot.preprepare.digests:
            pooled = self.pool.get(d)
            assert pooled is not None, "a slot with no missing bodies holds every body"
            bodies[d] = (pooled.msg, pooled.frame)
        slot.executed = True
        self.vc_timeout = self.config.view_change_timeout  # progress: the view works
        if slot.view == self.view:
            self.rounds.append(now - slot.t_preprepare)
        answered = slot.sent_tentative and not self.config.reply_after_tentative
        early = slot.decided  # our early reply decided this batch on this very table?
        decided = early[2] if early is not None and early[0] == self.head \
            and early[1] == slot.preprepare.digests else None
        self._apply_block(slot.seq, slot.view, slot.preprepare.digests, bodies,
                          slot.commit_cert(self.q), slot.t_committed, out, reply=True,
                          answered=answered, decided=decided)

    def _apply_block(self, seq: int, view: int, digests: tuple[bytes, ...],
                     bodies: dict[bytes, tuple[Request, bytes]], proof: tuple[bytes, ...],
                     committed_at: float, out: list[Effect], reply: bool,
                     answered: bool = False, decided: Decision | None = None) -> None:
        """Execute one ordered batch: the same code for a committed slot and for a block
        taken by state transfer, so both make the same decisions and hashes. `answered`:
        the clients already have the (identical) tentative result; the committed replies
        are kept for whoever asks again."""
        requests = [bodies[d] for d in digests]
        outcomes = self.clients.execute_batch(
            [(r.client, r.session, r.number, d, r.txs) for d, (r, _f) in zip(digests, requests,
                                                                               strict=True)],
            decided)
        ordered = [OrderedRequest(r.client, r.session, r.number, d, frame, len(r.txs), oc)
                   for d, (r, frame), oc in zip(digests, requests, outcomes, strict=True)]
        for d in digests:
            self.pool.executed(d)
        for r in ordered:  # another request waiting under an identity this block decided
            for other in self.pool.pending_under(r.client, r.session, r.number):
                self.pool.discard_pending(other)  # never ordered now: answer it as decided
                if reply:
                    out.append(LookupReply(r.client, r.session, r.number, other, view))
        digest = batch_digest(digests)
        prev = self.head
        self.head = block_hash(prev, seq, digest, outcomes)
        self.last_executed = seq
        self.executed_digests[seq] = digest
        self.next_seq = max(self.next_seq, seq + 1)
        block = Execute(seq, view, digest, prev, self.head, digests, tuple(ordered), outcomes,
                        proof, committed_at, self.clients.drain())
        self.executed_txs += block.executed_txs
        out.append(block)
        if reply:
            head = self.head
            for pos, r in enumerate(ordered):
                if r.outcome in DIRECT_ANSWERS:
                    key = (r.client, r.session, r.number)
                    self._cache_reply(key, (view, r.digest, seq, pos, head, r.outcome))
                    if not answered:
                        out.append(SendClient(r.client, Reply(
                            view, self.id, *key, r.digest, seq, pos, head, r.outcome)))
                else:  # decided before: the ledger holds its one true answer
                    out.append(LookupReply(r.client, r.session, r.number, r.digest, view))
        if seq % self.config.checkpoint_interval == 0:
            self.checkpoints.own[seq] = self.head
            cp = Checkpoint(self.id, seq, self.head)
            frame = self._broadcast(cp, out)
            self.checkpoints.vote(seq, self.id, self.head, frame)
            self._try_stabilize(seq, out)

    def _cache_reply(self, key: tuple[str, int, int],
                     answer: tuple[int, bytes, int, int, bytes, int]) -> None:
        replies = self.replies
        if key in replies:
            replies.move_to_end(key)
        replies[key] = answer
        while len(replies) > self.config.reply_cache:
            replies.popitem(last=False)

    # ------------------------------------------------------------ checkpoints

    def _on_checkpoint(self, cp: Checkpoint, frame: bytes, now: float,
                       out: list[Effect]) -> None:
        if cp.seq > self.high:
            self.catchup.checkpoint_beyond(cp.replica, cp.seq, now)
            out.append(Drop("out_of_window", cp.replica))
            return
        if cp.seq <= self.stable_checkpoint or cp.seq % self.config.checkpoint_interval:
            out.append(Drop("out_of_window", cp.replica))
            return
        if not self.checkpoints.vote(cp.seq, cp.replica, cp.state, frame):
            out.append(Drop("duplicate", cp.replica))
            return
        self._try_stabilize(cp.seq, out)
        if cp.seq > self.last_executed and self.checkpoints.matching(cp.seq, cp.state) >= self.q:
            self.catchup.behind(now)  # a quorum executed past us: fetch if we do not move

    def _try_stabilize(self, seq: int, out: list[Effect]) -> None:
        stable = self.checkpoints.provable(seq)
        if stable is not None:
            self._adopt_stable(stable, out)

    def _adopt_stable(self, stable: StableCheckpoint, out: list[Effect]) -> None:
        """A checkpoint proved to us, with its proof: collect the log below it, move the
        window, and let the disk forget what it no longer needs."""
        self.checkpoints.adopt(stable)
        for old in [s for s in self.slots if s <= stable.seq]:
            self.pool.release(old, self.slots.pop(old).refs, requeue=False)
        for old in [s for s in self.executed_digests if s <= stable.seq]:
            del self.executed_digests[old]
        for old in [s for s in self.expected if s <= stable.seq]:
            del self.expected[old]
        out.append(Persist("stable", (), (stable.seq, stable.state, stable.proof)))
        out.append(Forget(stable.seq))
        out.append(CheckpointStable(stable.seq))

    # ------------------------------------------------------------ recovery of lost messages

    def _on_fetch(self, fetch: Fetch, now: float, out: list[Effect]) -> None:
        for digest in fetch.digests:
            pooled = self.pool.get(digest)
            if pooled is None:
                continue
            if not self.budget.allow(fetch.replica, "fetch_bytes", now, len(pooled.frame)):
                out.append(Drop("rate_limited", fetch.replica))
                return
            out.append(Forward(fetch.replica, pooled.frame))

    def _retransmit(self, slot: Slot, out: list[Effect]) -> None:
        """A stalled slot re-sends what this replica already said about it (the same
        signed frames: never a second, different statement)."""
        if slot.pp_frame and slot.preprepare is not None and slot.preprepare.replica == self.id:
            out.append(Broadcast(slot.preprepare, slot.pp_frame))
        for votes, frames, kind in ((slot.prepares, slot.prepare_frames, Prepare),
                                    (slot.commits, slot.commit_frames, Commit)):
            if self.id in votes and frames.get(self.id):
                out.append(Broadcast(kind(slot.view, slot.seq, self.id, votes[self.id]),
                                     frames[self.id]))

    def _help_peer(self, slot: Slot, peer: int, now: float, out: list[Effect]) -> None:
        """A peer repeats itself about a slot we are past: it likely lost our votes."""
        if peer == self.id or now - slot.helped.get(peer, -1e18) < self.config.retransmit_after:
            return
        slot.helped[peer] = now
        if slot.pp_frame and slot.preprepare is not None and slot.preprepare.replica == self.id:
            out.append(Forward(peer, slot.pp_frame))
        for frames in (slot.prepare_frames, slot.commit_frames):
            if frames.get(self.id):
                out.append(Forward(peer, frames[self.id]))

    # ------------------------------------------------------------ status exchange

    def _on_peer_status(self, ps: PeerStatus, now: float, out: list[Effect]) -> None:
        """What a peer says of itself: help it if it is behind us, catch up if we are."""
        behind_us = ps.view < self.view or (ps.view == self.view and not ps.active)
        if behind_us and self.active and self.new_view_frame and \
                now - self.helped_view.get(ps.replica, -1e18) >= self.config.retransmit_after:
            self.helped_view[ps.replica] = now
            out.append(Forward(ps.replica, self.new_view_frame))  # the view it missed
        self.catchup.on_status(ps, self.view, self.last_executed, self.config.pipeline, now)
        if self.active and ps.view > self.view and not ps.active:
            seen = self.lone.get(ps.replica)
            if seen is None or seen[0] != ps.view:
                self.lone[ps.replica] = (ps.view, now)
        else:
            self.lone.pop(ps.replica, None)

    # ------------------------------------------------------------ catching up

    def adopt_state(self, peer: int, height: int, blocks: list[TransferredBlock],
                    now: float) -> list[Effect]:
        """Execute blocks a peer proved (the caller checked each commit certificate and
        request signature) as if we had committed them: same decisions, same hashes,
        Execute effects to persist, no replies. Then ask again if the peer has more;
        with nothing newer from it, try the next peer that claims to be ahead."""
        out: list[Effect] = []
        blocks = [b for b in blocks if b.seq > self.last_executed]
        if not blocks or blocks[0].seq != self.last_executed + 1:
            self.catchup.nothing_from(peer, now)
            return out
        for block in blocks:
            slot = self.slots.get(block.seq)
            if slot is not None:
                slot.executed = True
            self._apply_block(block.seq, block.view, block.digests, block.bodies, block.proof,
                              0.0, out, reply=False)
        for digest in list(self.pool.pending):  # decided meanwhile (or gone stale), by the
            req = self._body(digest)  # others
            if self.clients.is_decided(req.client, req.session, req.number):
                self.pool.discard_pending(digest)
        if self.catchup.took_blocks(peer, height, self.last_executed, self.high, now) is not None:
            self._send(peer, StateRequest(self.id, self.last_executed + 1), out)  # more
        self._execute_in_order(now, out)
        return out

    # ------------------------------------------------------------ view change

    def _view_change_timer(self, now: float, out: list[Effect]) -> None:
        cfg = self.config
        if not self.active:
            # Castro-Liskov: the timer for the new view runs only once a quorum voted for
            # it; alone (or with too few), a replica waits for the others instead of
            # running ahead of them view after view (sim-1)
            # a VIEW-CHANGE for a later view is a vote that this one failed too: a voter
            # that moved on still counts (sim-4)
            voters = sum(1 for v in self.view_changes.values() if v.new_view >= self.view)
            if voters < self.q:
                self.view_started = now
            elif now >= self.view_started + self.vc_timeout:
                self._start_view_change(self.view + 1, now, out, "the new view did not start")
                return
            if now >= self.vc_sent + cfg.retransmit_after and self.own_vc is not None:
                self.vc_sent = now  # PUB/SUB may have lost it: say it again, the same frame
                out.append(Broadcast(*self.own_vc))
                self._maybe_new_view(now, out)
            return
        oldest = self.pool.oldest_waiting()
        if self.suspect_sent < 0 and self._lone_peer(now) is not None:
            # a correct replica can wait alone in a later view for good: it may not come
            # back (its VIEW-CHANGE promised silence here), so the view goes to it (chaos-1)
            self._suspect_primary(now, out)
            return
        if oldest is None or self.catchup.asking:
            return  # nothing waits; or we are behind, which says nothing of the primary
        if self.suspect_sent < 0:
            if now >= max(oldest, self.view_started) + self.vc_timeout:
                self._suspect_primary(now, out)
        elif now >= self.suspect_sent + cfg.retransmit_after:
            self.suspect_sent = now  # PUB/SUB may have lost it
            self._broadcast(Suspect(self.id, self.view), out)

    def _suspect_primary(self, now: float, out: list[Effect]) -> None:
        self.suspect_sent = now
        self.suspects.add(self.id)
        self._broadcast(Suspect(self.id, self.view), out)
        self._maybe_leave_view(now, out)

    # ------------------------------------------------------------ the primary's pace

    def _judge_pace(self, newest: Pooled, now: float, out: list[Effect]) -> None:
        """A backup's watch on the primary's pace: how long the newest request of each
        batch we hold waited here for its PRE-PREPARE. A correct primary orders in
        arrival order: within `batch_delay`, once a batch in flight executes (under
        load), or a round per batch of requests that were queued ahead of it. Later than
        `pace_factor` times that (our own slowest recent round, per batch queued ahead,
        at least `pace_floor`) PACE_SAMPLES times in a row: suspect it, as the
        view-change timer would (f + 1 suspicions change the view). Requests the primary
        never got (lost, or a tag only it cannot check) are in no batch, so they cannot
        make a correct one look slow. `newest`: the newest request of the batch we hold."""
        cfg = self.config
        waited = now - max(newest.arrived, self.view_started)  # (not its fault before)
        self.pace_waits.append(waited / (1 + newest.ahead / cfg.batch_max_requests))
        if (len(self.pace_waits) < PACE_SAMPLES or len(self.rounds) < PACE_ROUNDS
                or self.suspect_sent >= 0 or cfg.pace_factor <= 0):
            return
        backoff = self.vc_timeout / cfg.view_change_timeout  # doubles per fruitless change
        bound = max(cfg.pace_floor, cfg.pace_factor * max(self.rounds)) * backoff
        if min(self.pace_waits) > bound:
            self._suspect_primary(now, out)

    def _lone_peer(self, now: float) -> int | None:
        """A peer that has waited alone in a later view for the grace period, backed by its
        signed VIEW-CHANGE (a status message alone proves nothing)."""
        for peer, (view, since) in self.lone.items():
            vote = self.view_changes.get(peer)
            if view > self.view and now >= max(since, self.view_started) + self.lone_grace \
                    and vote is not None and vote.new_view > self.view:
                return peer
        return None

    def _on_suspect(self, suspect: Suspect, now: float, out: list[Effect]) -> None:
        if suspect.view != self.view or not self.active:
            out.append(Drop("stale_view", suspect.replica))
            return
        self.suspects.add(suspect.replica)
        self._maybe_leave_view(now, out)

    def _maybe_leave_view(self, now: float, out: list[Effect]) -> None:
        if len(self.suspects) > self.f:  # at least one correct replica suspects
            self._start_view_change(self.view + 1, now, out,
                                    f"replicas {sorted(self.suspects)} suspect primary "
                                    f"{self.primary}")

    def _start_view_change(self, new_view: int, now: float, out: list[Effect],
                           reason: str) -> None:
        """Stop working in this view and vote for `new_view`, with our proofs."""
        if new_view <= self.view:
            return
        self.view = new_view
        self.active = False
        self.view_started = self.vc_sent = now
        self.vc_timeout *= 2  # if this view does not bring progress either, wait longer
        self.suspects = set()
        self.pace_waits.clear()  # they judged the last primary
        self.suspect_sent = -1.0
        stable = self.checkpoints.stable
        certs, latest, proofs = self._vote_proofs(stable.seq)
        vc = ViewChange(new_view, self.id, stable.seq, (*stable.proof, *proofs))
        frame = self.sign(vc)
        self.own_vc = (vc, frame)
        self.view_changes[self.id] = ViewChangeVote(self.id, new_view, stable, certs, frame,
                                                    latest)
        out.append(Persist("view", (), (new_view, False)))
        out.append(Persist("view_change", (), (new_view, frame)))
        out.append(Broadcast(vc, frame))
        out.append(ViewChangeStarted(new_view, reason))
        self._maybe_new_view(now, out)

    def _vote_proofs(self, stable_seq: int) -> tuple[
            dict[int, Cert], dict[int, tuple[int, tuple[bytes, ...]]], list[bytes]]:
        """What our VIEW-CHANGE shows above the stable checkpoint: each sequence's newest
        prepared certificate and, where newer, the PRE-PREPARE we answered speculatively;
        with the per-sequence newest batch that `check_view_change` reads from them."""
        certs: dict[int, Cert] = {}
        latest: dict[int, tuple[int, tuple[bytes, ...]]] = {}
        proofs: list[bytes] = []
        for seq, slot in sorted(self.slots.items()):
            if seq <= stable_seq:
                continue
            cert = slot.prepared_cert(prepare_quorum(self.n))
            if cert is not None:
                certs[seq] = cert
                latest[seq] = (cert.view, cert.digests)
                proofs.extend(cert.frames)
            if slot.spec is not None and (cert is None or slot.spec[0] > cert.view):
                latest[seq] = slot.spec[:2]
                proofs.append(slot.spec[2])
        return certs, latest, proofs

    def _vote_of(self, env: Envelope) -> ViewChangeVote | None:
        vc = env.msg
        assert isinstance(vc, ViewChange)
        checked = check_view_change(vc, [(e.msg, e.frame) for e in env.nested], self.n,
                                    self.config.window, self.config.batch_max_requests)
        if isinstance(checked, str):
            return None
        return replace(checked, frame=env.frame)

    def _on_view_change(self, env: Envelope, now: float, out: list[Effect]) -> None:
        vc = env.msg
        assert isinstance(vc, ViewChange)
        if vc.new_view < self.view or (vc.new_view == self.view and self.active):
            out.append(Drop("stale_view", vc.replica))
            return
        held = self.view_changes.get(vc.replica)
        if held is not None and held.new_view >= vc.new_view:
            out.append(Drop("duplicate", vc.replica))
            return
        vote = self._vote_of(env)
        if vote is None:
            out.append(Drop("malformed", vc.replica))
            return
        self.view_changes[vc.replica] = vote  # one per replica, its newest
        # f+1 others want a later view: at least one correct replica suspects the
        # primary, so join the smallest such view rather than wait for our own timer
        later = sorted(v.new_view for r, v in self.view_changes.items()
                       if r != self.id and v.new_view > self.view)
        if len(later) > self.f:
            self._start_view_change(later[-(self.f + 1)], now, out,
                                    f"{len(later)} replicas moved to later views")
        self._maybe_new_view(now, out)

    def _maybe_new_view(self, now: float, out: list[Effect]) -> None:
        """As the primary of a view being changed to: announce it once q votes are in."""
        view = self.view
        if self.active or primary_of(view, self.n) != self.id:
            return
        own = self.view_changes.get(self.id)
        if own is None or own.new_view != view:
            return
        chosen = [own] + [v for r, v in sorted(self.view_changes.items())
                          if r != self.id and v.new_view == view]
        if len(chosen) < self.q:
            return
        chosen = chosen[:self.q]
        nv = NewView(view, self.id, tuple(v.frame for v in chosen))
        frame = self.sign(nv)
        out.append(Broadcast(nv, frame))
        self._enter_view(plan_new_view(view, chosen, self.n), frame, now, out)

    def _on_new_view(self, env: Envelope, now: float, out: list[Effect]) -> None:
        nv = env.msg
        assert isinstance(nv, NewView)
        if nv.view < self.view or (nv.view == self.view and self.active) or nv.view == 0:
            out.append(Drop("stale_view", nv.replica))
            return
        if nv.replica != primary_of(nv.view, self.n):
            out.append(Drop("unknown_sender", nv.replica))
            return
        chosen: dict[int, ViewChangeVote] = {}
        for inner in env.nested:
            vote = self._vote_of(inner) if isinstance(inner.msg, ViewChange) else None
            if vote is None or vote.new_view != nv.view or vote.replica in chosen:
                out.append(Drop("malformed", nv.replica))
                return
            chosen[vote.replica] = vote
        if len(chosen) < self.q:
            out.append(Drop("malformed", nv.replica))
            return
        self._enter_view(plan_new_view(nv.view, list(chosen.values()), self.n), env.frame, now,
                         out)

    def _enter_view(self, plan: NewViewPlan, frame: bytes, now: float,
                    out: list[Effect]) -> None:
        """Start working in the plan's view: every sequence a quorum may have prepared is
        ordered again with the same batch; gaps get empty batches; requests that were not
        re-ordered go back to the pending queue."""
        view = plan.view
        self.view = view
        self.active = True
        self.view_started = now
        self.new_view_frame = frame
        self.suspects = set()
        self.pace_waits.clear()  # they judged the last primary
        self.suspect_sent = -1.0
        self.view_changes = {r: v for r, v in self.view_changes.items() if v.new_view > view}
        self.catchup.entered_view(view)
        self.lone = {r: (v, t) for r, (v, t) in self.lone.items() if v > view}
        self.expected = dict(plan.order)
        out.append(Persist("view", (), (view, True)))
        out.append(Persist("new_view", (), (view, frame, tuple(sorted(plan.order.items())))))
        out.append(ViewEntered(view, f"NEW-VIEW from {primary_of(view, self.n)}"))
        if plan.stable.seq > self.stable_checkpoint:
            mine = self.checkpoints.own.get(plan.stable.seq)
            if mine is not None and mine != plan.stable.state:
                out.append(Drop("malformed", primary_of(view, self.n)))  # never adopt a fork
            else:
                if self.last_executed < plan.stable.seq:
                    self.catchup.behind(now)  # the view starts above what we hold
                self._adopt_stable(plan.stable, out)
        top = max(plan.order, default=self.stable_checkpoint)
        old_slots = self.slots
        self.slots = {}
        for seq, slot in old_slots.items():
            if seq > self.stable_checkpoint and (seq <= top or slot.executed):
                # kept: its certificate; an executed slot keeps its bodies (peers that are
                # behind may fetch them) until a stable checkpoint collects it
                self.slots[seq] = Slot(seq, view, last_progress=now, executed=slot.executed,
                                       cert=slot.prepared_cert(prepare_quorum(self.n)),
                                       refs=slot.refs if slot.executed else (),
                                       spec=slot.spec)
            if not slot.executed or seq <= self.stable_checkpoint:
                # the new view takes its own references; what it does not order waits again
                self.pool.release(seq, slot.refs, requeue=True)
        if self.tags_distrusted:
            self._unpend_distrusted(now)
        self.next_seq = max(top, self.last_executed) + 1
        if primary_of(view, self.n) == self.id:
            for seq, digests in sorted(plan.order.items()):
                if seq > self.stable_checkpoint:
                    self._pre_prepare(seq, digests, now, out)
            self._cut_batches(now, out)

    # ------------------------------------------------------------ restart

    def restore(self, saved: DurableState) -> None:
        """Resume after a restart from what we made durable: the ledger, the client table
        and the protocol records (view, own votes, certificates, last VIEW-CHANGE, the
        NEW-VIEW, the stable checkpoint). We never contradict any of it."""
        self.last_executed = saved.height
        self.next_seq = saved.height + 1
        self.head = saved.head
        self.executed_txs = saved.executed_txs
        self.executed_digests = dict(saved.executed_digests)
        self.clients.restore(saved.sessions, saved.floors, saved.admitted)
        records: dict[str, list] = {}
        for rec in saved.records:
            records.setdefault(rec.kind, []).append(rec)
        for rec in records.get("stable", []):
            seq, state, proof = rec.data
            self.checkpoints.adopt(StableCheckpoint(seq, state, tuple(proof)))
            self.checkpoints.own[seq] = state
        for rec in records.get("view", []):
            self.view, self.active = rec.data
        for rec in records.get("new_view", []):
            view, frame, order = rec.data
            if view == self.view:
                self.new_view_frame = frame
                self.expected = {seq: tuple(d) for seq, d in order if seq > self.low}
        for rec in records.get("prepared", []):
            seq, = rec.key
            view, digests, frames = rec.data
            if seq > self.low:
                slot = self.slots.setdefault(seq, Slot(seq, self.view))
                slot.cert = Cert(view, tuple(digests), tuple(frames))
                slot.executed = seq <= self.last_executed
                if view == self.view:  # prepared in this view: we hold its PRE-PREPARE
                    slot.preprepare = PrePrepare(view, seq, primary_of(view, self.n),
                                                 slot.cert.digests)
                    slot.pp_frame = slot.cert.frames[0]
                    slot.digest = batch_digest(slot.cert.digests)
                    slot.prepared = True
                    if not slot.executed:
                        slot.refs = slot.cert.digests
                        slot.missing = self.pool.order(seq, slot.refs)
        for rec in records.get("speculated", []):
            seq, = rec.key
            view, digests, frame = rec.data
            if seq > self.low:
                slot = self.slots.setdefault(seq, Slot(seq, self.view))
                slot.spec = (view, tuple(digests), frame)
                slot.sent_speculative = view == self.view
        for kind in ("preprepare", "prepare", "commit"):
            for rec in records.get(kind, []):
                view, seq = rec.key
                if view != self.view or seq <= self.low:
                    continue  # older views: we never act in them again
                slot = self.slots.setdefault(seq, Slot(seq, view))
                slot.executed = seq <= self.last_executed
                if kind == "preprepare":
                    digests, frame = rec.data
                    slot.digest = batch_digest(tuple(digests))
                    slot.pp_frame = frame
                    self.expected.setdefault(seq, tuple(digests))  # never order it otherwise
                    self.next_seq = max(self.next_seq, seq + 1)
                else:
                    digest, frame = rec.data
                    slot.digest = digest
                    if kind == "prepare":
                        slot.sent_prepare = True
                        slot.prepares[self.id] = digest
                        slot.prepare_frames[self.id] = frame
                    else:
                        slot.commits[self.id] = digest
                        slot.commit_frames[self.id] = frame
        if not self.active:
            for rec in records.get("view_change", []):
                new_view, frame = rec.data
                if new_view == self.view:
                    stable = self.checkpoints.stable
                    self.own_vc = (ViewChange(new_view, self.id, stable.seq, ()), frame)
                    certs, latest, _proofs = self._vote_proofs(stable.seq)
                    self.view_changes[self.id] = ViewChangeVote(
                        self.id, new_view, self.checkpoints.stable, certs, frame, latest)
        for seq, slot in self.slots.items():
            if seq > self.last_executed and slot.pp_frame and slot.preprepare is None:
                # our own PRE-PREPARE: the bodies come back from clients or by Fetch
                digests = self.expected[seq]
                slot.preprepare = PrePrepare(self.view, seq, self.id, digests)
                slot.refs = digests
                slot.missing = self.pool.order(seq, digests)
        self.view_started = -1.0  # set at the first tick
        self.catchup.restarted()  # ask the others what we missed while down
