"""Typed PBFT messages and the quorum arithmetic, in one place.

Messages are frozen slotted dataclasses. Each class carries its wire `KIND` and a
field schema (`SCHEMA`) that the decoder checks before anything reaches the replica:
every integer is range-checked, every digest is exactly 32 bytes, every list bounded.
Replica ids are ints (0..n-1); client ids are short strings.

A request is named by `(client, session, number)`: a client process opens a session
(an id that grows with time, so sessions of one client never repeat) and numbers its
requests 1, 2, 3, ... in it. Any number of processes may share one client key safely:
each has its own session. The replicas decide from ordered history alone whether an
ordered request executes (see `dtnbus.clients`), and the block hash covers that decision.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import ClassVar

from dtnbus.fastinit import fast_init


def max_faulty(n: int) -> int:
    """f = floor((n - 1) / 3): the most Byzantine replicas n can tolerate (n >= 3f + 1)."""
    if n < 1:
        raise ValueError(f"a cluster needs at least one replica, got n={n}")
    return (n - 1) // 3


def commit_quorum(n: int) -> int:
    """Matching COMMITs that make a slot committed-local (and a checkpoint stable).

    Any two quorums must share a correct replica: 2q - n >= f + 1, so q = ceil((n+f+1)/2).
    That is 2f+1 exactly when n = 3f+1; for other n, 2f+1 is unsafe (n = 5, f = 1: two
    quorums of 3 may overlap only in the faulty replica), so we never use it there.
    """
    return (n + max_faulty(n) + 2) // 2


def prepare_quorum(n: int) -> int:
    """Matching PREPAREs (besides the PRE-PREPARE, which counts as one) for prepared:
    2f when n = 3f+1, in general one less than the commit quorum."""
    return commit_quorum(n) - 1


def reply_quorum(n: int) -> int:
    """Matching REPLYs a client needs: f + 1 (at least one comes from a correct replica)."""
    return max_faulty(n) + 1


def primary_of(view: int, n: int) -> int:
    """The primary of a view is view mod n."""
    return view % n


# Field type tags understood by dtnbus.wire's shape checker.
INT, STR, BYTES, BOOL, FLOAT = "int", "str", "bytes", "bool", "float"
DIGEST = "digest"  # exactly 32 bytes (sha256)
BYTES_LIST = "list[bytes]"
DIGEST_LIST = "list[digest]"
PHASE_LIST = "list[phase]"  # [[name: str, count: int, sum_seconds: float], ...]
DIGEST_SIZE = 32


class Outcome:
    """What happened to one ordered request; decided from ordered history alone, so every
    correct replica decides the same, and covered by the block hash."""

    EXECUTED = 0  # its transactions are in the ledger at this position
    DUPLICATE = 1  # ordered again after it executed: its first execution stands
    CONFLICT = 2  # another request already used this (client, session, number)
    STALE = 3  # below its session's window (or its session expired): never executed here
    REFUSED = 5  # the client is not admitted at this point in the order (also answered,
    # unordered, by a replica that does not know the client's key at all)
    # an answer that is not an ordered decision (one replica's; seq 0, no result)
    BUSY = 4  # the replica's request pool is full: back off and send again
    NAMES: ClassVar[dict[int, str]] = {0: "executed", 1: "duplicate", 2: "conflict",
                                       3: "stale", 4: "busy", 5: "refused"}


@fast_init
@dataclass(frozen=True, slots=True)
class Request:
    """A client's signed request: one or more opaque transactions, sent to every replica."""

    KIND: ClassVar[int] = 1
    SCHEMA: ClassVar[tuple[tuple[str, str], ...]] = (
        ("client", STR), ("session", INT), ("number", INT), ("txs", BYTES_LIST),
    )
    client: str
    session: int
    number: int
    txs: tuple[bytes, ...]


@fast_init
@dataclass(frozen=True, slots=True)
class PrePrepare:
    """The primary's order for one sequence number: request digests only, never payload."""

    KIND: ClassVar[int] = 2
    SCHEMA: ClassVar[tuple[tuple[str, str], ...]] = (
        ("view", INT), ("seq", INT), ("replica", INT), ("digests", DIGEST_LIST),
    )
    view: int
    seq: int
    replica: int
    digests: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class _Vote:
    """A replica's vote for a batch digest at (view, seq): PREPARE and COMMIT alike."""

    SCHEMA: ClassVar[tuple[tuple[str, str], ...]] = (
        ("view", INT), ("seq", INT), ("replica", INT), ("digest", DIGEST),
    )
    view: int
    seq: int
    replica: int
    digest: bytes


@fast_init
@dataclass(frozen=True, slots=True)
class Prepare(_Vote):
    KIND: ClassVar[int] = 3


@fast_init
@dataclass(frozen=True, slots=True)
class Commit(_Vote):
    KIND: ClassVar[int] = 4


@fast_init
@dataclass(frozen=True, slots=True)
class Reply:
    """A replica's answer to one request, naming it: `request` is the digest of the request
    it answers, `seq`/`position` where it was ordered, `result` the block hash (empty for
    answers that are not ordered decisions), `outcome` an `Outcome` code.
    `tentative`: sent once prepared, before commit (PBFT tentative execution); a client
    then needs a commit quorum of matching tentative replies instead of f+1 committed.
    `speculative` (with `tentative`): sent once pre-prepared, before prepare (the fast
    path): a client needs all n replicas' matching answers in one view."""

    KIND: ClassVar[int] = 5
    SCHEMA: ClassVar[tuple[tuple[str, str], ...]] = (
        ("view", INT), ("replica", INT), ("client", STR), ("session", INT), ("number", INT),
        ("request", DIGEST), ("seq", INT), ("position", INT), ("result", BYTES),
        ("outcome", INT), ("tentative", BOOL), ("speculative", BOOL),
    )
    view: int
    replica: int
    client: str
    session: int
    number: int
    request: bytes
    seq: int
    position: int
    result: bytes
    outcome: int = Outcome.EXECUTED
    tentative: bool = False
    speculative: bool = False


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The ledger head hash after executing `seq`; a commit quorum of matching CHECKPOINTs
    makes it stable."""

    KIND: ClassVar[int] = 6
    SCHEMA: ClassVar[tuple[tuple[str, str], ...]] = (
        ("replica", INT), ("seq", INT), ("state", DIGEST),
    )
    replica: int
    seq: int
    state: bytes


@dataclass(frozen=True, slots=True)
class Fetch:
    """Ask a peer for request bodies this replica has a digest for but no payload."""

    KIND: ClassVar[int] = 7
    SCHEMA: ClassVar[tuple[tuple[str, str], ...]] = (("replica", INT), ("digests", DIGEST_LIST))
    replica: int
    digests: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Hello:
    """Published until every peer has heard us: PUB/SUB readiness (the slow-joiner fix)."""

    KIND: ClassVar[int] = 8
    SCHEMA: ClassVar[tuple[tuple[str, str], ...]] = (("replica", INT), ("heard", INT))
    replica: int
    heard: int  # how many peers this replica has heard from


@dataclass(frozen=True, slots=True)
class StatusQuery:
    KIND: ClassVar[int] = 9
    SCHEMA: ClassVar[tuple[tuple[str, str], ...]] = (("client", STR), ("nonce", INT))
    client: str
    nonce: int


@dataclass(frozen=True, slots=True)
class Status:
    """A node's view of itself, for `cluster status`, readiness and sync phase times."""

    KIND: ClassVar[int] = 10
    SCHEMA: ClassVar[tuple[tuple[str, str], ...]] = (
        ("replica", INT), ("nonce", INT), ("view", INT), ("last_executed", INT),
        ("head", BYTES), ("stable_checkpoint", INT), ("ready", BOOL), ("pending", INT),
        ("executed_txs", INT), ("phases", PHASE_LIST),
    )
    replica: int
    nonce: int
    view: int
    last_executed: int
    head: bytes
    stable_checkpoint: int
    ready: bool
    pending: int
    executed_txs: int
    phases: tuple[tuple[str, int, float], ...]


@dataclass(frozen=True, slots=True)
class ViewChange:
    """A replica's vote to move to `new_view`, with its proofs as signed frames: q
    CHECKPOINTs for `stable_seq` (none at 0), and for every sequence above it that it
    prepared, the PRE-PREPARE and q-1 matching PREPAREs. The replica bounds and checks
    the proofs' shape before any of their signatures is verified."""

    KIND: ClassVar[int] = 11
    SCHEMA: ClassVar[tuple[tuple[str, str], ...]] = (
        ("new_view", INT), ("replica", INT), ("stable_seq", INT), ("proofs", BYTES_LIST),
    )
    NESTED: ClassVar[str] = "proofs"
    new_view: int
    replica: int
    stable_seq: int
    proofs: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class NewView:
    """The new primary's proof that q replicas moved to `view`: their signed VIEW-CHANGEs.
    Every replica recomputes the view's order from them (`view_change.plan_new_view`);
    the new primary then sends the PRE-PREPAREs of that plan, which backups check."""

    KIND: ClassVar[int] = 12
    SCHEMA: ClassVar[tuple[tuple[str, str], ...]] = (
        ("view", INT), ("replica", INT), ("view_changes", BYTES_LIST),
    )
    NESTED: ClassVar[str] = "view_changes"
    view: int
    replica: int
    view_changes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class StateRequest:
    """A replica that fell behind (restarted, or lost messages) asks a peer for the
    ledger from `from_seq` on, and for the NEW-VIEW of the peer's view."""

    KIND: ClassVar[int] = 13
    SCHEMA: ClassVar[tuple[tuple[str, str], ...]] = (("replica", INT), ("from_seq", INT))
    replica: int
    from_seq: int


@dataclass(frozen=True, slots=True)
class StateReply:
    """Blocks from `from_seq` on, each proven by its own commit certificate (q signed
    COMMITs, all in `proof`, in block order), so the blocks need no other trust; `height`
    is the sender's last executed sequence (ask again if it is above the last block);
    `new_view` holds the NEW-VIEW of the sender's view, if any."""

    KIND: ClassVar[int] = 14
    SCHEMA: ClassVar[tuple[tuple[str, str], ...]] = (
        ("replica", INT), ("from_seq", INT), ("height", INT), ("blocks", BYTES_LIST),
        ("proof", BYTES_LIST), ("new_view", BYTES_LIST),
    )
    NESTED: ClassVar[str] = "proof"
    replica: int
    from_seq: int
    height: int
    blocks: tuple[bytes, ...]
    proof: tuple[bytes, ...]
    new_view: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """PBFT's status message, sent by every replica every few seconds: a replica that is
    behind, or that missed a NEW-VIEW, learns it from its peers, idle or not."""

    KIND: ClassVar[int] = 15
    SCHEMA: ClassVar[tuple[tuple[str, str], ...]] = (
        ("replica", INT), ("view", INT), ("active", BOOL), ("last_executed", INT),
        ("stable_seq", INT),
    )
    replica: int
    view: int
    active: bool
    last_executed: int
    stable_seq: int


@dataclass(frozen=True, slots=True)
class Suspect:
    """A replica's complaint that the primary of `view` is not doing its job. It binds to
    nothing: the sender keeps working in `view`. Once f+1 replicas complain, at least one
    of them is correct, and every replica that hears them moves to `view + 1` (so one slow
    replica alone never ends up in a view of its own)."""

    KIND: ClassVar[int] = 16
    SCHEMA: ClassVar[tuple[tuple[str, str], ...]] = (("replica", INT), ("view", INT))
    replica: int
    view: int


Message = (
    Request | PrePrepare | Prepare | Commit | Reply | Checkpoint | Fetch | Hello | StatusQuery
    | Status | ViewChange | NewView | StateRequest | StateReply | PeerStatus | Suspect
)
MESSAGE_TYPES: dict[int, type] = {
    cls.KIND: cls
    for cls in (Request, PrePrepare, Prepare, Commit, Reply, Checkpoint, Fetch, Hello,
                StatusQuery, Status, ViewChange, NewView, StateRequest, StateReply,
                PeerStatus, Suspect)
}
CLIENT_KINDS = frozenset({Request.KIND, StatusQuery.KIND})
_KIND_NAMES = {kind: cls.__name__.lower() for kind, cls in MESSAGE_TYPES.items()}


def kind_name(kind: int) -> str:
    """Lower-case name of a message kind, for metrics labels."""
    return _KIND_NAMES.get(kind, "unknown")


def sender_of(msg: Message) -> int | str:
    """Who signed a message: a replica id, or a client id for client messages."""
    if isinstance(msg, Request | StatusQuery):
        return msg.client
    return msg.replica


GENESIS = bytes(32)


def batch_digest(digests: tuple[bytes, ...]) -> bytes:
    """What PREPARE and COMMIT agree on: the ordered request digests of one PRE-PREPARE.
    Every digest is exactly 32 bytes (the schema checks it), so the concatenation is
    unambiguous."""
    return hashlib.sha256(b"".join(digests)).digest()


def block_hash(prev: bytes, seq: int, digest: bytes, outcomes: bytes) -> bytes:
    """The ledger's hash chain: the previous hash, the sequence, the ordered batch and, one
    byte per ordered request, what executing it did (`Outcome`). Two replicas that decided
    differently about one request therefore disagree on every later hash and checkpoint:
    never silently. The view is stored but not hashed: correct replicas may commit the same
    batch in different views, and their ledgers must still be identical."""
    return hashlib.sha256(prev + seq.to_bytes(8, "big") + digest + outcomes).digest()
