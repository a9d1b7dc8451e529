"""Who proposes, confirms and executes a reward, and when: every validator computes the same
answer from the committed ledger and the chain (dtnbus/l2/duty.py)."""

from __future__ import annotations

from dtnbus.l2.duty import ProposalFacts, designated_proposer, duty

N, Q, T = 4, 3, 2.0  # 4 validators, threshold 3, takeover period 2 s


def _facts(proposer=1, confirmers=(1,), executed=False, seen=10.0, threshold=None):
    return ProposalFacts(proposer, tuple(confirmers), executed, seen, threshold)


def test_designated_proposer_follows_the_committed_sequence():
    assert [designated_proposer(seq, 0, N) for seq in (4, 5, 6, 7)] == [0, 1, 2, 3]
    assert designated_proposer(5, 1, N) == 2  # the second reward of block 5


def test_designated_node_proposes_at_once_and_the_others_take_over_in_turn():
    committed = 100.0
    assert duty(1, N, Q, T, committed, 1, committed, None).action == "propose"
    for me, rank in ((2, 1), (3, 2), (0, 3)):
        early = duty(me, N, Q, T, committed + rank * T - 0.01, 1, committed, None)
        assert early.action is None and "waiting for node 1" in early.why
        assert duty(me, N, Q, T, committed + rank * T, 1, committed, None).action == "propose"


def test_the_q_minus_1_nodes_after_the_proposer_confirm_at_once():
    p = _facts(proposer=1, confirmers=(1,))
    assert duty(2, N, Q, T, 10.0, 1, 0.0, p).action == "confirm"
    assert duty(3, N, Q, T, 10.0, 1, 0.0, p).action == "confirm"
    late = duty(0, N, Q, T, 10.0, 1, 0.0, p)
    assert late.action is None and late.due == 10.0 + T
    assert duty(0, N, Q, T, 10.0 + T, 1, 0.0, p).action == "confirm"  # if still short


def test_nobody_confirms_twice_or_past_the_threshold():
    assert duty(2, N, Q, T, 50.0, 1, 0.0, _facts(confirmers=(1, 2))).action is None
    assert duty(0, N, Q, T, 50.0, 1, 0.0, _facts(confirmers=(1, 2, 3),
                                                 threshold=11.0)).action != "confirm"


def test_the_qth_confirmer_executes_and_the_next_take_over():
    p = _facts(proposer=1, confirmers=(1, 3, 2), threshold=20.0)  # node 2 confirmed third
    assert duty(2, N, Q, T, 20.0, 1, 0.0, p).action == "execute"
    assert duty(3, N, Q, T, 20.0, 1, 0.0, p).action is None
    assert duty(3, N, Q, T, 20.0 + T, 1, 0.0, p).action == "execute"
    assert duty(1, N, Q, T, 20.0 + 3 * T, 1, 0.0, p).action == "execute"


def test_a_paid_reward_needs_nothing():
    d = duty(0, N, Q, T, 99.0, 1, 0.0, _facts(confirmers=(1, 2, 3), executed=True))
    assert d.action is None and d.why == "paid"
