"""The PBFT replica as a specification: pure state machines on an in-memory network."""

from __future__ import annotations

import pytest
from harness import Cluster

from dtnbus.crypto import Signer, generate_key
from dtnbus.effects import Broadcast
from dtnbus.messages import (
    Commit,
    Prepare,
    PrePrepare,
    Reply,
    Request,
    batch_digest,
    commit_quorum,
    max_faulty,
    prepare_quorum,
    reply_quorum,
)
from dtnbus.node import LoopLoad
from dtnbus.replica import UNNEEDED, Replica, ReplicaConfig
from dtnbus.wire import Codec, Envelope, request_digest


@pytest.mark.parametrize("n", range(4, 32))
def test_quorum_sizes_are_safe_and_live_for_every_n(n: int) -> None:
    f = (n - 1) // 3
    q = commit_quorum(n)
    assert max_faulty(n) == f and 3 * f + 1 <= n < 3 * f + 4
    assert 2 * q - n >= f + 1  # safety: two quorums share a correct replica
    assert n - f >= q  # liveness: the correct replicas alone form a quorum
    assert 2 * (q - 1) - n < f + 1  # and minimal: one less would be unsafe
    assert prepare_quorum(n) == q - 1  # the PRE-PREPARE counts as the primary's prepare
    assert reply_quorum(n) == f + 1


@pytest.mark.parametrize("f", range(1, 11))
def test_quorums_are_2f_and_2f_plus_1_when_n_is_3f_plus_1(f: int) -> None:
    n = 3 * f + 1
    assert prepare_quorum(n) == 2 * f and commit_quorum(n) == 2 * f + 1


def test_quorum_when_3_divides_n_is_not_the_reference_bug() -> None:
    # n=30, f=9. The reference demanded 2*floor(n/3) = 20 prepares and 21 commits; the
    # textbook 2f+1 = 19 would be unsafe (two 19-quorums overlap in 8 < f+1 replicas).
    assert max_faulty(30) == 9
    assert commit_quorum(30) == 20 and prepare_quorum(30) == 19
    assert 2 * 19 - 30 < 9 + 1 <= 2 * commit_quorum(30) - 30


def test_four_replicas_commit_and_reply_with_identical_ledgers() -> None:
    c = Cluster(4)
    for i in range(10):
        c.request((b"tx-%d" % i,))
    c.run()
    assert [r.executed_txs for r in c.replicas] == [10] * 4
    assert len(set(c.heads())) == 1
    assert len(c.answers()) == 40  # every replica answers every request
    assert all(not d for d in c.drops.values())


def _votes_for_seq1(c: Cluster) -> tuple[PrePrepare, list[tuple[int, bytes]]]:
    """Run until the primary has ordered seq 1, and return its PRE-PREPARE."""
    c.request((b"x",))
    # deliver the request to everybody, then take the primary's PRE-PREPARE off the queue
    for _ in range(c.n):
        dest, frame = c.queue.pop(0)
        c.deliver(dest, frame)
    pp_frames = list(c.queue)
    c.queue.clear()
    pp = c.codecs[0].decode(pp_frames[0][1]).msg
    assert isinstance(pp, PrePrepare)
    return pp, pp_frames


def test_commit_needs_2f_plus_1_matching_commits_not_2f() -> None:
    # n = 7 = 3f+1 with f = 2, so the commit quorum is exactly 2f+1 = 5
    n = 7  # f = 2: prepared needs 4 prepares, committed 5 commits
    c = Cluster(n)
    pp, _ = _votes_for_seq1(c)
    target = c.replicas[6]
    digest = batch_digest(pp.digests)
    env = c.codecs[6].decode(c.codecs[0].encode(pp))
    target.step(env, 0.0)  # accepts and sends its own prepare
    for r in (1, 2, 3):
        target.step(Envelope(Prepare(0, 1, r, digest), b"", b""), 0.0)
    assert target.slots[1].prepared  # own + 3 = 2f = 4
    for r in (1, 2, 3):  # own commit + 3 = 4 = 2f: not enough
        target.step(Envelope(Commit(0, 1, r, digest), b"", b""), 0.0)
    assert not target.slots[1].committed and target.last_executed == 0
    target.step(Envelope(Commit(0, 1, 4, digest), b"", b""), 0.0)  # 2f+1 = 5
    assert target.slots[1].committed and target.last_executed == 1


def test_prepared_needs_2f_matching_prepares_and_ignores_other_digests() -> None:
    c = Cluster(4)
    pp, _ = _votes_for_seq1(c)
    r = c.replicas[3]
    r.step(c.codecs[3].decode(c.codecs[0].encode(pp)), 0.0)  # own prepare: 1 of 2f = 2
    r.step(Envelope(Prepare(0, 1, 1, b"\x01" * 32), b"", b""), 0.0)  # wrong digest
    assert not r.slots[1].prepared
    r.step(Envelope(Prepare(0, 1, 2, batch_digest(pp.digests)), b"", b""), 0.0)
    assert r.slots[1].prepared


def test_primary_prepare_is_not_counted() -> None:
    c = Cluster(4)
    pp, _ = _votes_for_seq1(c)
    r = c.replicas[3]
    out = r.step(Envelope(Prepare(0, 1, 0, batch_digest(pp.digests)), b"", b""), 0.0)
    assert [e.reason for e in out if hasattr(e, "reason")] == ["unknown_sender"]


def test_out_of_order_delivery_commits_everything() -> None:
    """Votes arriving before their PRE-PREPARE and commits before prepared are kept."""
    c = Cluster(4)
    for i in range(6):
        c.request((b"r%d" % i,))
    for _ in range(30):
        c.queue.reverse()  # newest first: commits and prepares overtake pre-prepares
        c.deliver_all(limit=len(c.queue))
        c.tick(0.01)
    c.run()
    assert [r.executed_txs for r in c.replicas] == [6] * 4
    assert len(set(c.heads())) == 1


def test_duplicate_messages_do_not_double_count() -> None:
    c = Cluster(4)
    pp, _ = _votes_for_seq1(c)
    r = c.replicas[3]
    r.step(c.codecs[3].decode(c.codecs[0].encode(pp)), 0.0)
    vote = Envelope(Prepare(0, 1, 1, batch_digest(pp.digests)), b"", b"")
    r.step(vote, 0.0)
    # own prepare + replica 1's prepare = 2 = 2f: prepared, own commit sent
    assert r.slots[1].prepared
    commit = Envelope(Commit(0, 1, 1, batch_digest(pp.digests)), b"", b"")
    r.step(commit, 0.0)
    out = r.step(commit, 0.0)  # the same commit again must not make 3
    assert "duplicate" in [getattr(e, "reason", None) for e in out]
    assert not r.slots[1].committed


def test_replayed_request_is_answered_from_the_reply_cache_not_executed_twice() -> None:
    c = Cluster(4)
    frame = c.request((b"pay 5",))
    c.run()
    assert [r.executed_txs for r in c.replicas] == [1] * 4
    c.replies.clear()
    for i in range(4):
        c.inject(i, frame)
    c.run()
    assert [r.executed_txs for r in c.replicas] == [1] * 4
    assert len(c.replies) == 4 and all(isinstance(m, Reply) for _, m in c.replies)
    assert len({m.result for _, m in c.replies}) == 1


def test_same_request_ordered_twice_executes_once() -> None:
    c = Cluster(4, config_overrides={"batch_delay": 10.0, "pipeline": 1})
    frame = c.request((b"a",))
    c.run()
    before = [r.head for r in c.replicas]
    # a (faulty) primary orders the already executed request again
    pp = PrePrepare(0, 2, 0, (c.codecs[0].decode(frame).digest,))
    for i in range(1, 4):
        c.inject(i, c.codecs[0].encode(pp))
    c.run()
    assert [r.last_executed for r in c.replicas[1:]] == [2, 2, 2]
    assert [r.executed_txs for r in c.replicas[1:]] == [1, 1, 1]
    assert before[1] != c.replicas[1].head


def test_forged_signature_is_dropped_and_counted() -> None:
    c = Cluster(4)
    forger = Codec(Signer(generate_key()), c.codecs[0].replicas, c.codecs[0].clients)
    forged = forger.encode(Prepare(0, 1, 2, b"\x00" * 32))  # claims to be replica 2
    c.deliver(1, forged)
    assert c.drops[1] == ["bad_signature"]
    assert not c.replicas[1].slots


def test_message_from_a_non_member_is_dropped() -> None:
    c = Cluster(4)
    outsider = Codec(Signer(generate_key()), c.codecs[0].replicas, c.codecs[0].clients)
    c.deliver(1, outsider.encode(Prepare(0, 1, 9, b"\x00" * 32)))
    c.deliver(1, outsider.encode(Request("mallory", 1, 1, (b"x",))))
    assert c.drops[1] == ["unknown_sender", "unknown_sender"]


def test_only_the_primary_may_pre_prepare() -> None:
    c = Cluster(4)
    c.request((b"x",), to=[1, 2, 3])
    c.deliver_all()
    fake = PrePrepare(0, 1, 2, ())
    c.deliver(1, c.codecs[2].encode(fake))
    assert c.drops[1][-1] == "unknown_sender"


def test_stale_view_and_out_of_window_are_dropped() -> None:
    c = Cluster(4, config_overrides={"window": 8, "checkpoint_interval": 4})
    c.deliver(1, c.codecs[2].encode(Prepare(1, 1, 2, b"\x00" * 32)))
    c.deliver(1, c.codecs[2].encode(Prepare(0, 9, 2, b"\x00" * 32)))
    c.deliver(1, c.codecs[2].encode(Prepare(0, 0, 2, b"\x00" * 32)))
    assert c.drops[1] == ["stale_view", "out_of_window", "out_of_window"]


def test_batching_puts_many_requests_into_one_pre_prepare() -> None:
    c = Cluster(4, config_overrides={"batch_delay": 0.005})
    for i in range(50):
        c.request((b"t%d" % i,))
    c.run()
    assert c.replicas[0].last_executed < 10  # natural batching: far fewer batches than requests
    assert [r.executed_txs for r in c.replicas] == [50] * 4


def test_pipeline_keeps_several_sequences_in_flight() -> None:
    c = Cluster(4, config_overrides={"pipeline": 3, "batch_max_requests": 1})
    for i in range(5):
        c.request((b"p%d" % i,), to=[0])
    c.deliver_all(limit=5)  # only the primary has them (the others fetch later)
    assert c.replicas[0].next_seq - 1 == 3  # three in flight, the rest wait
    c.run(rounds=200, dt=0.05)
    assert [r.executed_txs for r in c.replicas] == [5] * 4


def _load_primary(c: Cluster, count: int) -> list[bytes]:
    """One batch in flight (nothing delivered to the backups yet), then `count` requests
    waiting at the primary, and time far past `batch_delay`. Returns the request frames."""
    frames = [c.request((b"first",), to=[])]
    c.deliver(0, frames[0])
    assert c.replicas[0].next_seq - 1 == 1  # nothing in flight: ordered at once
    for i in range(count):
        frames.append(c.request((b"w%d" % i,), to=[]))
        c.deliver(0, frames[-1])
    c.tick(1.0)
    return frames


def test_under_load_the_primary_waits_for_the_batch_in_flight_then_takes_all() -> None:
    c = Cluster(4, config_overrides={"busy_pending": 8, "batch_delay": 0.001})
    frames = _load_primary(c, 10)
    primary = c.replicas[0]
    assert primary.next_seq - 1 == 1  # 10 >= busy_pending wait: no partial batch...
    wake = primary.next_wakeup(heartbeat=False)
    assert wake is None or wake > c.now  # ...and no timer that would spin the loop
    for i in range(1, 4):  # the backups get the requests, the batch in flight moves on
        for frame in frames:
            c.inject(i, frame)
    c.run(rounds=100, dt=0.01)
    assert [r.executed_txs for r in c.replicas] == [11] * 4
    assert primary.last_executed == 2  # everything that waited went in one batch


def test_under_light_load_partial_batches_are_pipelined() -> None:
    c = Cluster(4, config_overrides={"busy_pending": 8, "batch_delay": 0.001})
    _load_primary(c, 3)
    assert c.replicas[0].next_seq - 1 == 2  # 3 < busy_pending: cut after batch_delay


def test_a_backlogged_primary_cuts_the_next_batch_once_the_last_one_prepared() -> None:
    c = Cluster(4, config_overrides={"busy_pending": 64, "batch_delay": 0.001})
    primary = c.replicas[0]
    primary.backlogged = True  # the node says its loop has had no idle time
    frames = _load_primary(c, 3)
    assert primary.next_seq - 1 == 1  # batch_delay passed, but seq 1 has not prepared
    wake = primary.next_wakeup(heartbeat=False)
    assert wake is None or wake > c.now  # no timer that would spin the loop
    for i in range(1, 4):
        for frame in frames:
            c.inject(i, frame)
    c.tamper = lambda sender, msg, frame: None if isinstance(msg, Commit) else frame
    c.deliver_all()  # PRE-PREPARE and PREPAREs arrive, COMMITs are lost: seq 1 prepares
    assert primary.slots[1].prepared and primary.last_executed == 0
    c.tick(0.0)
    assert primary.next_seq - 1 == 2  # the three that waited, in one batch
    del c.tamper  # the network heals; retransmission brings the COMMITs
    c.run(rounds=100, dt=0.05)
    assert [r.executed_txs for r in c.replicas] == [4] * 4
    assert primary.last_executed == 2


def test_missing_request_body_is_fetched() -> None:
    c = Cluster(4)
    c.request((b"only-primary-has-me",), to=[0])
    c.run(rounds=100, dt=0.05)
    assert [r.executed_txs for r in c.replicas] == [1] * 4


def test_checkpoint_becomes_stable_and_collects_the_log() -> None:
    c = Cluster(4, config_overrides={"checkpoint_interval": 4, "window": 8,
                                     "batch_max_requests": 1})
    for i in range(12):
        c.request((b"c%d" % i,))
        c.run()
    assert all(r.stable_checkpoint == 12 for r in c.replicas)
    assert all(min(r.slots, default=13) > 12 for r in c.replicas)
    assert all(not len(r.pool) for r in c.replicas)


def test_window_stops_the_primary_until_a_checkpoint_is_stable() -> None:
    c = Cluster(4, config_overrides={"checkpoint_interval": 2, "window": 4,
                                     "batch_max_requests": 1, "pipeline": 100})
    c.down = {1, 2, 3}  # nothing commits, nothing becomes stable
    for i in range(10):
        c.request((b"w%d" % i,), to=[0])
    c.deliver_all()
    assert c.replicas[0].next_seq - 1 == 4  # high watermark = 0 + window


def test_one_crashed_backup_does_not_stop_progress() -> None:
    c = Cluster(4)
    c.down = {3}
    for i in range(5):
        c.request((b"k%d" % i,))
    c.run()
    assert [c.replicas[i].executed_txs for i in range(3)] == [5, 5, 5]


def test_lost_votes_are_retransmitted() -> None:
    c = Cluster(4)
    c.request((b"lossy",))
    c.deliver_all(limit=4)  # requests in; pre-prepares queued
    c.deliver_all(limit=3)  # pre-prepares in; prepares queued
    c.queue.clear()  # every PREPARE is lost
    c.run(rounds=20, dt=0.5)
    assert [r.executed_txs for r in c.replicas] == [1] * 4


def test_replica_is_pure_same_inputs_same_outputs() -> None:
    def trace() -> list[str]:
        c = Cluster(4)
        out = []
        for i in range(3):
            c.request((b"d%d" % i,), number=1000 + i)
        c.run()
        for i, r in enumerate(c.replicas):
            out.append(f"{i}:{r.last_executed}:{r.head.hex()}")
        return out
    assert trace() == trace()


def test_request_digest_names_the_signed_bytes() -> None:
    c = Cluster(4)
    frame = c.request((b"abc",))
    env = c.codecs[1].decode(frame)
    assert env.digest == request_digest(Request("c0", c.sessions["c0"], 1, (b"abc",)))


def test_config_rejects_impossible_parameters() -> None:
    with pytest.raises(ValueError, match="replica id"):
        ReplicaConfig(4, 4)
    with pytest.raises(ValueError, match="window"):
        ReplicaConfig(0, 4, window=10, checkpoint_interval=8)


def test_primary_broadcasts_only_digests_never_payload() -> None:
    r = Replica(ReplicaConfig(0, 4), lambda m: b"signed")
    big = Request("c0", 1, 1, (b"x" * 10_000,))
    out = r.step(Envelope(big, request_digest(big), b"frame"), 0.0)
    pps = [e.msg for e in out if isinstance(e, Broadcast)]
    assert len(pps) == 1 and pps[0].digests == (request_digest(big),)


def test_votes_a_slot_no_longer_needs_are_not_wanted_but_repeats_are() -> None:
    c = Cluster(7)
    pp, _ = _votes_for_seq1(c)
    r = c.replicas[6]
    digest = batch_digest(pp.digests)
    r.step(c.codecs[6].decode(c.codecs[0].encode(pp)), 0.0)

    def verdict(msg: object) -> str | None:
        return r.admit(c.codecs[6].parse(c.codecs[msg.replica].encode(msg)), 0.0)

    for i in (1, 2, 3):
        assert verdict(Prepare(0, 1, i, digest)) is None
        r.step(Envelope(Prepare(0, 1, i, digest), b"", b""), 0.0)
    assert r.slots[1].prepared
    assert verdict(Prepare(0, 1, 4, digest)) == UNNEEDED  # prepared: a fifth adds nothing
    assert verdict(Prepare(0, 1, 2, digest)) is None  # a repeat: that peer lost our votes
    assert verdict(Commit(0, 1, 4, digest)) is None  # commits are still needed


def test_large_cluster_skips_verifying_surplus_votes() -> None:
    c = Cluster(10)
    c.request((b"x",))
    c.run()
    assert [r.executed_txs for r in c.replicas] == [1] * 10
    assert sum(c.skipped.values()) > 0


def test_a_loop_that_never_waits_is_backlogged() -> None:
    load = LoopLoad(100.0)
    assert load.update(100.01, 0.0) is None  # within the first window: no verdict yet
    assert load.update(100.1, 0.09) is False  # waited 0.09 s of 0.1: idle, not backlogged
    assert load.update(100.2, 0.10) is True  # waited 0.01 s of 0.1: CPU-bound
    assert load.update(100.3, 0.15) is False  # waited half of it: not backlogged
