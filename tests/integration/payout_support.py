"""Helpers for the payout tests: a cluster with its chain (4 node processes, a local anvil, the
deployed wallet, 4 payout agent processes), and ways to look at the ledger and the chain."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account import Account
from integration_support import pid_alive, processes_mentioning, scrape, wait_until

from dtnbus.client import Client
from dtnbus.cluster import cluster_up, running_pids, stop_nodes
from dtnbus.config import ClusterConfig
from dtnbus.errors import LocalError
from dtnbus.l2.agent import state_path
from dtnbus.l2.agent_state import AgentState
from dtnbus.l2.chain_config import ChainConfig
from dtnbus.l2.chain_ops import ANVIL_DEV_KEY, send
from dtnbus.l2.contract import WalletEvent, call_data, decode_result
from dtnbus.l2.launch import chain_up, running, stop_chain_side
from dtnbus.l2.ledger_feed import CommittedReward, first_entries
from dtnbus.l2.rpc import Rpc
from dtnbus.l2.wallet_view import WalletView
from dtnbus.reward import Reward, derive_reward_id, make_reward

BNB = 10**18


@dataclass
class ChainCluster:
    directory: Path
    config: ClusterConfig
    chain: ChainConfig
    rpc: Rpc

    # ---- Layer 1 ------------------------------------------------------------------------------

    def commit(self, reward: Reward) -> int:
        """Commit a reward transaction on Layer 1 (f+1 replies); returns its seq."""
        with Client(self.config) as client:
            result = client.submit([(reward.encode(),)], timeout=30)
        assert result.results, f"reward not committed: {result.refused}"
        return next(iter(result.results.values()))[0]

    def entries(self, node: int = 0) -> dict[bytes, CommittedReward]:
        return first_entries(self.config.node(node).ledger)

    # ---- the chain ----------------------------------------------------------------------------

    def events(self) -> list[WalletEvent]:
        view = WalletView(self.rpc, self.chain.contract, self.chain.deploy_block)
        return view.refresh()

    def proposals_of(self, reward: Reward) -> list[WalletEvent]:
        return [e for e in self.events() if e.kind == "Proposal" and e.index == reward.index]

    def executions_of(self, reward: Reward) -> list[WalletEvent]:
        return [e for e in self.events() if e.kind == "Execution" and e.index == reward.index]

    def owed(self, trainer: str) -> int:
        (owed,) = decode_result("rewards", self.rpc.eth_call(
            self.chain.contract, call_data("rewards", trainer)))
        return owed

    def deposit(self, wei: int) -> None:
        send(self.rpc, ANVIL_DEV_KEY, self.chain.chain_id, self.chain.contract, value=wei)

    def paid(self, reward: Reward) -> bool:
        return bool(self.executions_of(reward))

    def wait_paid(self, reward: Reward, timeout: float = 30.0) -> None:
        wait_until(lambda: self.paid(reward), timeout, f"reward {reward.id_hex[:12]} paid",
                   interval=0.05)

    def pending_txs(self, selector_of: str) -> list[dict]:
        """Transactions waiting in anvil's pool that call wallet function `selector_of`."""
        block = self.rpc.call("eth_getBlockByNumber", "pending", True)
        selector = "0x" + call_data(selector_of, *_dummy_args(selector_of))[:4].hex()
        return [t for t in block["transactions"] if t["input"].startswith(selector)]

    # ---- the agents ---------------------------------------------------------------------------

    def agent_metrics(self, node: int) -> dict:
        """The agent's /metrics ({} while it is still starting, or after it was killed)."""
        try:
            return scrape(self.chain.payout_metrics[node])
        except OSError:
            return {}

    def agent_rows(self, node: int, sql: str, args: tuple = ()) -> list[tuple]:
        path = state_path(self.config.node(node).ledger)
        if not path.exists():
            return []
        state = AgentState(path, readonly=True)
        try:
            return state.db.execute(sql, args).fetchall()
        finally:
            state.close()

    def agent_log(self, node: int) -> str:
        return (self.directory / "logs" / f"payout-{node}.log").read_text()


def _dummy_args(name: str) -> tuple:
    return {"proposeReward": (b"\x01" * 32, "0x" + "11" * 20, 1),
            "confirmTransaction": (1,), "executeTransaction": (1,)}[name]


def metric(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def new_trainer() -> str:
    return Account.create().address


def reward_for(trainer: str, bnb: float, model: str = "m-17") -> Reward:
    wei = int(bnb * 10**9) * 10**9
    return make_reward(derive_reward_id(trainer, model, wei), trainer, wei, model)


@contextlib.contextmanager
def chain_cluster(directory: Path, **chain_kwargs: object) -> Iterator[ChainCluster]:
    """4 nodes + anvil + wallet + 4 payout agents in `directory`; everything is stopped after,
    and the test fails if any of those processes outlives it."""
    try:
        config = cluster_up(directory, 4)
    except LocalError as exc:
        pytest.fail(f"cluster_up failed: {exc}")
    started = set(running_pids(directory).values())
    rpc = None
    try:
        chain = chain_up(config, directory, "development", **chain_kwargs)  # type: ignore[arg-type]
        rpc = Rpc(chain.rpc_url())
        started |= set(running(directory).values())
        yield ChainCluster(directory, config, chain, rpc)
    finally:
        if rpc is not None:
            rpc.close()
        started |= set(running(directory).values()) | set(running_pids(directory).values())
        stop_chain_side(directory)
        stop_nodes(directory)
        wait_until(lambda: not any(pid_alive(p) for p in started), 15, "processes to exit")
        assert running(directory) == {} and running_pids(directory) == {}
        assert not processes_mentioning(str(directory)), "processes outlived the test"


def wait_agents_read(cluster: ChainCluster, seq: int, nodes: list[int],
                     timeout: float = 15.0) -> None:
    """Every listed agent has read its ledger up to `seq`."""
    def done() -> bool:
        for node in nodes:
            rows = cluster.agent_rows(node, "SELECT value FROM meta WHERE key = 'ledger_seq'")
            if not rows or int(rows[0][0]) < seq:
                return False
        return True

    wait_until(done, timeout, f"agents {nodes} to read the ledger up to seq {seq}")

