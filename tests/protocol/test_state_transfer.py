"""State transfer: a lagging replica takes proven blocks, and only proven blocks."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
from harness import Cluster

from dtnbus.effects import Execute, Send, SendClient
from dtnbus.errors import PeerError
from dtnbus.messages import Checkpoint, PeerStatus, StateReply, StateRequest, commit_quorum
from dtnbus.state_transfer import blocks_per_reply, check_reply_shape, serve_state, verify_blocks
from dtnbus.storage import Ledger
from dtnbus.wire import Envelope

SMALL = {"checkpoint_interval": 4, "window": 8, "batch_max_requests": 1, "pipeline": 1}
Q = commit_quorum(4)


def _history(tmp_path: Path, requests: int = 10) -> tuple[Cluster, Ledger]:
    """A 4-replica history of `requests` batches, and replica 1's SQLite ledger of it."""
    c = Cluster(4, config_overrides=SMALL)
    for i in range(requests):
        c.request((b"st-%d" % i,))
        c.run()
    ledger = Ledger(tmp_path / "node-1.sqlite")
    ledger.write(c.blocks[1])
    return c, ledger


def _reply(c: Cluster, ledger: Ledger, from_seq: int = 1) -> tuple[StateReply, list[Envelope]]:
    reply = serve_state(ledger, 1, from_seq, Q, b"")
    return reply, [c.codecs[3].decode(f) for f in reply.proof]


def _verify(c: Cluster, reply: StateReply, proof: list[Envelope], start: int = 1) -> list:
    return verify_blocks(reply.blocks, proof, start, Q, c.codecs[3].decode)


def test_every_block_is_proven_by_its_own_commit_certificate(tmp_path: Path) -> None:
    c, ledger = _history(tmp_path)
    reply, proof = _reply(c, ledger)
    assert reply.height == 10 and check_reply_shape(reply, Q) is None
    verified = _verify(c, reply, proof)
    assert [b.seq for b in verified] == list(range(1, 11))
    assert all(set(b.bodies) == set(b.digests) for b in verified)
    assert all(len(b.proof) == Q for b in verified)


def test_a_changed_block_is_refused(tmp_path: Path) -> None:
    c, ledger = _history(tmp_path)
    reply, proof = _reply(c, ledger)
    seq, digests, frames = msgpack.unpackb(reply.blocks[2])
    withheld = [*reply.blocks[:2], msgpack.packb([seq, digests, []]), *reply.blocks[3:]]
    with pytest.raises(PeerError, match="requests differ"):  # a request withheld
        verify_blocks(withheld, proof, 1, Q, c.codecs[3].decode)
    reordered = [*reply.blocks[:2], msgpack.packb([seq, b"\x09" * 32, frames]),
                 *reply.blocks[3:]]
    with pytest.raises(PeerError, match="no commit certificate"):
        verify_blocks(reordered, proof, 1, Q, c.codecs[3].decode)


def test_a_block_without_q_commits_proves_nothing(tmp_path: Path) -> None:
    c, ledger = _history(tmp_path)
    reply, proof = _reply(c, ledger)
    thin = [e for e in proof if e.msg.seq != 4]  # type: ignore[union-attr]
    with pytest.raises(PeerError, match="block 4 has no commit certificate"):
        verify_blocks(reply.blocks, thin, 1, Q, c.codecs[3].decode)
    twice = [*thin, *[e for e in proof if e.msg.seq == 4][:1] * Q]  # type: ignore[union-attr]
    with pytest.raises(PeerError, match="block 4 has no commit certificate"):
        verify_blocks(reply.blocks, twice, 1, Q, c.codecs[3].decode)  # one signer, thrice


def test_the_view_comes_from_the_certificate_never_from_the_sender(tmp_path: Path) -> None:
    """Issue 9: a peer served blocks with view 2**64-1 (or 777) and the lagging node stored
    them; now a block carries no view of its own, only its certificate's."""
    c, ledger = _history(tmp_path)
    reply, proof = _reply(c, ledger)
    verified = _verify(c, reply, proof)
    assert {b.view for b in verified} == {0}
    seq, digests, frames = msgpack.unpackb(reply.blocks[0])
    with pytest.raises(PeerError, match=r"is not \[seq, digests, frames\]"):
        verify_blocks([msgpack.packb([seq, 2**64 - 1, digests, frames])], proof, 1, Q,
                      c.codecs[3].decode)


def test_a_request_whose_client_signature_does_not_hold_is_refused(tmp_path: Path) -> None:
    """Issue 9: request frames with zeroed signatures were stored by the lagging node."""
    c, ledger = _history(tmp_path)
    reply, proof = _reply(c, ledger)
    seq, digests, frames = msgpack.unpackb(reply.blocks[0])
    payload, signature = msgpack.unpackb(frames[0])
    zeroed = msgpack.packb([payload, bytes(len(signature))])
    forged = [msgpack.packb([seq, digests, [zeroed]]), *reply.blocks[1:]]
    with pytest.raises(PeerError) as info:
        verify_blocks(forged, proof, 1, Q, c.codecs[3].decode)
    assert info.value.reason == "bad_signature"


def test_blocks_must_start_where_the_requester_stands(tmp_path: Path) -> None:
    c, ledger = _history(tmp_path)
    reply, proof = _reply(c, ledger)
    with pytest.raises(PeerError, match="where 3 was due"):
        _verify(c, reply, proof, start=3)


def test_a_reply_is_bounded_by_the_signatures_it_costs(tmp_path: Path) -> None:
    c, ledger = _history(tmp_path)
    reply, _ = _reply(c, ledger)
    assert len(reply.proof) == Q * len(reply.blocks)
    assert blocks_per_reply(67) * 67 <= 4096 and blocks_per_reply(3) == 1365
    bloated = StateReply(1, 1, 10, reply.blocks, reply.proof * 2, ())
    assert check_reply_shape(bloated, Q) == "malformed"


def test_a_lagging_replica_adopts_state_and_then_follows_normally(tmp_path: Path) -> None:
    c, ledger = _history(tmp_path)
    lagging = Cluster(4, config_overrides=SMALL).replicas[3]  # knows nothing
    reply, proof = _reply(c, ledger)
    lagging.catchup.ask(1, 0.0)
    out = lagging.adopt_state(1, reply.height, _verify(c, reply, proof), 0.0)
    assert [e.seq for e in out if isinstance(e, Execute)] == list(range(1, 11))
    assert not any(isinstance(e, SendClient) for e in out)  # others answered the client
    assert lagging.last_executed == 10 and lagging.head == c.replicas[1].head
    assert lagging.executed_txs == 10
    assert lagging.clients.is_decided("c0", c.sessions["c0"], 1)  # never executed again


def test_a_restarted_replica_serves_its_whole_ledger_with_proofs() -> None:
    """Issue 9 (the crash-restart deadlock): a restarted node came back with no checkpoint
    proof and every state transfer from it was refused. Now its ledger proves itself."""
    c = Cluster(4, config_overrides=SMALL)
    for i in range(6):
        c.request((b"r-%d" % i,))
        c.run()
    c.restart(1)
    reply = serve_state(c.ledgers[1], 1, 1, Q, b"")
    proof = [c.codecs[2].decode(f) for f in reply.proof]
    assert [b.seq for b in verify_blocks(reply.blocks, proof, 1, Q, c.codecs[2].decode)] == \
        list(range(1, 7))


def test_one_empty_reply_does_not_end_catching_up() -> None:
    """Issue 9: a restarted replica gave up after the first peer with nothing newer."""
    c = Cluster(4, config_overrides=SMALL)
    for i in range(5):
        c.request((b"e-%d" % i,))
        c.run()
    c.down = {3}
    for i in range(5, 9):
        c.request((b"e-%d" % i,))
        c.run()
    r3 = c.restart(3)
    c.down = set()
    c.tick(0.01)  # the first tick after the restart: the clock starts
    # replica 3 hears that 0 and 2 are ahead; 0 answers first with nothing (a stale view)
    for peer in (0, 2):
        c.deliver(3, c.codecs[peer].encode(PeerStatus(peer, 0, True, 8, 8)))
    c.tick(2.0)
    asked = [f for d, f in c.queue if d != 3 and isinstance(c.codecs[0].parse(f).msg,
                                                             StateRequest)]
    assert asked, "a restarted replica asks a peer that is ahead"
    first = c.codecs[0].parse(asked[0]).msg.replica
    assert first == 3
    target = r3.catchup.asked
    empty = StateReply(target, r3.last_executed + 1, r3.last_executed, (), (), ())
    c.queue = [(d, f) for d, f in c.queue if d == 3]
    c.deliver(3, c.codecs[target].encode(empty))
    assert r3.catchup.since is not None  # still behind: the other peer is asked next
    c.run(rounds=50, dt=0.5)
    assert r3.last_executed == c.replicas[0].last_executed == 9
    assert r3.head == c.replicas[0].head


def test_restored_replica_asks_peers_and_recovers_its_view_and_votes() -> None:
    c = Cluster(4, config_overrides={"view_change_timeout": 0.5, "retransmit_after": 0.3})
    c.request((b"x",))
    c.run()
    r = c.restart(2)
    assert r.last_executed == 1 and r.view == 0 and r.active
    out = r.tick(c.now + 0.01)
    out += r.tick(c.now + 1.0)
    assert not any(isinstance(e, Send) and isinstance(e.msg, StateRequest) for e in out) or \
        all(e.to != 2 for e in out if isinstance(e, Send))
    assert r.clients.is_decided("c0", c.sessions["c0"], 1)


def test_checkpoints_a_window_ahead_make_a_replica_fetch_state() -> None:
    c = Cluster(4, config_overrides=SMALL)
    r = c.replicas[3]
    for sender in (0, 1):  # f + 1 replicas are past our window (high = 8)
        c.deliver(3, c.codecs[sender].encode(Checkpoint(sender, 40, b"\x05" * 32)))
        c.deliver(3, c.codecs[sender].encode(PeerStatus(sender, 0, True, 40, 40)))
    out = r.tick(c.now + 5.0)
    assert any(isinstance(e, Send) and isinstance(e.msg, StateRequest) for e in out)


def test_an_unsolicited_state_reply_is_dropped_before_its_proofs_are_checked(
        tmp_path: Path) -> None:
    c, ledger = _history(tmp_path)
    reply, _ = _reply(c, ledger)
    fresh = Cluster(4, config_overrides=SMALL)
    fresh.deliver(3, c.codecs[1].encode(reply))
    assert fresh.drops[3] == ["unsolicited"] and fresh.replicas[3].last_executed == 0


def test_state_transfer_of_a_request_from_an_unknown_client_is_refused(
        tmp_path: Path) -> None:
    c, ledger = _history(tmp_path)
    reply, proof = _reply(c, ledger)
    outsider = Cluster(4, config_overrides=SMALL, clients=("someone-else",))
    with pytest.raises(PeerError):
        verify_blocks(reply.blocks, proof, 1, Q, outsider.codecs[3].decode)


def test_a_peer_that_does_not_consume_state_is_served_again_only_after_a_while() -> None:
    """chaos-4: a member that asks for state and never reads would have every reply queued
    for it; a correct requester asks again only from beyond what it was sent."""
    from dtnbus.state_transfer import ServeGate

    gate = ServeGate(resend_after=5.0)
    reply = StateReply(1, 1, 100, tuple(b"b" for _ in range(10)), (), ())
    assert gate.allow(3, 1, 0.0)
    gate.served(3, reply, 0.0)  # blocks 1..10
    assert not gate.allow(3, 1, 0.1)  # the same again: it has not read it
    assert not gate.allow(3, 10, 0.1)
    assert gate.allow(3, 11, 0.2)  # it moved past them: it read them
    assert gate.allow(3, 1, 5.0)  # or the reply was lost: after a while, again
