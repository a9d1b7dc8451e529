"""View change, the parts that need no replica state: checking a VIEW-CHANGE's proofs and
computing the new view's order from a quorum of them.

`check_view_change` runs on parsed but unverified messages: it bounds the proofs by kind
(q CHECKPOINTs for the stable checkpoint, one PRE-PREPARE and exactly q-1 PREPAREs per
prepared sequence, sequences inside the window, batches no larger than a primary may
cut) and checks they form the certificates they claim, so a message stuffed with
proofs is refused before one of its signatures is verified. `plan_new_view` is the one
rule every replica applies to the same VIEW-CHANGEs: from the highest stable checkpoint
`min_s` to the highest prepared sequence `max_s`, each sequence gets the batch of its
newest certificate, or an empty batch where none exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dtnbus.log import Cert, StableCheckpoint
from dtnbus.messages import (
    Checkpoint,
    Message,
    Prepare,
    PrePrepare,
    ViewChange,
    batch_digest,
    commit_quorum,
    prepare_quorum,
    primary_of,
)


@dataclass(frozen=True, slots=True)
class ViewChangeVote:
    """A VIEW-CHANGE whose proofs hold: what it proves, and its frame for a NEW-VIEW."""

    replica: int
    new_view: int
    stable: StableCheckpoint
    certs: dict[int, Cert]  # seq -> newest prepared certificate
    frame: bytes


@dataclass(frozen=True, slots=True)
class NewViewPlan:
    """The order a new view starts with, the same on every replica that computes it."""

    view: int
    stable: StableCheckpoint  # min_s, with the proof from the VIEW-CHANGE that showed it
    order: dict[int, tuple[bytes, ...]]  # seq in (min_s, max_s] -> digests (() = empty)


def check_view_change(vc: ViewChange, proofs: Sequence[tuple[Message, bytes]], n: int,
                      window: int, max_batch: int) -> ViewChangeVote | str:
    """Parse a VIEW-CHANGE's proofs (message, frame) into a vote, or say why not."""
    q = commit_quorum(n)
    if vc.new_view < 1:
        return "view change to view 0"
    if len(proofs) > q + window * q:
        return "too many proofs"
    checkpoints: dict[int, Checkpoint] = {}
    cp_frames: dict[int, bytes] = {}
    preprepares: dict[int, tuple[PrePrepare, bytes]] = {}
    prepares: dict[int, dict[int, tuple[Prepare, bytes]]] = {}
    top = vc.stable_seq + window
    for msg, frame in proofs:
        if isinstance(msg, Checkpoint):
            if msg.seq != vc.stable_seq or msg.replica in checkpoints:
                return "checkpoint proof for another sequence, or twice"
            checkpoints[msg.replica] = msg
            cp_frames[msg.replica] = frame
        elif isinstance(msg, PrePrepare):
            if not vc.stable_seq < msg.seq <= top or msg.view >= vc.new_view \
                    or msg.replica != primary_of(msg.view, n) or msg.seq in preprepares \
                    or len(msg.digests) > max_batch \
                    or len(set(msg.digests)) != len(msg.digests):
                return "pre-prepare proof out of range"
            preprepares[msg.seq] = (msg, frame)
        elif isinstance(msg, Prepare):
            votes = prepares.setdefault(msg.seq, {})
            if msg.replica in votes or len(votes) >= prepare_quorum(n):
                return "prepare proof repeated or beyond the quorum"
            votes[msg.replica] = (msg, frame)
        else:
            return f"{type(msg).__name__} is no view-change proof"
    stable = StableCheckpoint()
    if vc.stable_seq > 0:
        states = {c.state for c in checkpoints.values()}
        if len(checkpoints) != q or len(states) != 1:
            return "stable checkpoint without q matching checkpoints"
        stable = StableCheckpoint(vc.stable_seq, states.pop(),
                                  tuple(cp_frames[r] for r in sorted(cp_frames)))
    elif checkpoints:
        return "checkpoint proofs for sequence 0"
    if set(prepares) - set(preprepares):
        return "prepares without their pre-prepare"
    certs: dict[int, Cert] = {}
    for seq, (pp, pp_frame) in preprepares.items():
        digest = batch_digest(pp.digests)
        votes = prepares.get(seq, {})
        if len(votes) != prepare_quorum(n) or any(
                p.view != pp.view or p.digest != digest or r == pp.replica
                for r, (p, _f) in votes.items()):
            return f"prepared certificate for {seq} does not hold"
        certs[seq] = Cert(pp.view, pp.digests,
                          (pp_frame, *(f for _r, (_p, f) in sorted(votes.items()))))
    return ViewChangeVote(vc.replica, vc.new_view, stable, certs, b"")


def plan_new_view(view: int, votes: Sequence[ViewChangeVote]) -> NewViewPlan:
    """The new view's order, computed from a quorum of VIEW-CHANGEs (PBFT's rule)."""
    base = max((v.stable for v in votes), key=lambda s: s.seq)
    chosen: dict[int, Cert] = {}
    for vote in votes:
        for seq, cert in vote.certs.items():
            if seq > base.seq and (seq not in chosen or cert.view > chosen[seq].view):
                chosen[seq] = cert
    top = max(chosen, default=base.seq)
    order = {seq: (chosen[seq].digests if seq in chosen else ())
             for seq in range(base.seq + 1, top + 1)}
    return NewViewPlan(view, base, order)

