"""Rewards committed on Layer 1 are paid by the validators' own wallet, exactly once.

Real parts: 4 node processes, a local anvil, the compiled MultiSigContract, 4 payout agent
processes, one cluster for the whole module (the tests run in order and each uses fresh
trainers). The fault tests (killed proposer, killed executor) are in test_payout_faults.py.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from eth_account import Account
from integration_support import wait_until
from payout_support import (
    BNB,
    ChainCluster,
    chain_cluster,
    metric,
    new_trainer,
    reward_for,
    wait_agents_read,
)

from dtnbus.client import Client
from dtnbus.l2.chain_ops import send
from dtnbus.l2.contract import call_data
from dtnbus.l2.launch import start_agents, stop_chain_side
from dtnbus.l2.payments import submit_reward
from dtnbus.reward import make_reward
from dtnbus.storage import Ledger

TAKEOVER = 1.0
MANUAL_FLOW_GAS = 76_399 + 3 * 50_571 + 94_984  # the reference by hand, best case (prague)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    with chain_cluster(tmp_path_factory.mktemp("payouts"), takeover_seconds=TAKEOVER) as c:
        yield c


def test_three_rewards_end_to_end_match_the_ledger_one_to_one(cluster: ChainCluster, run_cli):
    trainers = [new_trainer() for _ in range(3)]
    amounts = [0.5, 1.25, 0.000000001]
    cli = run_cli("reward", "--dir", cluster.directory, "--trainer", trainers[0], "--amount",
                  "0.5", "--model-id", "m-17", "--json")
    assert cli.returncode == 0, cli.stderr
    out = json.loads(cli.stdout.strip().splitlines()[-1])
    assert out["state"] == "paid" and out["owed_wei"] == BNB // 2
    assert (out["confirmations"], out["required"]) == (3, 3)
    assert "committed on L1 at seq" in cli.stdout and "trainer owed 0.5" in cli.stdout
    for trainer, bnb in zip(trainers[1:], amounts[1:], strict=True):
        status = submit_reward(cluster.directory, None, reward_for(trainer, bnb, "m-18"))
        assert status.state == "paid", status.why

    for trainer, bnb in zip(trainers, amounts, strict=True):
        assert cluster.owed(trainer) == int(bnb * 10**9) * 10**9

    # the chain's events and the ledger's entries, one to one
    entries = cluster.entries()
    assert len(entries) == 3
    events = cluster.events()
    proposals = [e for e in events if e.kind == "Proposal"]
    assert sorted((e.reward_id, e.index, e.destination, e.value) for e in proposals) == sorted(
        (r.reward.reward_id, r.reward.index, r.reward.trainer, r.reward.amount_wei)
        for r in entries.values())
    executions = Counter(e.index for e in events if e.kind == "Execution")
    assert executions == Counter(r.reward.index for r in entries.values())
    confirmations = Counter(e.index for e in events if e.kind == "Confirmation")
    assert all(confirmations[r.reward.index] == 3 for r in entries.values())  # none wasted

    # every agent agrees, and the gas per reward is below the reference's manual flow
    wait_until(lambda: all(
        [r[0] for r in cluster.agent_rows(n, "SELECT state FROM rewards")] == ["paid"] * 3
        for n in range(4)), 10, "every agent to see the three payments")
    per_reward = Counter()
    for e in events:
        if e.index is not None and e.kind in ("Proposal", "Confirmation", "Execution"):
            if e.kind == "Confirmation" and any(
                    p.tx_hash == e.tx_hash for p in proposals):  # proposeReward's own
                continue
            receipt = cluster.rpc.receipt(e.tx_hash)
            per_reward[e.index] += int(receipt["gasUsed"], 16)
    assert all(gas < 0.6 * MANUAL_FLOW_GAS for gas in per_reward.values()), per_reward

    status = run_cli("reward", "status", "--dir", cluster.directory, "--json")
    assert status.returncode == 0, status.stderr
    listed = json.loads(status.stdout.strip().splitlines()[-1])["rewards"]
    assert [r["state"] for r in listed] == ["paid"] * 3
    assert [r["l1_seq"] for r in listed] == sorted(r["l1_seq"] for r in listed)


def test_same_reward_twice_and_a_replayed_request_are_paid_once(cluster: ChainCluster):
    trainer = new_trainer()
    reward = reward_for(trainer, 2.0, "m-21")
    first = submit_reward(cluster.directory, None, reward)
    assert first.state == "paid" and not first.already_committed

    again = submit_reward(cluster.directory, None, reward)  # `dtnbus reward` a second time
    assert again.already_committed and again.executed_tx == first.executed_tx

    # a second Layer 1 entry with the same id (another request), and the first request's
    # signed frame replayed to every replica
    second_seq = cluster.commit(reward)
    entry = cluster.entries()[reward.reward_id]
    ledger = Ledger(cluster.config.node(0).ledger, readonly=True)
    frame = ledger.requests(entry.seq)[entry.position].frame
    ledger.close()
    with Client(cluster.config) as client:
        for sock in client.sockets.values():
            sock.send(frame)
    # a later reward: once it is paid, every agent has read past both copies
    marker = reward_for(new_trainer(), 0.1, "m-22")
    assert submit_reward(cluster.directory, None, marker).state == "paid"
    wait_agents_read(cluster, max(second_seq, cluster.entries()[marker.reward_id].seq),
                     list(range(4)))

    assert len(cluster.proposals_of(reward)) == 1
    assert len(cluster.executions_of(reward)) == 1
    assert cluster.owed(trainer) == 2 * BNB
    for node in range(4):
        assert metric(cluster.agent_metrics(node), "dtnbus_l2_duplicate_rewards_total",
                      kind="same") >= 1
        assert cluster.agent_rows(node, "SELECT COUNT(*) FROM duplicates WHERE reward_id = ?",
                                  (reward.reward_id,))[0][0] >= 1


# every refusal is in tests/l2/test_reward.py; here two, through the command, on a cluster
@pytest.mark.parametrize("args, error", [
    (("--trainer", "0x5aaeb6053F3E94C9b9A09f33669435E7Ef1BeAed"), "EIP-55 checksum"),
    (("--amount", "0.0000000001"), "whole gwei"),
])
def test_malformed_reward_is_refused_and_never_reaches_the_ledger(cluster: ChainCluster,
                                                                   run_cli, args, error):
    good = {"--trainer": "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "--amount": "1",
            "--model-id": "m-17"}
    good.update(dict(zip(args[::2], args[1::2], strict=True)))
    height = _height(cluster)
    cli = run_cli("reward", "--dir", cluster.directory,
                  *[x for kv in good.items() for x in kv])
    assert cli.returncode == 2 and error in cli.stderr, cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1 and "Traceback" not in cli.stderr
    assert _height(cluster) == height


def _height(cluster: ChainCluster) -> int:
    ledger = Ledger(cluster.config.node(0).ledger, readonly=True)
    try:
        return ledger.height
    finally:
        ledger.close()


def test_conflicting_reward_id_is_refused_at_submission(cluster: ChainCluster, run_cli):
    trainer = new_trainer()
    reward = reward_for(trainer, 0.3, "m-30")
    assert submit_reward(cluster.directory, None, reward).state == "paid"
    cli = run_cli("reward", "--dir", cluster.directory, "--trainer", trainer, "--amount", "0.4",
                  "--model-id", "m-30", "--reward-id", reward.id_hex)
    assert cli.returncode == 2
    assert "already committed" in cli.stderr and "--reward-id" in cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1


def test_unfunded_wallet_says_why_and_pays_once_funded(cluster: ChainCluster, run_cli):
    trainer = new_trainer()
    balance = cluster.rpc.balance(cluster.chain.contract)
    reward = reward_for(trainer, balance / BNB + 50, "m-40")  # 50 BNB more than it holds
    status = submit_reward(cluster.directory, None, reward, timeout=2)
    assert status.state == "confirmed", status
    assert "deposit" in status.why and "needs" in status.why, status.why

    def blocked() -> bool:
        return any(metric(cluster.agent_metrics(n), "dtnbus_l2_rewards_blocked",
                          reason="wallet_balance") >= 1 for n in range(4))

    wait_until(blocked, 10, "an agent to report the wallet short of funds")
    retries = sum(metric(cluster.agent_metrics(n), "dtnbus_l2_retries_total",
                         reason="wallet_balance") for n in range(4))
    assert retries >= 1
    cli = run_cli("reward", "status", "--dir", cluster.directory, "--json")
    row = next(r for r in json.loads(cli.stdout.strip().splitlines()[-1])["rewards"]
               if r["reward_id"] == reward.id_hex)
    assert row["state"] == "confirmed" and "deposit" in row["why"]
    assert "not paid yet" not in row["why"]

    cluster.deposit(60 * BNB)
    cluster.wait_paid(reward)
    assert len(cluster.executions_of(reward)) == 1
    assert cluster.owed(trainer) == reward.amount_wei
    wait_until(lambda: not blocked(), 10, "the blocked gauge to clear")


def test_byzantine_proposals_are_never_confirmed_and_are_flagged(cluster: ChainCluster):
    byzantine = 3
    stop_chain_side(cluster.directory, ["payout-3"])  # it does not run an honest agent
    key = cluster.chain.owner_key(byzantine)
    attacker = Account.create().address
    chain_id, contract = cluster.chain.chain_id, cluster.chain.contract
    # 1. a reward no ledger holds, proposed (which confirms it) by the Byzantine owner
    bogus = make_reward(b"\x42" * 32, attacker, BNB, "m-666")
    send(cluster.rpc, key, chain_id, contract, data=call_data(
        "proposeReward", bogus.reward_id, attacker, BNB))
    # 2. a real reward's id, front-run with the attacker as trainer
    real = reward_for(new_trainer(), 0.7, "m-50")
    stolen = make_reward(real.reward_id, attacker, real.amount_wei, "m-50")
    send(cluster.rpc, key, chain_id, contract, data=call_data(
        "proposeReward", real.reward_id, attacker, real.amount_wei))

    status = submit_reward(cluster.directory, None, real, timeout=30)
    assert status.state == "paid", status  # not blocked by the front-runner

    def flagged() -> bool:
        return all(metric(cluster.agent_metrics(n), "dtnbus_l2_unbacked_proposals") == 2
                   and metric(cluster.agent_metrics(n),
                              "dtnbus_l2_unbacked_confirmations_total") >= 2
                   for n in range(3))

    wait_until(flagged, 20, "the correct agents to flag both unbacked proposals")
    for node in range(3):
        assert "UNBACKED proposal" in cluster.agent_log(node)
    for r in (bogus, stolen):
        assert len(cluster.proposals_of(r)) == 1
        confirmations = [e for e in cluster.events()
                         if e.kind == "Confirmation" and e.index == r.index]
        assert [e.actor for e in confirmations] == [cluster.chain.owners[byzantine]]
        assert not cluster.executions_of(r)
    assert cluster.owed(attacker) == 0
    start_agents(cluster.chain, cluster.directory, [byzantine])
