"""PBFT tentative execution (the default): replies once prepared, and they are right."""

from __future__ import annotations

import random

from harness import Cluster

from dtnbus.client import accepts
from dtnbus.messages import Commit, Reply, commit_quorum, reply_quorum

TENTATIVE = {"tentative": True, "view_change_timeout": 0.5, "retransmit_after": 0.3}


def _replies(c: Cluster, tentative: bool) -> list[Reply]:
    """Committed or tentative (prepared) replies; the fast path's speculative ones are
    tests/protocol/test_speculative.py's."""
    return [m for _, m in c.replies
            if isinstance(m, Reply) and m.tentative == tentative and not m.speculative]


def test_replies_come_once_prepared_before_any_commit_counts() -> None:
    c = Cluster(4, config_overrides=TENTATIVE)
    c.tamper = lambda sender, msg, frame: None if isinstance(msg, Commit) else frame
    c.request((b"t",))
    c.deliver_all()
    assert all(r.last_executed == 0 for r in c.replicas)  # nothing committed
    tentative = _replies(c, True)
    assert len(tentative) == 4 and len({(m.seq, m.result) for m in tentative}) == 1


def test_tentative_result_is_the_block_that_commits() -> None:
    c = Cluster(4, config_overrides={**TENTATIVE, "reply_after_tentative": True})
    for i in range(5):
        c.request((b"t%d" % i,))
    c.run()
    tentative = {(m.replica, m.number): (m.seq, m.result) for m in _replies(c, True)}
    final = {(m.replica, m.number): (m.seq, m.result) for m in _replies(c, False)}
    assert final and all(tentative[k] == v for k, v in final.items() if k in tentative)
    assert len(tentative) >= 4  # at least the first batch was answered tentatively


def test_with_it_switched_off_no_reply_is_tentative() -> None:
    c = Cluster(4, config_overrides={"tentative": False, "speculative": False})
    c.request((b"x",))
    c.run()
    assert not any(m.tentative for _, m in c.replies) and len(_replies(c, False)) == 4


def test_prepared_and_tentatively_answered_batch_survives_a_view_change() -> None:
    c = Cluster(4, config_overrides={**TENTATIVE, "reply_after_tentative": True})
    c.tamper = lambda sender, msg, frame: None if isinstance(msg, Commit) else frame
    c.request((b"keep-me",))
    c.deliver_all()
    promised = {(m.seq, m.result) for m in _replies(c, True)}
    assert len(promised) == 1
    c.down = {0}
    c.tamper = lambda sender, msg, frame: frame
    c.run(rounds=100, dt=0.1)
    final = {(m.seq, m.result) for m in _replies(c, False)}
    assert final == promised  # what the client was promised is what was committed


def test_one_reply_per_request_and_replica_and_the_committed_one_on_request() -> None:
    """Castro-Liskov: a tentatively answered request gets no committed reply unless the
    client asks again; then the committed reply comes from the cache, the same result.
    (Each replica also answered it speculatively first: the fast path.)"""
    c = Cluster(4)
    frame = c.request((b"once",))
    c.run()
    first = [m for _, m in c.replies]
    assert len(first) == 8 and all(m.tentative for m in first)
    assert sorted((m.replica, m.speculative) for m in first) == \
        [(r, s) for r in range(4) for s in (False, True)]
    c.replies.clear()
    for i in range(4):
        c.inject(i, frame)
    c.run()
    again = [m for _, m in c.replies]
    assert len(again) == 4 and not any(m.tentative for m in again)
    assert {(m.seq, m.result) for m in again} == {(m.seq, m.result) for m in first}


def test_tentative_execution_is_the_default() -> None:
    c = Cluster(4)
    c.request((b"x",))
    c.run()
    assert len(_replies(c, True)) >= 3


def test_client_rule_f_plus_1_committed_or_q_of_any_kind() -> None:
    key = (1, 0, b"h" * 32, 0)
    other = (1, 0, b"x" * 32, 0)
    n = 4  # f = 1, q = 3
    assert accepts(key, {0: key, 1: key}, {}, n)  # f+1 committed
    assert not accepts(key, {}, {0: key, 1: key}, n)  # f+1 tentative: not enough
    assert accepts(key, {}, {0: key, 1: key, 2: key}, n)  # q tentative
    assert accepts(key, {2: key}, {0: key, 1: key}, n)  # q of any kind
    assert not accepts(key, {2: other}, {0: key, 1: key}, n)


def test_a_tentative_answer_never_counts_as_a_committed_one() -> None:
    """Issue 9: each of f+1 replicas first answered tentatively with one result, then
    committed another; the client must not accept the tentative result as durable."""
    promised, committed = (1, 0, b"a" * 32, 0), (1, 0, b"b" * 32, 0)
    tentative = {0: promised, 1: promised}
    durable = {0: committed, 1: committed}
    assert not accepts(promised, durable, tentative, 4)
    assert accepts(committed, durable, tentative, 4)


def test_the_client_rule_counts_each_replica_once_with_its_committed_answer() -> None:
    """`accepts` counts in C for speed; it must say exactly what the rule says, written out
    plainly here, on random mixes of committed, tentative and speculative answers."""
    def plainly(key, committed, tentative, n, early):  # type: ignore[no-untyped-def]
        durable = sum(1 for k in committed.values() if k == key)
        latest = {**tentative, **committed}
        if durable >= reply_quorum(n) or \
                sum(1 for k in latest.values() if k == key) >= commit_quorum(n):
            return True
        voters = set(early) | set(committed)
        return len(voters) >= n and any(
            all(committed.get(r) == key or early.get(r) == (view, key) for r in voters)
            for view in {v for v, k in early.values() if k == key})

    rng = random.Random(12)
    keys = [(1, 0, b"a", 0), (1, 0, b"b", 0)]
    for _ in range(20_000):
        n = rng.choice((4, 7))
        committed, tentative = ({r: rng.choice(keys) for r in range(n) if rng.random() < 0.5}
                                for _ in range(2))
        early = {r: (rng.randrange(2), rng.choice(keys)) for r in range(n) if rng.random() < 0.7}
        key = keys[0]
        assert accepts(key, committed, tentative, n, early) == \
            plainly(key, committed, tentative, n, early), (committed, tentative, early)
