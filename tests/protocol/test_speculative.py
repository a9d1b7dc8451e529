"""The fast path: replies once pre-prepared (three hops), a client that needs all n of
them in one view, and a view change that keeps what they promised."""

from __future__ import annotations

from harness import Cluster

from dtnbus.client import Answers, accepts
from dtnbus.log import Cert, StableCheckpoint
from dtnbus.messages import (
    Commit,
    Prepare,
    PrePrepare,
    Reply,
    ViewChange,
    batch_digest,
)
from dtnbus.view_change import ViewChangeVote, check_view_change, plan_new_view

FAST = {"view_change_timeout": 0.5, "retransmit_after": 0.3}
KEY = (1, 0, b"h" * 32, 0)
OTHER = (1, 0, b"x" * 32, 0)
X, Y = (b"\x01" * 32,), (b"\x02" * 32,)


def _speculative(c: Cluster) -> list[Reply]:
    return [m for _, m in c.replies if m.speculative]


def _no_votes(sender: int, msg: object, frame: bytes) -> bytes | None:
    return None if isinstance(msg, Prepare | Commit) else frame


def test_every_replica_answers_once_pre_prepared_before_any_vote() -> None:
    c = Cluster(4, config_overrides=FAST)
    c.tamper = _no_votes
    c.request((b"fast",))
    c.deliver_all()
    assert all(not s.prepared for r in c.replicas for s in r.slots.values())
    spec = _speculative(c)
    assert sorted(m.replica for m in spec) == [0, 1, 2, 3]
    assert len({(m.view, m.seq, m.result) for m in spec}) == 1
    answers = Answers()
    for m in spec:
        answers.note(m.replica, (m.seq, m.position, m.result, m.outcome), m.view, True, True)
    assert answers.decides((spec[0].seq, spec[0].position, spec[0].result, spec[0].outcome), 4)


def test_the_answered_pre_prepare_is_durable_before_the_reply() -> None:
    c = Cluster(4, config_overrides=FAST)
    c.tamper = _no_votes
    c.request((b"durable",))
    c.deliver_all()
    before = c.replicas[2].slots[1].spec
    assert before is not None and before[:2] == (0, c.replicas[2].slots[1].preprepare.digests)
    restarted = c.restart(2)
    assert restarted.slots[1].spec == before  # read back from the "speculated" record


def test_what_n_speculative_replies_promised_survives_a_view_change() -> None:
    """Nobody prepared the batch (every vote lost), every replica answered it
    speculatively; the primary then fails while a second request waits. PBFT's rule alone
    would let the new primary order both in one new batch at that sequence, a different
    block than all n promised; the fast path's rule keeps the promised batch."""
    c = Cluster(4, config_overrides=FAST)
    c.tamper = _no_votes
    c.request((b"promised",))
    c.deliver_all()
    promised = {(m.seq, m.result) for m in _speculative(c)}
    assert len(promised) == 1 and len(_speculative(c)) == 4
    c.down = {0}
    c.tamper = lambda sender, msg, frame: None \
        if isinstance(msg, Prepare | Commit) and msg.view == 0 else frame  # never prepared
    c.request((b"waiting",), to=[1, 2, 3])
    c.run(rounds=200, dt=0.1)
    assert all(r.view >= 1 for i, r in enumerate(c.replicas) if i != 0)
    blocks = {(b.seq, b.hash) for i in (1, 2, 3) for b in c.blocks[i] if b.seq == 1}
    assert blocks == promised  # every correct replica executed the promised block at seq 1
    assert len(set(c.heads())) == 1


def test_one_replica_short_of_n_falls_back_to_q_tentative_replies() -> None:
    c = Cluster(4, config_overrides=FAST)
    c.down = {3}
    c.request((b"slow",))
    c.run()
    spec = _speculative(c)
    assert len(spec) == 3
    tentative = [m for _, m in c.replies if m.tentative and not m.speculative]
    assert len(tentative) == 3  # q: the client decides on these


def test_a_cpu_bound_replica_skips_the_fast_path_and_still_answers_tentatively() -> None:
    """Under load every batch is at the head of the log (the next is cut once it
    executed), so a speculative reply would double every reply: measured 17 % fewer tx/s
    at n = 4. A replica whose host reports its loop CPU-bound skips it."""
    c = Cluster(4, config_overrides=FAST)
    c.replicas[2].backlogged = True
    c.request((b"busy",))
    c.run()
    assert sorted(m.replica for m in _speculative(c)) == [0, 1, 3]
    assert sorted(m.replica for _, m in c.replies if m.tentative and not m.speculative) \
        == [0, 1, 2, 3]


def test_a_batch_cut_under_load_gets_no_speculative_replies() -> None:
    c = Cluster(4, config_overrides={**FAST, "busy_pending": 3, "batch_delay": 1.0})
    c.tamper = _no_votes  # the first batch stays in flight while three more wait
    c.request((b"first",))  # ordered at once (nothing in flight): answered early
    c.deliver_all()
    assert len(_speculative(c)) == 4
    for i in range(3):
        c.request((b"queued-%d" % i,))
    c.deliver_all()
    assert all(len(r.pool.pending) == 3 for r in c.replicas)
    c.tamper = lambda sender, msg, frame: frame
    c.run()
    assert {m.number for m in _speculative(c)} == {1}
    assert all(r.last_executed >= 2 for r in c.replicas)


def test_switched_off_no_reply_is_speculative() -> None:
    c = Cluster(4, config_overrides={"speculative": False})
    c.request((b"x",))
    c.run()
    assert not _speculative(c) and len(c.replies) == 4


# ----------------------------------------------------------------- the client's rule


def test_the_client_needs_all_n_speculative_answers_in_one_view() -> None:
    n = 4
    assert accepts(KEY, {}, {}, n, {r: (0, KEY) for r in range(4)})
    assert not accepts(KEY, {}, {}, n, {r: (0, KEY) for r in range(3)})  # q is not enough
    assert not accepts(KEY, {}, {}, n, {0: (0, KEY), 1: (0, KEY), 2: (0, KEY), 3: (1, KEY)})
    assert not accepts(KEY, {}, {}, n, {0: (0, KEY), 1: (0, KEY), 2: (0, KEY), 3: (0, OTHER)})
    # a committed answer vouches in any view; f+1 of them decide anyway
    assert accepts(KEY, {3: KEY}, {}, n, {0: (0, KEY), 1: (0, KEY), 2: (0, KEY)})


def test_a_speculative_answer_never_counts_as_a_tentative_one() -> None:
    answers = Answers()
    for r in range(3):
        answers.note(r, KEY, 0, True, True)
    assert not answers.decides(KEY, 4) and answers.promised(KEY) == 0
    for r in range(3):  # then prepared: q tentative answers decide
        assert answers.note(r, KEY, 0, True, False)
    assert answers.decides(KEY, 4)
    assert not answers.note(0, KEY, 0, True, True)  # late speculative answer: nothing new


# ----------------------------------------------------------------- the new view's rule


def _vote(replica: int, certs: dict[int, Cert] | None = None,
          latest: dict[int, tuple[int, tuple[bytes, ...]]] | None = None) -> ViewChangeVote:
    certs = certs or {}
    merged = {seq: (cert.view, cert.digests) for seq, cert in certs.items()}
    merged.update(latest or {})
    return ViewChangeVote(replica, 3, StableCheckpoint(), certs, b"", merged)


def test_f_plus_1_speculative_answers_in_a_later_view_beat_an_older_certificate() -> None:
    votes = [_vote(1, {1: Cert(1, X, ())}, {1: (2, Y)}), _vote(2, latest={1: (2, Y)}),
             _vote(3)]
    assert plan_new_view(3, votes, 4).order == {1: Y}


def test_f_speculative_answers_are_not_enough() -> None:
    votes = [_vote(1, {1: Cert(1, X, ())}), _vote(2, latest={1: (2, Y)}), _vote(3)]
    assert plan_new_view(3, votes, 4).order == {1: X}
    assert plan_new_view(3, [_vote(1), _vote(2, latest={1: (2, Y)}), _vote(3)], 4).order \
        == {}


def test_a_certificate_beats_speculative_answers_of_its_own_view() -> None:
    """An equivocating primary: X prepared (and may have committed) in view 1 while one
    correct replica and f faulty ones answered Y in view 1; X must stay."""
    votes = [_vote(1, {1: Cert(1, X, ())}), _vote(2, latest={1: (1, Y)}),
             _vote(3, latest={1: (1, Y)})]
    assert plan_new_view(3, votes, 4).order == {1: X}


def test_gaps_below_a_speculative_sequence_are_filled_empty() -> None:
    votes = [_vote(1, latest={3: (0, Y)}), _vote(2, latest={3: (0, Y)}), _vote(3)]
    assert plan_new_view(3, votes, 4).order == {1: (), 2: (), 3: Y}


# ----------------------------------------------------------------- the VIEW-CHANGE's shape


def _proofs(c: Cluster, *msgs: object) -> list[tuple[object, bytes]]:
    return [(m, c.codecs[m.replica].encode(m)) for m in msgs]


def test_a_view_change_shows_a_speculative_pre_prepare_only_if_newer_than_its_cert() -> None:
    c = Cluster(4)
    cert_pp = PrePrepare(1, 1, 1, X)
    prepares = [Prepare(1, 1, r, batch_digest(X)) for r in (2, 3)]
    newer, older = PrePrepare(2, 1, 2, Y), PrePrepare(0, 1, 0, Y)
    ok = check_view_change(ViewChange(3, 2, 0, ()), _proofs(c, cert_pp, *prepares, newer), 4,
                           256, 1024)
    assert isinstance(ok, ViewChangeVote) and ok.latest == {1: (2, Y)} and ok.certs[1].view == 1
    stale = check_view_change(ViewChange(3, 2, 0, ()), _proofs(c, older, cert_pp, *prepares),
                              4, 256, 1024)
    assert isinstance(stale, str)
    two = check_view_change(ViewChange(3, 2, 0, ()), _proofs(c, newer, older), 4, 256, 1024)
    assert isinstance(two, str)
