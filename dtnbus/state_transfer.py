"""Ledger blocks on the wire, for a replica that fell behind (state transfer).

A lagging replica asks a peer for the blocks after its own head up to the peer's
stable checkpoint. The reply carries q signed CHECKPOINTs for the last block's hash;
the blocks themselves need no signatures: each hash commits to the previous one, the
ordered request digests, and (through the digests) every request's bytes, so a chain
that ends at a certified hash is the certified history. Pure functions; the node
reads and writes the ledger around them.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgpack

from dtnbus.errors import PeerError
from dtnbus.messages import Checkpoint, Commit, Message, batch_digest, block_hash
from dtnbus.replica import TransferredBlock
from dtnbus.storage import Ledger
from dtnbus.wire import DEFAULT_MAX_FRAME, parse_request_frame

MAX_BLOCKS = 4096  # one reply; a replica further behind asks again from where it got to


def encode_blocks(ledger: Ledger, start: int, end: int) -> list[bytes]:
    """Blocks start..end (inclusive) as msgpack [seq, view, digests, [request frames]]."""
    out = []
    for block in ledger.blocks(start):
        if block.seq > end:
            break
        frames = [frame for _c, _t, _d, frame, _e in ledger.requests(block.seq)]
        out.append(msgpack.packb([block.seq, block.view, b"".join(block.digests), frames],
                                 use_bin_type=True))
    return out


def verify_blocks(blocks: Sequence[bytes], start_seq: int, prev_head: bytes,
                  proof: Sequence[Message], quorum: int) -> list[TransferredBlock]:
    """Check that `blocks` extend `prev_head` at `start_seq`, each proven: up to the stable
    checkpoint by q matching CHECKPOINTs on the hash there, after it by q matching COMMITs
    (one view) on each block's batch digest. Return them as blocks to append; PeerError
    if anything does not hold."""
    anchors: dict[tuple[int, bytes], set[int]] = {}
    commits: dict[tuple[int, int, bytes], set[int]] = {}
    for msg in proof:
        if isinstance(msg, Checkpoint):
            anchors.setdefault((msg.seq, msg.state), set()).add(msg.replica)
        elif isinstance(msg, Commit):
            commits.setdefault((msg.seq, msg.view, msg.digest), set()).add(msg.replica)
        else:
            raise PeerError("malformed", "state proof holds something other than votes")
    certified = [key for key, signers in anchors.items() if len(signers) >= quorum]
    if len(certified) != 1:
        raise PeerError("malformed", "state proof has no single certified checkpoint")
    anchor_seq, anchor_state = certified[0]
    committed = {(seq, digest) for (seq, _view, digest), signers in commits.items()
                 if len(signers) >= quorum}
    out: list[TransferredBlock] = []
    prev, seq = prev_head, start_seq
    for raw in blocks:
        try:
            item = msgpack.unpackb(raw, raw=False, use_list=True, max_bin_len=DEFAULT_MAX_FRAME)
            block_seq, view, joined, frames = item
        except Exception:
            raise PeerError("malformed", "state block is not [seq, view, digests, frames]") \
                from None
        if not (type(block_seq) is int and type(view) is int and type(joined) is bytes
                and type(frames) is list and len(joined) % 32 == 0):
            raise PeerError("malformed", "state block has the wrong types")
        if block_seq != seq:
            raise PeerError("malformed", f"state block {block_seq} where {seq} was due")
        digests = tuple(joined[i:i + 32] for i in range(0, len(joined), 32))
        digest = batch_digest(digests)
        this = block_hash(prev, seq, digest)
        if seq == anchor_seq and this != anchor_state:
            raise PeerError("malformed", f"state block {seq} is not the certified checkpoint")
        if seq > anchor_seq and (seq, digest) not in committed:
            raise PeerError("malformed", f"state block {seq} has no commit certificate")
        bodies = {}
        for frame in frames:
            request, request_digest = parse_request_frame(frame)
            bodies[request_digest] = (request, frame)
        if set(bodies) != set(digests):  # every ordered request, and nothing else
            raise PeerError("malformed", f"state block {seq}: requests differ from its order")
        out.append(TransferredBlock(seq, view, digests, bodies))
        prev, seq = this, seq + 1
    if out and seq - 1 < anchor_seq:
        raise PeerError("malformed", "state blocks stop before the certified checkpoint")
    return out
