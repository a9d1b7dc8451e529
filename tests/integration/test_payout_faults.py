"""A validator killed with SIGKILL in the middle of a payment: the reward is still paid exactly
once, and the killed validator, restarted, reconciles with the chain and sends nothing more.
And a chain that goes away: the agents back off, say why, and pay once it is back.

The test holds the chain's mining (anvil automine off) to stop the payment at the exact step:
it waits until the validator's transaction is in the pool, kills the node and its payout agent,
and drops the transaction, as if the process died before it left the machine. Real parts: 4
node processes, anvil, the compiled wallet, 4 payout agent processes.
"""

from __future__ import annotations

import json

import pytest
from integration_support import wait_until
from payout_support import BNB, ChainCluster, chain_cluster, metric, new_trainer, reward_for

from dtnbus.cluster import kill_node, start_nodes
from dtnbus.l2.launch import kill_agent, start_agents, start_local_chain, stop_chain_side
from dtnbus.reward import Reward

TAKEOVER = 1.5


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    with chain_cluster(tmp_path_factory.mktemp("faults"), takeover_seconds=TAKEOVER) as c:
        yield c


def _pending_one(cluster: ChainCluster, function: str, count: int = 1) -> list[dict]:
    return wait_until(lambda: (lambda txs: txs if len(txs) >= count else None)(
        cluster.pending_txs(function)), 10, f"{count} pending {function} transaction(s)")


def _crash(cluster: ChainCluster, tx: dict) -> int:
    """SIGKILL the node and agent that sent `tx`; drop `tx`: it never reached the chain."""
    node = cluster.chain.node_of(_checksum(tx["from"]))
    assert node is not None
    kill_node(cluster.directory, node)
    kill_agent(cluster.directory, node)
    cluster.rpc.call("anvil_dropTransaction", tx["hash"])
    return node


def _checksum(address: str) -> str:
    from eth_utils import to_checksum_address

    return to_checksum_address(address)


def _restart_and_reconcile(cluster: ChainCluster, node: int, reward: Reward,
                           action: str) -> None:
    """Restart the killed validator; its agent must mark the reward paid and give up the
    transaction it signed before it died, without sending anything."""
    owner = cluster.chain.owners[node]
    nonce = cluster.rpc.nonce(owner, "latest")
    start_nodes(cluster.config, cluster.directory, [node])
    start_agents(cluster.chain, cluster.directory, [node])

    def reconciled() -> bool:
        rows = cluster.agent_rows(node, "SELECT state FROM rewards WHERE reward_id = ?",
                                  (reward.reward_id,))
        outbox = cluster.agent_rows(
            node, "SELECT state FROM outbox WHERE reward_id = ? AND action = ?",
            (reward.reward_id, action))
        return rows == [("paid",)] and outbox == [("abandoned",)]

    wait_until(reconciled, 20, f"node {node}'s agent to reconcile its {action}")
    assert cluster.rpc.nonce(owner, "latest") == nonce, "the restarted agent sent a transaction"
    assert cluster.rpc.nonce(owner, "pending") == nonce
    assert len(cluster.proposals_of(reward)) == 1
    assert len(cluster.executions_of(reward)) == 1


def test_killed_designated_proposer_is_taken_over_and_paid_once(cluster: ChainCluster):
    trainer = new_trainer()
    reward = reward_for(trainer, 1.0, "m-61")
    cluster.rpc.call("evm_setAutomine", False)
    try:
        cluster.commit(reward)
        (tx,) = _pending_one(cluster, "proposeReward")
        killed = _crash(cluster, tx)
    finally:
        cluster.rpc.call("evm_setAutomine", True)
        cluster.rpc.call("evm_mine")
    cluster.wait_paid(reward)
    (proposal,) = cluster.proposals_of(reward)
    assert proposal.actor != cluster.chain.owners[killed]  # another validator took over
    assert len(cluster.executions_of(reward)) == 1
    assert cluster.owed(trainer) == BNB
    _restart_and_reconcile(cluster, killed, reward, "propose")


def test_killed_executor_is_taken_over_and_paid_once(cluster: ChainCluster):
    trainer = new_trainer()
    reward = reward_for(trainer, 2.0, "m-62")
    cluster.rpc.call("evm_setAutomine", False)
    try:
        cluster.commit(reward)
        _pending_one(cluster, "proposeReward")
        cluster.rpc.call("evm_mine")
        _pending_one(cluster, "confirmTransaction", count=2)  # q - 1 = 2 confirmers
        cluster.rpc.call("evm_mine")  # both in one block: the second one is the q-th
        (tx,) = _pending_one(cluster, "executeTransaction")
        killed = _crash(cluster, tx)
    finally:
        cluster.rpc.call("evm_setAutomine", True)
        cluster.rpc.call("evm_mine")
    cluster.wait_paid(reward)
    (execution,) = cluster.executions_of(reward)
    assert execution.actor != cluster.chain.owners[killed]
    assert cluster.owed(trainer) == 2 * BNB
    _restart_and_reconcile(cluster, killed, reward, "execute")


def test_a_validator_that_was_down_catches_up_and_sends_nothing(cluster: ChainCluster):
    down = 3
    kill_node(cluster.directory, down)
    kill_agent(cluster.directory, down)
    trainer = new_trainer()
    reward = reward_for(trainer, 0.5, "m-64")
    cluster.commit(reward)
    cluster.wait_paid(reward)  # three validators are the threshold
    owner = cluster.chain.owners[down]
    nonce = cluster.rpc.nonce(owner, "latest")
    start_nodes(cluster.config, cluster.directory, [down])
    start_agents(cluster.chain, cluster.directory, [down])
    wait_until(lambda: cluster.agent_rows(
        down, "SELECT state FROM rewards WHERE reward_id = ?", (reward.reward_id,))
        == [("paid",)], 30, "the returning validator to catch up and see the payment")
    assert cluster.rpc.nonce(owner, "pending") == nonce
    assert len(cluster.executions_of(reward)) == 1
    assert cluster.owed(trainer) == reward.amount_wei


def test_chain_down_is_retried_with_backoff_and_pays_once_it_is_back(cluster: ChainCluster,
                                                                       run_cli):
    trainer = new_trainer()
    reward = reward_for(trainer, 0.25, "m-63")
    stop_chain_side(cluster.directory, ["anvil"])  # anvil saves its state on SIGTERM
    try:
        cluster.commit(reward)  # Layer 1 does not need the chain

        def waiting_for_rpc(node: int) -> bool:
            rows = cluster.agent_rows(node, "SELECT blocker, why FROM rewards WHERE "
                                      "reward_id = ?", (reward.reward_id,))
            m = cluster.agent_metrics(node)
            return (rows and rows[0][0] == "rpc" and "unreachable" in rows[0][1]
                    and metric(m, "dtnbus_l2_rpc_errors_total", kind="unavailable") >= 1
                    and metric(m, "dtnbus_l2_retries_total", reason="rpc") >= 1
                    and metric(m, "dtnbus_l2_rewards_blocked", reason="rpc") == 1)

        wait_until(lambda: all(waiting_for_rpc(n) for n in range(4)), 20,
                   "every agent to report the chain unreachable")
        cli = run_cli("reward", "status", "--dir", cluster.directory, "--json")
        assert cli.returncode == 1 and "does not answer" in cli.stderr
        row = next(r for r in json.loads(cli.stdout.strip().splitlines()[-1])["rewards"]
                   if r["reward_id"] == reward.id_hex)
        assert row["state"] == "committed" and "unreachable" in row["why"]
    finally:
        start_local_chain(cluster.chain, cluster.directory)
    cluster.wait_paid(reward, timeout=40)
    assert len(cluster.proposals_of(reward)) == 1
    assert len(cluster.executions_of(reward)) == 1
    assert cluster.owed(trainer) == reward.amount_wei
