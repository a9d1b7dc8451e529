"""Ledger blocks on the wire, for a replica that fell behind (state transfer).

A lagging replica asks a peer for the blocks after its own height. Every block travels
with its own commit certificate, read from the peer's ledger (q signed COMMITs on the
block's view, sequence and batch digest), so a block needs no other trust, whatever
the peer's own state (restarted, no stable checkpoint, another view): the view stored is
the certificate's, never a number the peer wrote. Each request in a block is the
client's signed frame, checked against the client's key before it is stored. The
requester then executes the blocks through the same code as committed batches, so it
makes the same decisions and hashes.

One reply is bounded by signatures to check (`MAX_STATE_SIGNATURES`) and by bytes; a
replica further behind asks again from where it got to. Pure functions: the caller
reads the ledger and authenticates frames.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgpack

from dtnbus.effects import TransferredBlock
from dtnbus.errors import PeerError
from dtnbus.messages import Commit, Request, StateReply, batch_digest
from dtnbus.wire import DEFAULT_MAX_FRAME, Envelope, UnvouchedRequest

MAX_STATE_SIGNATURES = 4096  # commit signatures one reply may ask the requester to check
MAX_STATE_BYTES = 4 * 1024 * 1024
MAX_BLOCKS = 4096
RESEND_AFTER = 5.0  # a reply not consumed is served again after this long (it was lost)


class ServeGate:
    """Whether to serve a peer's StateRequest now. A correct requester asks again only from
    beyond the blocks it was sent (it consumed them), or after its own timeout when a reply
    was lost; a member that asks and never reads would otherwise make us queue reply after
    reply for it, megabytes each (chaos-4). Pure: time is an argument."""

    def __init__(self, resend_after: float = RESEND_AFTER) -> None:
        self.resend_after = resend_after
        self._sent: dict[int, tuple[int, float]] = {}  # peer -> (last block sent, when)

    def allow(self, peer: int, from_seq: int, now: float) -> bool:
        last = self._sent.get(peer)
        return last is None or from_seq > last[0] or now >= last[1] + self.resend_after

    def served(self, peer: int, reply: StateReply, now: float) -> None:
        last_block = reply.from_seq + len(reply.blocks) - 1
        self._sent[peer] = (max(last_block, reply.from_seq), now)


def blocks_per_reply(quorum: int) -> int:
    """How many blocks one reply carries: bounded by the signatures their proofs cost."""
    return max(1, min(MAX_BLOCKS, MAX_STATE_SIGNATURES // quorum))


def serve_state(ledger: object, replica: int, from_seq: int, quorum: int,
                new_view: bytes) -> StateReply:
    """The reply to a StateRequest from our ledger: blocks from `from_seq` on, each with
    its commit certificate, within the reply bounds."""
    blocks: list[bytes] = []
    proof: list[bytes] = []
    size = 0
    last = from_seq + blocks_per_reply(quorum) - 1
    for block in ledger.blocks(from_seq, last):  # type: ignore[attr-defined]
        frames = [r.frame for r in ledger.requests(block.seq)]  # type: ignore[attr-defined]
        raw = msgpack.packb([block.seq, b"".join(block.digests), frames], use_bin_type=True)
        size += len(raw) + sum(len(f) for f in block.proof)
        if blocks and size > MAX_STATE_BYTES:
            break
        blocks.append(raw)
        proof.extend(block.proof[:quorum])
    return StateReply(replica, from_seq, ledger.height, tuple(blocks), tuple(proof),  # type: ignore[attr-defined]
                      (new_view,) if new_view else ())


def check_reply_shape(reply: StateReply, quorum: int) -> str | None:
    """Before any signature is checked: is this reply within bounds?"""
    if len(reply.blocks) > blocks_per_reply(quorum) or \
            len(reply.proof) != quorum * len(reply.blocks) or len(reply.new_view) > 1:
        return "malformed"
    return None


def verify_blocks(blocks: Sequence[bytes], proof: Sequence[Envelope], start_seq: int,
                  quorum: int, authenticate: Callable[[bytes], Envelope]
                  ) -> list[TransferredBlock]:
    """Check that `blocks` run on from `start_seq`, each proven by q COMMITs from distinct
    replicas on one view and its batch digest, each request frame signed (or MAC-tagged)
    by its client. Return them as blocks to execute; PeerError if anything does not hold."""
    commits: dict[int, list[Envelope]] = {}
    for env in proof:
        if not isinstance(env.msg, Commit):
            raise PeerError("malformed", "state proof holds something other than COMMITs")
        commits.setdefault(env.msg.seq, []).append(env)
    out: list[TransferredBlock] = []
    seq = start_seq
    for raw in blocks:
        try:
            block_seq, joined, frames = msgpack.unpackb(raw, raw=False, use_list=True,
                                                        max_bin_len=DEFAULT_MAX_FRAME)
        except Exception:
            raise PeerError("malformed", "state block is not [seq, digests, frames]") from None
        if not (type(block_seq) is int and type(joined) is bytes and type(frames) is list
                and len(joined) % 32 == 0 and all(type(f) is bytes for f in frames)):
            raise PeerError("malformed", "state block has the wrong types")
        if block_seq != seq:
            raise PeerError("malformed", f"state block {block_seq} where {seq} was due")
        digests = tuple(joined[i:i + 32] for i in range(0, len(joined), 32))
        digest = batch_digest(digests)
        cert = commits.get(seq, [])
        views = {e.msg.view for e in cert if e.msg.digest == digest}  # type: ignore[union-attr]
        signers = {e.msg.replica for e in cert if e.msg.digest == digest}  # type: ignore[union-attr]
        if len(views) != 1 or len(signers) < quorum:
            raise PeerError("malformed", f"state block {seq} has no commit certificate")
        bodies: dict[bytes, tuple[Request, bytes]] = {}
        for frame in frames:
            try:
                env = authenticate(frame)  # PeerError on a forged or unknown client's request
            except UnvouchedRequest as exc:  # our MAC tag fails: the certificate vouches
                env = exc.envelope  # (q replicas took it, f + 1 of them correct: a faulty
                # client's tags may hold at some replicas only, Replica.unvouched)
            if not isinstance(env.msg, Request):
                raise PeerError("malformed", f"state block {seq} holds a non-request")
            bodies[env.digest] = (env.msg, frame)
        if set(bodies) != set(digests) or len(frames) != len(digests):
            raise PeerError("malformed", f"state block {seq}: requests differ from its order")
        out.append(TransferredBlock(seq, views.pop(), digests, bodies,
                                    tuple(e.frame for e in cert)[:quorum]))
        seq += 1
    return out
