"""Issue 9: the edges. One faulty replica or one restart must never crash, stall or fork
the bus. Each test is a finding of the outside review, reproduced on 3fc1c2b (where it
crashed, stalled or equivocated) and held here."""

from __future__ import annotations

from harness import Cluster

from dtnbus.effects import Broadcast, Execute
from dtnbus.messages import (
    Checkpoint,
    Commit,
    Fetch,
    NewView,
    Outcome,
    PeerStatus,
    Prepare,
    PrePrepare,
    Reply,
    StateRequest,
    Suspect,
    ViewChange,
    batch_digest,
    block_hash,
)

FAST = {"view_change_timeout": 0.5, "retransmit_after": 0.3}


def _alive(c: Cluster) -> list[int]:
    return [i for i in range(c.n) if i not in c.down]


def _agree(c: Cluster, replicas: list[int] | None = None) -> None:
    """No two replicas executed different batches at one sequence."""
    replicas = _alive(c) if replicas is None else replicas
    by_seq: dict[int, set[bytes]] = {}
    for i in replicas:
        for block in c.blocks[i]:
            by_seq.setdefault(block.seq, set()).add(block.hash)
    assert all(len(h) == 1 for h in by_seq.values()), by_seq


def test_a_primary_that_orders_one_request_twice_across_a_checkpoint_crashes_no_one() -> None:
    """3fc1c2b: GC at the stable checkpoint freed the body seq 3 still referred to, and
    executing seq 3 raised KeyError on every correct replica at once."""
    c = Cluster(4, config_overrides={"checkpoint_interval": 2, "window": 4,
                                     "batch_max_requests": 1, **FAST})
    c.request((b"dup",))
    c.deliver_all()
    d = c.blocks[1][0].digests[0]
    hold = [True]

    def tamper(sender: int, msg: object, frame: bytes) -> bytes | None:
        if sender == 0 and isinstance(msg, PrePrepare) and msg.seq == 3:
            return c.codecs[0].encode(PrePrepare(msg.view, msg.seq, 0, (d,)))
        if hold[0] and isinstance(msg, Commit) and msg.seq == 3:
            return None
        return frame

    c.tamper = tamper
    for tx in (b"a", b"b", b"c"):
        c.request((tx,))
    c.deliver_all()
    assert all(r.stable_checkpoint == 2 for r in c.replicas[1:])
    hold[0] = False
    c.run(rounds=60, dt=0.1)
    for i in (1, 2, 3):
        dup = [b for b in c.blocks[i] if b.seq == 3]
        # decided before: not executed again (STALE: below its session's watermark)
        assert dup and dup[0].requests[0].outcome in (Outcome.DUPLICATE, Outcome.STALE)
    assert c.replicas[1].executed_txs == 4  # dup, a, b, c: each once
    _agree(c, [1, 2, 3])


def test_restarted_replicas_change_view_when_the_primary_is_down() -> None:
    """3fc1c2b: 'recovering' was cleared only by executing, and no view-change timer ran
    while recovering: replicas 1-3 waited in view 0 forever."""
    c = Cluster(4, config_overrides=FAST)
    c.request((b"x",))
    c.run()
    c.down = {0}
    for i in (1, 2, 3):
        c.restart(i)
    c.request((b"y",))
    c.run(rounds=300, dt=0.1)
    assert all(c.replicas[i].view >= 1 for i in (1, 2, 3))
    assert all(c.replicas[i].last_executed == 2 for i in (1, 2, 3))
    _agree(c)


def test_a_replica_that_executed_before_a_view_change_commits_in_the_new_view() -> None:
    """3fc1c2b: it PREPAREd the re-issued PRE-PREPARE but never COMMITted it, so the new
    primary never executed and views kept changing."""
    c = Cluster(4, config_overrides=FAST)
    c.request((b"once",))
    c.deliver_all(limit=4)  # requests
    c.deliver_all(limit=3)  # pre-prepares
    c.deliver_all(limit=9)  # prepares
    c.queue = [(d, f) for d, f in c.queue if d == 3]  # only replica 3 gets the commits
    c.deliver_all()
    assert c.replicas[3].last_executed == 1 and c.replicas[1].last_executed == 0
    # and every later COMMIT of view 0 is lost too, and state transfer is cut off: only a
    # new view can finish seq 1 at replicas 1 and 2
    c.tamper = lambda sender, msg, frame: None if (isinstance(msg, Commit) and msg.view == 0) \
        or isinstance(msg, StateRequest) else frame
    c.down = {0}
    c.run(rounds=100, dt=0.1)
    assert all(c.views[i] == [1] for i in (1, 2, 3))  # one view change, not a storm
    assert [c.replicas[i].last_executed for i in (1, 2, 3)] == [1, 1, 1]
    assert sum(isinstance(m, Commit) and m.view == 1 for m in c.sent[3]) >= 1
    assert len(c.blocks[3]) == 1  # executed once
    _agree(c)


def test_a_primary_that_censors_one_client_is_replaced_and_the_request_executes() -> None:
    """3fc1c2b: any execution reset the one view-change timer, so a primary that ordered
    everyone but the victim was never suspected; and once it was, the request had aged
    past the client horizon and was dropped as stale."""
    c = Cluster(4, config_overrides=FAST, clients=("c0", "victim"))
    victim = c.request((b"v",), client="victim", to=[1, 2, 3])  # the primary "never sees" it
    del victim
    for k in range(60):
        c.request((b"o%d" % k,), client="c0")
        c.run(rounds=1, dt=0.1)
    c.run(rounds=100, dt=0.1)
    assert all(c.replicas[i].view >= 1 for i in (1, 2, 3))
    for i in (1, 2, 3):
        executed = [r for b in c.blocks[i] for r in b.requests if r.client == "victim"]
        assert [r.outcome for r in executed] == [Outcome.EXECUTED]
    assert any(m.outcome == Outcome.EXECUTED for m in c.answers("victim"))
    _agree(c)


def test_a_restarted_replica_never_contradicts_what_it_signed() -> None:
    """3fc1c2b: PREPARE(0,1,d1), restart, PREPARE(0,1,d2): a correct replica equivocated."""
    c = Cluster(4, config_overrides=FAST)
    d1 = c.codecs[1].decode(c.request((b"one",), to=[1])).digest
    d2 = c.codecs[1].decode(c.request((b"two",), to=[1])).digest
    c.deliver_all()  # replica 1 holds both bodies
    c.deliver(1, c.codecs[0].encode(PrePrepare(0, 1, 0, (d1,))))  # a Byzantine primary
    assert any(isinstance(m, Prepare) and m.seq == 1 for m in c.sent[1])
    c.queue.clear()
    c.restart(1)
    c.request((b"two",), to=[1], number=2)  # the client sends its request again
    c.deliver_all()
    c.deliver(1, c.codecs[0].encode(PrePrepare(0, 1, 0, (d2,))))  # ... and shows it d2
    assert "duplicate" in c.drops[1]
    assert not any(isinstance(m, Prepare) and m.digest == batch_digest((d2,))
                   for m in c.sent[1])
    assert c.replicas[1].slots[1].prepares[1] == batch_digest((d1,))


def test_a_restart_keeps_the_prepared_certificates_a_view_change_must_show() -> None:
    c = Cluster(4, config_overrides=FAST)
    c.tamper = lambda sender, msg, frame: None if isinstance(msg, Commit) else frame
    c.request((b"p",))
    c.deliver_all()
    assert c.replicas[2].slots[1].prepared and c.replicas[2].last_executed == 0
    r = c.restart(2)
    assert r.slots[1].cert is not None and r.slots[1].prepared
    out: list = []
    r._start_view_change(1, 1.0, out, "test")
    vc = next(e.msg for e in out if isinstance(e, Broadcast) and isinstance(e.msg, ViewChange))
    assert len(vc.proofs) == 3  # the PRE-PREPARE and q-1 PREPAREs survived the restart


def test_a_view_change_full_of_checkpoint_proofs_is_dropped_before_any_check() -> None:
    """3fc1c2b accepted any number of Checkpoint(seq=0) proofs, each verified."""
    c = Cluster(4, config_overrides=FAST)
    bomb = tuple(c.codecs[3].encode(Checkpoint(3, 0, bytes([i % 256]) * 32))
                 for i in range(500))
    c.deliver(1, c.codecs[3].encode(ViewChange(1, 3, 0, bomb)))
    assert c.drops[1] == ["malformed"] and not c.replicas[1].view_changes


def test_one_view_change_per_replica_is_kept_however_many_views_it_names() -> None:
    c = Cluster(4, config_overrides={"view_change_timeout": 1000.0})
    for view in range(1, 200):
        c.now += 0.01
        c.deliver(1, c.codecs[3].encode(ViewChange(view, 3, 0, ())))
    r = c.replicas[1]
    assert set(r.view_changes) == {3} and r.view == 0 and r.active
    assert "rate_limited" in c.drops[1]  # a correct replica never sends that many


def test_a_new_view_above_our_stable_checkpoint_moves_the_window_with_its_proof() -> None:
    """3fc1c2b moved the window to min-s but kept the old proof: later VIEW-CHANGEs and
    state offers could not prove what lay between."""
    c = Cluster(4, config_overrides={"checkpoint_interval": 2, "window": 4,
                                     "batch_max_requests": 1, **FAST})
    c.tamper = lambda sender, msg, frame: None if isinstance(msg, Checkpoint) else frame
    for tx in (b"a", b"b"):
        c.request((tx,))
        c.run()
    assert all(r.last_executed == 2 and r.stable_checkpoint == 0 for r in c.replicas)
    for i in (1, 2):  # 1 and 2 see q checkpoints at 2; replica 3 sees none
        for j in range(4):
            if j != i:
                c.deliver(i, c.codecs[j].encode(Checkpoint(j, 2, c.replicas[j].head)))
    assert [r.stable_checkpoint for r in c.replicas] == [0, 2, 2, 0]
    c.tamper = lambda sender, msg, frame: frame
    c.down = {0}
    c.request((b"c",))
    c.run(rounds=200, dt=0.1)
    r3 = c.replicas[3]
    assert r3.view >= 1 and r3.stable_checkpoint == 2  # min-s of the NEW-VIEW
    assert r3.checkpoints.stable.seq == 2 and len(r3.checkpoints.stable.proof) == 3
    assert r3.last_executed == 3
    _agree(c)


def test_a_replica_that_missed_the_new_view_learns_it_from_status() -> None:
    """3fc1c2b: a replica that missed a NEW-VIEW had no way to get it again."""
    c = Cluster(4, config_overrides=FAST)
    c.tamper = lambda sender, msg, frame: None if isinstance(msg, NewView) else frame
    c.down = {0}
    c.request((b"x",))
    c.run(rounds=30, dt=0.1)
    c.tamper = lambda sender, msg, frame: frame
    c.run(rounds=100, dt=0.2)
    views = [c.replicas[i].view for i in (1, 2, 3)]
    assert all(v >= 1 for v in views) and len(set(views)) == 1
    assert all(c.replicas[i].active for i in (1, 2, 3))
    assert all(c.replicas[i].last_executed == 1 for i in (1, 2, 3))


def test_one_replica_that_times_out_alone_stays_in_the_view() -> None:
    """3fc1c2b: one replica whose timer fired (its own slowness, a lost message) left the
    view alone and never came back. Now it only complains; f+1 complaints move a view."""
    c = Cluster(4, config_overrides=FAST)
    r2 = c.replicas[2]
    out: list = []
    r2.suspects.add(2)
    r2._maybe_leave_view(0.0, out)
    assert r2.view == 0 and r2.active  # f = 1: its own voice is not enough
    c.deliver(2, c.codecs[3].encode(Suspect(3, 0)))
    assert r2.view == 1 and not r2.active  # f + 1 voices: a correct replica suspects


def test_a_pre_prepare_with_too_many_digests_is_dropped_before_its_signature() -> None:
    c = Cluster(4, config_overrides={"batch_max_requests": 4})
    pp = PrePrepare(0, 1, 0, tuple(bytes([i]) * 32 for i in range(5)))
    c.deliver(1, c.codecs[0].encode(pp))
    assert c.drops[1] == ["malformed"] and 1 not in c.replicas[1].slots


def test_the_pool_is_bounded_in_bytes_and_says_so_to_the_client() -> None:
    c = Cluster(4, config_overrides={"max_pool_bytes": 2000})
    c.down = {1, 2, 3}  # nothing commits: the pool fills
    for i in range(5):
        c.request((b"z" * 600 + bytes([i]),), to=[1])
    c.down = {0, 2, 3}
    c.deliver_all()
    busy = [m for _, m in c.replies if m.outcome == Outcome.BUSY]
    assert busy and c.replicas[1].pool.pending_bytes <= 2000
    assert "pool_full" in c.drops[1]


def test_fetches_from_one_peer_are_rate_limited() -> None:
    c = Cluster(4)
    for _ in range(300):
        c.deliver(1, c.codecs[2].encode(Fetch(2, (b"\x01" * 32,))))
    assert c.drops[1].count("rate_limited") >= 150


def test_the_block_hash_covers_what_executing_each_request_did() -> None:
    """3fc1c2b: executed-or-skipped was not covered by the hash: replicas could differ
    silently. Now two different decisions give two different hashes."""
    c = Cluster(4)
    c.request((b"h",))
    c.run()
    block = c.blocks[1][0]
    assert block.hash == block_hash(block.prev_hash, 1, block.digest, block.outcomes)
    assert block.hash != block_hash(block.prev_hash, 1, block.digest,
                                    bytes([Outcome.DUPLICATE]))


def test_a_restart_restores_exactly_the_same_exactly_once_decisions() -> None:
    c = Cluster(4, config_overrides={"session_window": 4})
    for k in range(1, 12):
        c.request((b"w%d" % k,), number=k)
        c.run()
    before = c.replicas[2].clients
    r = c.restart(2)
    assert dict(r.clients.sessions) == dict(before.sessions)
    assert r.clients.floors == before.floors
    probe = [("c0", c.sessions["c0"], k, b"\x00" * 32, ()) for k in range(1, 14)]
    assert r.clients.preview(probe) == before.preview(probe)


def test_a_late_request_below_its_session_window_is_answered_stale_never_lost() -> None:
    """3fc1c2b silently never executed a request delayed more than the horizon."""
    c = Cluster(4, config_overrides={"session_window": 2})
    for k in (1, 3, 4, 5, 6):  # number 2 is late: its gap expires
        c.request((b"s%d" % k,), number=k)
        c.run()
    c.replies.clear()
    c.request((b"s2",), number=2)
    c.run()
    answers = {m.outcome for m in c.answers()}
    assert answers == {Outcome.STALE}
    assert all(b.requests[0].number != 2 or b.requests[0].outcome != Outcome.EXECUTED
               for b in c.blocks[1])


def test_a_second_request_under_a_taken_identity_is_refused_never_answered_as_the_first(
        ) -> None:
    c = Cluster(4)
    c.request((b"first",), number=7)
    c.run()
    first = {m.result for m in c.answers()}
    c.replies.clear()
    c.request((b"second",), number=7)
    c.run()
    answers = c.answers()
    assert answers and all(m.outcome == Outcome.CONFLICT for m in answers)
    assert all(isinstance(m, Reply) and m.request != c.blocks[1][0].digests[0] for m in answers)
    assert first and all(b.executed_txs <= 1 for b in c.blocks[1])


def test_a_request_under_an_identity_decided_while_it_waited_is_answered_not_held(
        ) -> None:
    """The second request reaches replica 3 before the first (same identity) executed
    there, so it waits in 3's pool; the primary, which decided the identity first, never
    orders it. Replica 3 answered nobody and held it pending (a fast client meets this:
    the fast path lets it move on once the PRE-PREPARE is accepted). Now executing the
    first answers the second as decided and drops it."""
    c = Cluster(4, config_overrides=FAST)
    c.request((b"first",), number=7)
    for _ in range(4):  # every replica takes the first request, nothing more yet
        dest, frame = c.queue.pop(0)
        c.deliver(dest, frame)
    c.request((b"second",), number=7, to=[3])
    c.run(rounds=100, dt=0.05)
    second = [m for c_, m in c.replies if m.replica == 3 and m.outcome == Outcome.CONFLICT]
    assert second, [(m.replica, m.outcome) for _, m in c.replies]
    assert not c.replicas[3].pool.pending and not c.replicas[3].pool.pending_identities
    assert all(r.view == 0 for r in c.replicas)


def test_a_body_an_ordered_slot_waits_for_is_taken_though_its_identity_is_decided() -> None:
    """The primary ordered a second request under an identity the first had just taken
    (seq 2 after seq 1); the backups executed seq 1 before they saw seq 2, so when they
    fetched the second body they refused it as decided, and seq 2 never prepared: every
    replica stopped at seq 1 and the primary never answered the client."""
    c = Cluster(4, config_overrides={**FAST, "view_change_timeout": 30.0, "fetch_after": 0.1})
    seq2 = {"hold": True}

    def tamper(sender: int, msg: object, frame: bytes) -> bytes | None:
        if isinstance(msg, Commit) and msg.seq == 1 and seq2["hold"]:
            return None  # seq 1 stays unexecuted while the primary takes the second
        if isinstance(msg, PrePrepare) and msg.seq == 2 and seq2["hold"]:
            return None  # the backups see seq 2 only after they executed seq 1
        return frame

    c.tamper = tamper
    c.request((b"first",), number=7)
    c.deliver_all()
    c.request((b"second",), number=7, to=[0])
    c.run(rounds=5, dt=0.01)
    assert 2 in c.replicas[0].slots  # ordered at seq 2 by the primary
    seq2["hold"] = False
    c.run(rounds=200, dt=0.05)  # COMMITs and the PRE-PREPARE are sent again
    assert [r.last_executed for r in c.replicas] == [2, 2, 2, 2]
    assert all(r.view == 0 for r in c.replicas)
    assert {m.outcome for m in c.answers() if m.number == 7 and m.seq == 2} \
        <= {Outcome.CONFLICT}


def test_a_retransmitted_request_is_answered_with_its_own_result_after_a_restart() -> None:
    c = Cluster(4, config_overrides={"reply_cache": 1})
    c.request((b"again",), number=1)
    c.run()
    original = {(m.seq, m.result) for m in c.answers()}
    for i in range(4):
        c.restart(i)
    c.replies.clear()
    c.request((b"again",), number=1)
    c.run()
    again = c.answers()
    assert len(again) == 4 and {(m.seq, m.result) for m in again} == original
    assert all(m.outcome == Outcome.EXECUTED for m in again)
    assert all(len([b for b in c.blocks[i] if isinstance(b, Execute)]) == 1 for i in range(4))


def test_status_tells_a_replica_that_is_behind_to_catch_up_while_idle() -> None:
    c = Cluster(4, config_overrides=FAST)
    c.down = {3}
    for i in range(3):
        c.request((b"i%d" % i,))
        c.run()
    c.down = set()
    c.run(rounds=40, dt=0.5)  # idle: no requests; only status messages flow
    assert c.replicas[3].last_executed == 3 and c.replicas[3].head == c.replicas[0].head
    assert any(isinstance(m, PeerStatus) for m in c.sent[3])


def test_fetch_answers_are_budgeted_in_bytes() -> None:
    """chaos-4: one Fetch makes a replica forward up to batch_max_requests bodies; what one
    peer can make it queue is bounded in bytes, not only in Fetches."""
    c = Cluster(4, config_overrides={"batch_max_requests": 1024})
    c.down = {0}  # nothing is ordered: the bodies stay in replica 1's pool
    big = [c.request((bytes([i % 256]) * 200_000,), to=[1]) for i in range(200)]
    c.deliver_all()
    digests = tuple(c.codecs[1].decode(f).digest for f in big)
    c.queue.clear()
    c.deliver(1, c.codecs[2].encode(Fetch(2, digests)))
    forwarded = sum(len(f) for d, f in c.queue if d == 2)
    assert "rate_limited" in c.drops[1]
    assert forwarded <= 32 * 2**20 + 250_000  # the burst, give or take one body


def test_a_restarted_replica_fetches_missing_bodies_at_the_pace_of_fetch_after() -> None:
    """5598b3b, real processes (benchmarks.byzantine_nodes, proof-bomb and lying-state): a
    node restarted with prepared batches whose bodies it no longer had sent a Fetch for
    each of them on every loop iteration, ~6,000 a second for seconds, which its peers
    dropped as `rate_limited`: the restored slots said their bodies had been missing since
    time 0, so on a real monotonic clock every fetch round was long overdue, and the node's
    next wakeup was always in the past (a busy loop)."""
    c = Cluster(4, config_overrides={"speculative": False})
    c.now = 40_000.0  # a monotonic clock after half a day of uptime, as on a real host

    def tamper(sender: int, msg: object, frame: bytes) -> bytes | None:
        return None if isinstance(msg, Commit) else frame  # prepared, never committed

    c.tamper = tamper  # type: ignore[method-assign]
    c.request((b"a",))
    c.deliver_all()
    restarted = c.restart(3)
    assert restarted.slots[1].prepared and restarted.slots[1].missing  # the body is gone
    c.tamper = lambda sender, msg, frame: None  # type: ignore[method-assign]  # nothing arrives
    before = len([m for m in c.sent[3] if isinstance(m, Fetch)])
    for _ in range(100):  # one second of loop iterations
        c.tick(0.01)
        wake = restarted.next_wakeup()
        assert wake is None or wake > c.now, "the next wakeup is already due: a busy loop"
    fetches = len([m for m in c.sent[3] if isinstance(m, Fetch)]) - before
    assert 1 <= fetches <= 2, fetches  # fetch_after = 1 s: at once or after a second


def test_a_restarted_replica_asks_for_state_as_soon_as_a_peer_says_it_is_ahead() -> None:
    """Real processes (dtnbus chaos, byzantine_nodes): a restarted node took 1.3-1.6 s to
    start its state transfer. Its first tick, with no peer heard yet, set it waiting a
    whole retransmission period for statuses, and a status that arrived meanwhile showing
    a peer far ahead did not end the wait."""
    c = Cluster(4, config_overrides={"speculative": False})  # retransmit_after = 1 s
    c.down = {3}
    for i in range(8):
        c.request((b"r%d" % i,))
        c.run()
    ahead = c.replicas[0]
    assert ahead.last_executed == 8 and c.replicas[3].last_executed == 0
    c.down = set()
    restarted = c.restart(3)
    c.hosts[3].tick(c.now)  # the first tick after the restart: nobody heard yet
    status = PeerStatus(0, ahead.view, True, ahead.last_executed, ahead.stable_checkpoint)
    c.now += 0.05
    c.deliver(3, c.codecs[0].encode(status))  # a peer's periodic status, 50 ms later
    c._apply(3, c.hosts[3].tick(c.now + 0.01))
    assert any(isinstance(m, StateRequest) for m in c.sent[3]), \
        "still waiting for statuses though a peer said it is 8 blocks ahead"
    c.run(rounds=20, dt=0.05)
    assert restarted.last_executed == 8 and restarted.head == ahead.head
