"""State transfer: a lagging replica takes proven blocks, and only proven blocks."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
from harness import Cluster

from dtnbus.errors import PeerError
from dtnbus.messages import GENESIS, Checkpoint, StateRequest, commit_quorum
from dtnbus.replica import Execute, Send, SendClient
from dtnbus.state_transfer import encode_blocks, verify_blocks
from dtnbus.storage import Ledger

SMALL = {"checkpoint_interval": 4, "window": 8, "batch_max_requests": 1, "pipeline": 1}


def _history(tmp_path: Path, requests: int = 10) -> tuple[Cluster, Ledger]:
    """A 4-replica history of `requests` batches, and replica 1's ledger of it."""
    c = Cluster(4, config_overrides=SMALL)
    for i in range(requests):
        c.request((b"st-%d" % i,))
        c.run()
    ledger = Ledger(tmp_path / "node-1.sqlite")
    for block in c.blocks[1]:
        ledger.append(block)
    return c, ledger


def _offer(c: Cluster, replica: int, from_seq: int) -> tuple[list[bytes], list]:
    offer = c.replicas[replica].state_for(from_seq)
    proof = [c.codecs[0].decode(f).msg for f in offer.stable_proof + offer.commit_certs]
    return offer, proof


def test_blocks_up_to_the_checkpoint_and_after_it_are_proven(tmp_path: Path) -> None:
    c, ledger = _history(tmp_path)
    offer, proof = _offer(c, 1, 1)
    assert offer.stable_seq == 8 and offer.end_seq == 10  # 9, 10 proven by commits
    blocks = encode_blocks(ledger, 1, offer.end_seq)
    verified = verify_blocks(blocks, 1, GENESIS, proof, commit_quorum(4))
    assert [b.seq for b in verified] == list(range(1, 11))
    assert all(set(b.bodies) == set(b.digests) for b in verified)


def test_a_changed_block_is_refused(tmp_path: Path) -> None:
    c, ledger = _history(tmp_path)
    offer, proof = _offer(c, 1, 1)
    blocks = encode_blocks(ledger, 1, offer.end_seq)
    seq, view, digests, frames = msgpack.unpackb(blocks[2])
    withheld = [*blocks[:2], msgpack.packb([seq, view, digests, []]), *blocks[3:]]
    with pytest.raises(PeerError, match="requests differ"):  # a request withheld
        verify_blocks(withheld, 1, GENESIS, proof, commit_quorum(4))
    reordered = [*blocks[:2], msgpack.packb([seq, view, b"\x09" * 32, frames]), *blocks[3:]]
    with pytest.raises(PeerError, match=r"requests differ|not the certified checkpoint"):
        verify_blocks(reordered, 1, GENESIS, proof, commit_quorum(4))


def test_blocks_after_the_checkpoint_need_a_commit_certificate(tmp_path: Path) -> None:
    c, ledger = _history(tmp_path)
    offer, proof = _offer(c, 1, 1)
    blocks = encode_blocks(ledger, 1, offer.end_seq)
    only_checkpoints = [m for m in proof if isinstance(m, Checkpoint)]
    with pytest.raises(PeerError, match="no commit certificate"):
        verify_blocks(blocks, 1, GENESIS, only_checkpoints, commit_quorum(4))


def test_too_few_checkpoint_signatures_prove_nothing(tmp_path: Path) -> None:
    c, ledger = _history(tmp_path)
    _, proof = _offer(c, 1, 1)
    thin = [m for m in proof if isinstance(m, Checkpoint)][:2]
    with pytest.raises(PeerError, match="no single certified checkpoint"):
        verify_blocks(encode_blocks(ledger, 1, 8), 1, GENESIS, thin, commit_quorum(4))


def test_blocks_must_start_where_the_requester_stands(tmp_path: Path) -> None:
    c, ledger = _history(tmp_path)
    _, proof = _offer(c, 1, 1)
    with pytest.raises(PeerError, match="where 3 was due"):
        verify_blocks(encode_blocks(ledger, 1, 10), 3, GENESIS, proof, commit_quorum(4))


def test_a_lagging_replica_adopts_state_and_then_follows_normally(tmp_path: Path) -> None:
    c, ledger = _history(tmp_path)
    lagging = Cluster(4, config_overrides=SMALL).replicas[3]  # knows nothing
    offer, proof = _offer(c, 1, 1)
    verified = verify_blocks(encode_blocks(ledger, 1, offer.end_seq), 1, GENESIS, proof,
                             commit_quorum(4))
    envs = tuple(c.codecs[0].decode(f) for f in offer.stable_proof)
    out = lagging.adopt_state(8, envs, verified, 0.0)
    assert [e.seq for e in out if isinstance(e, Execute)] == list(range(1, 11))
    assert not any(isinstance(e, SendClient) for e in out)  # others answered the client
    assert lagging.last_executed == 10 and lagging.head == c.replicas[1].head
    assert lagging.stable_checkpoint == 8 and lagging.proof_seq == 8
    assert lagging.executed_txs == 10
    # the replayed requests it learned of are refused, not executed again
    assert lagging._client_has_executed("c0", 1)


def test_restored_replica_asks_peers_and_does_not_accuse_the_primary() -> None:
    r = Cluster(4, config_overrides={"view_change_timeout": 0.1}).replicas[2]
    r.restore(5, b"\x01" * 32, [("c0", 3)])
    assert r.last_executed == 5 and r.recovering
    out = r.tick(0.0)
    asks = [e for e in out if isinstance(e, Send) and isinstance(e.msg, StateRequest)]
    assert len(asks) == 1 and asks[0].msg.from_seq == 6 and asks[0].to != 2
    for t in (1.0, 2.0, 3.0, 10.0):
        r.tick(t)
    assert r.view == 0 and r.active  # no view change while recovering
    assert r._client_has_executed("c0", 3)


def test_checkpoints_a_window_ahead_make_a_replica_fetch_state() -> None:
    c = Cluster(4, config_overrides=SMALL)
    r = c.replicas[3]
    for sender in (0, 1):  # f + 1 replicas are past our window (high = 8)
        c.deliver(3, c.codecs[sender].encode(Checkpoint(sender, 40, b"\x05" * 32)))
    out = r.tick(c.now + 5.0)
    assert any(isinstance(e, Send) and isinstance(e.msg, StateRequest) for e in out)
