"""View change: a faulty or crashed primary is replaced, and nothing committed is lost."""

from __future__ import annotations

from harness import Cluster

from dtnbus.crypto import Signer, generate_key
from dtnbus.messages import Commit, NewView, Prepare, PrePrepare, ViewChange, batch_digest
from dtnbus.wire import Codec

FAST = {"view_change_timeout": 0.5, "retransmit_after": 0.3}


def _alive(c: Cluster) -> list[int]:
    return [i for i in range(c.n) if i not in c.down]


def test_crashed_primary_is_replaced_and_requests_commit() -> None:
    c = Cluster(4, config_overrides=FAST)
    c.down = {0}
    for i in range(3):
        c.request((b"v%d" % i,))
    c.run(rounds=100, dt=0.1)
    for i in _alive(c):
        r = c.replicas[i]
        assert r.view == 1 and r.active and r.executed_txs == 3
    assert len({c.replicas[i].head for i in _alive(c)}) == 1
    assert all(c.views[i] == [1] for i in _alive(c))


def test_prepared_batches_survive_the_view_change_unchanged() -> None:
    """Commits are lost and the primary dies: the new view must re-order the same batches."""
    c = Cluster(4, config_overrides=FAST)

    c.tamper = lambda sender, msg, frame: None if isinstance(msg, Commit) else frame
    for i in range(3):
        c.request((b"p%d" % i,))
    c.deliver_all()
    prepared = {seq: s.digest for seq, s in c.replicas[1].slots.items() if s.prepared}
    assert prepared and all(r.last_executed == 0 for r in c.replicas)
    c.down = {0}
    c.tamper = lambda sender, msg, frame: frame
    c.run(rounds=100, dt=0.1)
    for i in _alive(c):
        r = c.replicas[i]
        assert r.view == 1 and r.executed_txs == 3
        for seq, digest in prepared.items():
            assert c.blocks[i][seq - 1].digest == digest  # same batch, same place
    assert len({c.replicas[i].head for i in _alive(c)}) == 1


def test_a_replica_that_executed_before_the_change_does_not_execute_again() -> None:
    c = Cluster(4, config_overrides=FAST)
    # only replica 3 gets the commits it needs: it executes, the others do not
    c.tamper = lambda sender, msg, frame: frame
    c.request((b"once",))
    c.deliver_all(limit=4)  # requests
    c.deliver_all(limit=3)  # pre-prepares
    c.deliver_all(limit=9)  # prepares
    held = list(c.queue)  # commits
    c.queue = [(d, f) for d, f in held if d == 3]
    c.deliver_all()
    assert c.replicas[3].last_executed == 1 and c.replicas[1].last_executed == 0
    c.down = {0}
    c.run(rounds=100, dt=0.1)
    assert [c.replicas[i].executed_txs for i in (1, 2, 3)] == [1, 1, 1]
    assert len(c.blocks[3]) == 1 + sum(1 for b in c.blocks[1] if b.seq > 1)
    assert len({c.replicas[i].head for i in (1, 2, 3)}) == 1


def test_two_faulty_primaries_in_a_row_with_n_7() -> None:
    c = Cluster(7, config_overrides=FAST)
    c.down = {0, 1}  # f = 2: the primaries of views 0 and 1 are both dead
    c.request((b"x",))
    c.run(rounds=300, dt=0.1)
    for i in _alive(c):
        assert c.replicas[i].view == 2 and c.replicas[i].executed_txs == 1


def test_the_system_keeps_working_after_a_view_change() -> None:
    c = Cluster(4, config_overrides=FAST)
    c.down = {0}
    c.request((b"a",))
    c.run(rounds=100, dt=0.1)
    for i in range(5):
        c.request((b"after-%d" % i,))
    c.run(rounds=100, dt=0.1)
    assert all(c.replicas[i].executed_txs == 6 for i in _alive(c))
    assert all(c.replicas[i].view == 1 for i in _alive(c))


def test_no_view_change_while_the_primary_makes_progress() -> None:
    c = Cluster(4, config_overrides=FAST)
    for i in range(5):
        c.request((b"ok-%d" % i,))
        c.run(rounds=10, dt=0.1)
    assert all(r.view == 0 and r.active for r in c.replicas)


def test_view_change_without_proofs_for_a_stable_checkpoint_is_dropped() -> None:
    c = Cluster(4, config_overrides=FAST)
    bogus = c.codecs[2].encode(ViewChange(1, 2, 64, ()))  # claims a checkpoint, proves none
    c.deliver(1, bogus)
    assert c.drops[1] == ["malformed"]


def test_new_view_from_a_replica_that_is_not_the_new_primary_is_dropped() -> None:
    c = Cluster(4, config_overrides=FAST)
    c.deliver(1, c.codecs[3].encode(NewView(1, 3, ())))
    assert c.drops[1] == ["unknown_sender"]


def test_new_view_with_too_few_votes_is_dropped() -> None:
    c = Cluster(4, config_overrides=FAST)
    vc = c.codecs[2].encode(ViewChange(1, 2, 0, ()))
    c.deliver(3, c.codecs[1].encode(NewView(1, 1, (vc,))))
    assert c.drops[3] == ["malformed"]


def test_forged_proof_inside_a_view_change_rejects_the_whole_message() -> None:
    c = Cluster(4, config_overrides=FAST)
    forger = Codec(Signer(generate_key()), c.codecs[0].replicas, c.codecs[0].clients)
    pp = PrePrepare(0, 1, 0, (b"\x01" * 32,))
    fake_pp = forger.encode(pp)  # "from" the primary
    prepares = tuple(c.codecs[r].encode(Prepare(0, 1, r, batch_digest(pp.digests)))
                     for r in (2, 3))
    c.deliver(1, c.codecs[2].encode(ViewChange(1, 2, 0, (fake_pp, *prepares))))
    assert c.drops[1] == ["bad_signature"]


def test_a_view_change_that_does_not_form_its_certificates_costs_no_signature_check() -> None:
    c = Cluster(4, config_overrides=FAST)
    batch = PrePrepare(0, 1, 0, (b"\x01" * 32,))
    pp = c.codecs[0].encode(batch)
    prepare = c.codecs[3].encode(Prepare(0, 1, 3, batch_digest(batch.digests)))
    checks = []
    for verifier in c.codecs[1].replicas.values():
        original = verifier.verify
        verifier.verify = lambda sig, d, original=original: checks.append(1) or original(sig, d)
    try:
        c.deliver(1, c.codecs[2].encode(ViewChange(1, 2, 0, (pp, prepare))))  # 1 of q-1
    finally:
        for verifier in c.codecs[1].replicas.values():
            del verifier.verify
    assert c.drops[1] == ["malformed"] and not checks


def test_f_plus_1_view_changes_make_a_replica_join() -> None:
    c = Cluster(4, config_overrides={"view_change_timeout": 1000.0})
    c.deliver(2, c.codecs[3].encode(ViewChange(1, 3, 0, ())))
    assert c.replicas[2].view == 0  # f = 1 voice is not enough
    c.deliver(2, c.codecs[0].encode(ViewChange(1, 0, 0, ())))  # f + 1 = 2 others want view 1
    assert c.replicas[2].view == 1 and not c.replicas[2].active
    assert any(isinstance(c.codecs[1].decode(f).msg, ViewChange) for _, f in c.queue)


def test_the_new_primary_announces_the_view_once_it_has_a_quorum() -> None:
    c = Cluster(4, config_overrides={"view_change_timeout": 1000.0})
    for sender in (2, 3):
        c.deliver(1, c.codecs[sender].encode(ViewChange(1, sender, 0, ())))
    assert c.replicas[1].view == 1 and c.replicas[1].active  # joined, then q votes: NEW-VIEW
    c.deliver_all()
    assert all(c.replicas[i].view == 1 and c.replicas[i].active for i in (1, 2, 3))
