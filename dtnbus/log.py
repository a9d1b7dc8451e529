"""The replica's log: one slot per sequence number with its votes and signed frames, and
the checkpoints with the stable one.

Two invariants live here:
- a slot's certificates are built only from verified frames that match its digest:
  `prepared_cert` (the PRE-PREPARE and q-1 PREPAREs, shown in a VIEW-CHANGE) and
  `commit_cert` (q COMMITs, stored with the block and shown in state transfer);
- the stable checkpoint and its proof move together (`StableCheckpoint`): whoever moves
  the window can prove where it moved it to, in a VIEW-CHANGE or to a lagging peer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import countOf

from dtnbus.clients import Decision
from dtnbus.messages import GENESIS, PrePrepare


@dataclass(frozen=True, slots=True)
class Cert:
    """Proof that a batch was prepared in `view`: the PRE-PREPARE and q-1 matching PREPAREs."""

    view: int
    digests: tuple[bytes, ...]
    frames: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class StableCheckpoint:
    """A checkpoint q replicas signed: the ledger head `state` after `seq`, with the proof."""

    seq: int = 0
    state: bytes = GENESIS
    proof: tuple[bytes, ...] = ()


@dataclass(slots=True)
class Slot:
    seq: int
    view: int = 0
    preprepare: PrePrepare | None = None
    digest: bytes = b""
    prepares: dict[int, bytes] = field(default_factory=dict)
    commits: dict[int, bytes] = field(default_factory=dict)
    pp_frame: bytes = b""
    prepare_frames: dict[int, bytes] = field(default_factory=dict)
    commit_frames: dict[int, bytes] = field(default_factory=dict)
    missing: set[bytes] = field(default_factory=set)
    missing_since: float = 0.0
    fetch_round: int = 0
    sent_prepare: bool = False
    sent_tentative: bool = False
    sent_speculative: bool = False
    prepared: bool = False
    committed: bool = False
    executed: bool = False
    t_first_request: float = 0.0
    t_preprepare: float = 0.0
    t_prepared: float = 0.0
    t_committed: float = 0.0
    last_progress: float = 0.0
    helped: dict[int, float] = field(default_factory=dict)
    cert: Cert | None = None  # the newest prepared certificate, kept across views
    refs: tuple[bytes, ...] = ()  # request digests this slot holds in the pool
    # (view, digests, PRE-PREPARE frame) we last answered speculatively, kept across views
    spec: tuple[int, tuple[bytes, ...], bytes] | None = None
    # (ledger head, batch, the client table's decision) of our early reply: execution
    # takes the decision back while head and batch are the same
    decided: tuple[bytes, tuple[bytes, ...], Decision] | None = None

    def matching(self, votes: dict[int, bytes]) -> int:
        return countOf(votes.values(), self.digest)  # in C: called on every vote, O(n) each

    def prepared_cert(self, need: int) -> Cert | None:
        """The newest prepared certificate: this view's if prepared here, else the kept one."""
        if self.prepared and self.preprepare is not None and self.pp_frame:
            frames = [f for r, f in sorted(self.prepare_frames.items())
                      if self.prepares.get(r) == self.digest]
            if len(frames) >= need:
                return Cert(self.view, self.preprepare.digests, (self.pp_frame, *frames[:need]))
        return self.cert

    def commit_cert(self, need: int) -> tuple[bytes, ...]:
        frames = [f for r, f in sorted(self.commit_frames.items())
                  if self.commits.get(r) == self.digest]
        return tuple(frames[:need]) if len(frames) >= need else ()


class Checkpoints:
    """CHECKPOINT votes per sequence, our own states, and the stable checkpoint."""

    def __init__(self, quorum: int) -> None:
        self.quorum = quorum
        # seq -> replica -> (state, frame)
        self.votes: dict[int, dict[int, tuple[bytes, bytes]]] = {}
        self.own: dict[int, bytes] = {}  # seq -> our ledger head there
        self.stable = StableCheckpoint()

    def vote(self, seq: int, replica: int, state: bytes, frame: bytes) -> bool:
        """Record a signed CHECKPOINT; False if this replica already voted at `seq`."""
        votes = self.votes.setdefault(seq, {})
        if replica in votes:
            return False
        votes[replica] = (state, frame)
        return True

    def matching(self, seq: int, state: bytes) -> int:
        return sum(1 for s, _ in self.votes.get(seq, {}).values() if s == state)

    def provable(self, seq: int) -> StableCheckpoint | None:
        """A stable checkpoint at `seq` with its proof, if our own state there has q votes."""
        mine = self.own.get(seq)
        if mine is None or seq <= self.stable.seq:
            return None
        proof = tuple(f for _r, (s, f) in sorted(self.votes.get(seq, {}).items()) if s == mine)
        if len(proof) < self.quorum:
            return None
        return StableCheckpoint(seq, mine, proof[:self.quorum])

    def adopt(self, stable: StableCheckpoint) -> None:
        """Move the stable checkpoint (with its proof) and forget what lies below it."""
        self.stable = stable
        for old in [s for s in self.votes if s <= stable.seq]:
            del self.votes[old]
        for old in [s for s in self.own if s < stable.seq]:
            del self.own[old]
