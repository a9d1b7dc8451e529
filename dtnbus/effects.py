"""What the replica asks its caller to do, as plain data (the sans-IO contract).

`Replica.step` / `tick` return a list of effects; the node (or the in-memory harness, or
the simulator) carries them out **in order**, with one rule that makes a restart safe:
everything durable (`Persist`, `Execute`) is on disk before any message that follows it
in the list leaves. The node groups the durable effects of one loop iteration into one
SQLite transaction and sends after it commits (group commit).

Also here: the durable state a replica resumes from after a restart (`DurableState`),
and what state transfer hands over (`TransferredBlock`), so that storage and state
transfer need not import the replica.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dtnbus.fastinit import fast_init
from dtnbus.messages import Message, Reply, Request

# ---------------------------------------------------------------- messages out


@fast_init
@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send a signed protocol message to every other replica."""

    msg: Message
    frame: bytes


@dataclass(frozen=True, slots=True)
class Send:
    """Send a signed protocol message to one replica."""

    to: int
    msg: Message
    frame: bytes


@dataclass(frozen=True, slots=True)
class Forward:
    """Pass a client's signed request frame, unchanged, to one replica (answers a Fetch)."""

    to: int
    frame: bytes


@fast_init
@dataclass(frozen=True, slots=True)
class SendClient:
    """Answer a client (the caller signs the reply: replies are never proofs)."""

    client: str
    msg: Reply


@dataclass(frozen=True, slots=True)
class LookupReply:
    """A request came again, or was ordered again, after it was decided: answer it from
    the ledger, which holds its one true result (executed at seq/position, or never). The
    replica's memory of old requests is bounded; the ledger's is not."""

    client: str
    session: int
    number: int
    digest: bytes  # the digest of the request being answered
    view: int


# ---------------------------------------------------------------- durable


@fast_init
@dataclass(frozen=True, slots=True)
class OrderedRequest:
    """One request a block ordered, with what executing it did (`messages.Outcome`)."""

    client: str
    session: int
    number: int
    digest: bytes
    frame: bytes
    txs: int
    outcome: int


@dataclass(frozen=True, slots=True)
class SessionState:
    """One client session as the client table holds it after a block (persisted with it)."""

    client: str
    session: int
    low: int  # every number <= low is decided
    done: tuple[tuple[int, bytes], ...]  # numbers above low that executed, with digests
    touched: int  # LRU rank: the order in which sessions were last used (restores LRU)


@dataclass(frozen=True, slots=True)
class ClientChanges:
    """What one block changed in the client table: persisted in the block's transaction."""

    sessions: tuple[SessionState, ...] = ()
    evicted: tuple[tuple[str, int], ...] = ()  # (client, session) no longer held
    floors: tuple[tuple[str, int], ...] = ()  # (client, floor): sessions <= floor expired
    admitted: tuple[tuple[str, str, str], ...] = ()  # (client, public key, CURVE key;
    # "" = removed)


@fast_init
@dataclass(frozen=True, slots=True)
class Execute:
    """Append one block to the ledger; durable before anything after it is sent.
    `proof` is the block's commit certificate: q signed COMMITs on (view, seq, digest)."""

    seq: int
    view: int
    digest: bytes
    prev_hash: bytes
    hash: bytes
    digests: tuple[bytes, ...]  # everything the PRE-PREPARE ordered (`digest` hashes these)
    requests: tuple[OrderedRequest, ...]  # the same, in order, with their outcomes
    outcomes: bytes  # one Outcome byte per ordered request (hashed into `hash`)
    proof: tuple[bytes, ...]
    committed_at: float
    clients: ClientChanges = ClientChanges()

    @property
    def executed_txs(self) -> int:
        return sum([r.txs for r in self.requests if r.outcome == 0])


@fast_init
@dataclass(frozen=True, slots=True)
class Persist:
    """Protocol state the replica must never contradict after a restart (raft's HardState):
    its view, what it signed in each (view, seq), the certificates that prove its COMMITs,
    its last VIEW-CHANGE and the NEW-VIEW of its view, its stable checkpoint and proof.
    `kind` is one of KINDS; `key` orders records of one kind; `data` is plain data."""

    kind: str
    key: tuple[int, ...]
    data: tuple

    KINDS = ("view", "preprepare", "prepare", "commit", "prepared", "speculated",
             "view_change", "new_view", "stable")


@dataclass(frozen=True, slots=True)
class Forget:
    """Durable protocol records at or below `seq` are no longer needed (a stable checkpoint
    covers them): the caller may delete them."""

    seq: int


# ---------------------------------------------------------------- observations


@fast_init
@dataclass(frozen=True, slots=True)
class Observe:
    """A phase latency, measured on the caller's clock (`now`), once per batch."""

    phase: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Drop:
    """A message that was authentic but not acceptable, and why (for the drop counters)."""

    reason: str
    sender: int | str | None = None


@dataclass(frozen=True, slots=True)
class CheckpointStable:
    seq: int


@dataclass(frozen=True, slots=True)
class ViewEntered:
    """This replica now works in `view` (a NEW-VIEW was accepted)."""

    view: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ViewChangeStarted:
    """This replica stopped working in its view and voted for `view`, and why."""

    view: int
    reason: str


Effect = (
    Broadcast | Send | Forward | SendClient | LookupReply | Execute | Persist | Forget
    | Observe | Drop | CheckpointStable | ViewEntered | ViewChangeStarted
)
DURABLE = (Execute, Persist, Forget)

# ---------------------------------------------------------------- state in


@dataclass(frozen=True, slots=True)
class TransferredBlock:
    """A block proven by state transfer (its commit certificate checked), with the bodies
    of everything it ordered (their client signatures checked)."""

    seq: int
    view: int
    digests: tuple[bytes, ...]
    bodies: dict[bytes, tuple[Request, bytes]]
    proof: tuple[bytes, ...]


@dataclass(slots=True)
class DurableState:
    """Everything a replica resumes from after a restart, read back from disk: the ledger's
    height and head, the client table, and the `Persist` records not yet forgotten."""

    height: int = 0
    head: bytes = bytes(32)
    executed_txs: int = 0
    executed_digests: dict[int, bytes] = field(default_factory=dict)  # seq -> batch digest
    sessions: list[SessionState] = field(default_factory=list)
    floors: dict[str, int] = field(default_factory=dict)
    records: list[Persist] = field(default_factory=list)
    admitted: dict[str, tuple[str, str]] = field(default_factory=dict)  # client ->
    # (public key, CURVE key): what the order changed since genesis
