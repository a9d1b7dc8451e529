"""View change, the parts that need no replica state: checking a VIEW-CHANGE's proofs and
computing the new view's order from a quorum of them.

`check_view_change` runs on parsed but unverified messages: it bounds the proofs by kind
(q CHECKPOINTs for the stable checkpoint; per sequence one PRE-PREPARE with exactly q-1
PREPAREs for the prepared certificate, and at most one later PRE-PREPARE the replica
answered speculatively; sequences inside the window, batches no larger than a primary may
cut) and checks they form the certificates they claim, so a message stuffed with proofs
is refused before one of its signatures is verified. `plan_new_view` is the one rule
every replica applies to the same VIEW-CHANGEs: from the highest stable checkpoint `min_s`
to the highest sequence with a candidate, each sequence gets the batch with the highest
rank, or an empty batch where none exists. A batch's rank is the newest view of a prepared
certificate for it, or the newest view in which f+1 of the votes answered it
speculatively (their newest pre-prepare at that sequence); at equal views a prepared
certificate ranks first. docs/protocol.md ("The fast path") proves that this keeps both
what q prepared replicas promised and what n speculative answers promised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from dtnbus.log import Cert, StableCheckpoint
from dtnbus.messages import (
    Checkpoint,
    Message,
    Prepare,
    PrePrepare,
    ViewChange,
    batch_digest,
    commit_quorum,
    max_faulty,
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
    # seq -> (view, digests): the newest batch it answered speculatively or prepared (the
    # newer of the two), what the fast path counts
    latest: dict[int, tuple[int, tuple[bytes, ...]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NewViewPlan:
    """The order a new view starts with, the same on every replica that computes it."""

    view: int
    stable: StableCheckpoint  # min_s, with the proof from the VIEW-CHANGE that showed it
    order: dict[int, tuple[bytes, ...]]  # seq in (min_s, max_s] -> digests (() = empty)


def max_proofs(n: int, window: int) -> int:
    """The most proofs a correct VIEW-CHANGE carries: q CHECKPOINTs, and per sequence of
    the window a certificate (q frames) and one speculative PRE-PREPARE."""
    q = commit_quorum(n)
    return q + window * (q + 1)


def check_view_change(vc: ViewChange, proofs: Sequence[tuple[Message, bytes]], n: int,
                      window: int, max_batch: int) -> ViewChangeVote | str:
    """Parse a VIEW-CHANGE's proofs (message, frame) into a vote, or say why not."""
    q = commit_quorum(n)
    if vc.new_view < 1:
        return "view change to view 0"
    if len(proofs) > max_proofs(n, window):
        return "too many proofs"
    checkpoints: dict[int, Checkpoint] = {}
    cp_frames: dict[int, bytes] = {}
    preprepares: dict[int, list[tuple[PrePrepare, bytes]]] = {}
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
                    or msg.replica != primary_of(msg.view, n) \
                    or len(preprepares.get(msg.seq, ())) >= 2 \
                    or len(msg.digests) > max_batch \
                    or len(set(msg.digests)) != len(msg.digests):
                return "pre-prepare proof out of range"
            preprepares.setdefault(msg.seq, []).append((msg, frame))
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
    latest: dict[int, tuple[int, tuple[bytes, ...]]] = {}
    for seq, pps in preprepares.items():
        votes = prepares.get(seq, {})
        if votes:
            proven = [(pp, f) for pp, f in pps if _proves(pp, votes, n)]
            if len(proven) != 1:
                return f"prepared certificate for {seq} does not hold"
            pp, pp_frame = proven[0]
            certs[seq] = Cert(pp.view, pp.digests,
                              (pp_frame, *(f for _r, (_p, f) in sorted(votes.items()))))
            pps = [(p, f) for p, f in pps if p is not pp]
        if pps:  # the PRE-PREPARE it answered speculatively, newer than its certificate
            spec = pps[0][0]
            if len(pps) != 1 or (seq in certs and spec.view <= certs[seq].view):
                return f"speculative pre-prepare for {seq} not newer than its certificate"
            latest[seq] = (spec.view, spec.digests)
        else:
            latest[seq] = (certs[seq].view, certs[seq].digests)
    return ViewChangeVote(vc.replica, vc.new_view, stable, certs, b"", latest)


def _proves(pp: PrePrepare, votes: dict[int, tuple[Prepare, bytes]], n: int) -> bool:
    """q-1 PREPAREs from backups of `pp`'s view that name its batch: a certificate."""
    digest = batch_digest(pp.digests)
    return len(votes) == prepare_quorum(n) and all(
        p.view == pp.view and p.digest == digest and r != pp.replica
        for r, (p, _f) in votes.items())


def plan_new_view(view: int, votes: Sequence[ViewChangeVote], n: int) -> NewViewPlan:
    """The new view's order, computed from a quorum of VIEW-CHANGEs: PBFT's rule (the
    newest prepared certificate), extended by the fast path's (the newest view in which
    f+1 votes answered a batch speculatively, where that is newer)."""
    base = max((v.stable for v in votes), key=lambda s: s.seq)
    # seq -> digests -> rank (view, 1 if a prepared certificate else 0)
    ranks: dict[int, dict[tuple[bytes, ...], tuple[int, int]]] = {}
    for vote in votes:
        for seq, cert in vote.certs.items():
            if seq > base.seq:
                held = ranks.setdefault(seq, {})
                held[cert.digests] = max(held.get(cert.digests, (-1, 0)), (cert.view, 1))
    spoken: dict[int, dict[tuple[bytes, ...], list[int]]] = {}
    for vote in votes:
        for seq, (spec_view, digests) in vote.latest.items():
            if seq > base.seq:
                spoken.setdefault(seq, {}).setdefault(digests, []).append(spec_view)
    support = max_faulty(n) + 1
    for seq, by_batch in spoken.items():
        for digests, views in by_batch.items():
            if len(views) >= support:  # f+1 answered it in this view or a later one
                rank = (sorted(views, reverse=True)[support - 1], 0)
                held = ranks.setdefault(seq, {})
                held[digests] = max(held.get(digests, (-1, 0)), rank)
    top = max(ranks, default=base.seq)
    order = {seq: (max(ranks[seq].items(), key=lambda item: (item[1], item[0]))[0]
                   if seq in ranks else ())
             for seq in range(base.seq + 1, top + 1)}
    return NewViewPlan(view, base, order)

