"""Reward to payment: how long from `dtnbus reward` until the trainer is owed on the local
chain, step by step, and the gas each reward costs against the reference's manual flow.

    python -m benchmarks.payout [--rewards 10] [--nodes 4] [--dir DIR]

Starts a cluster with its chain (`cluster up --chain development`: 4 nodes, anvil, the
wallet, 4 payout agents; not timed), then submits the rewards one after the other as
`dtnbus reward` does and times, as seen by the submitter: L1 commit (f+1 replies), propose
(the proposal appears on chain), confirmations (the q-th one appears), execute (the execution
appears). The chain is polled every 20 ms, so each step is known to about that. Gas is read
from the receipts of each reward's proposeReward, confirmations and execution.
Median and max per step; CSV in results/payout.csv.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

from eth_account import Account

from benchmarks.common import machine, print_table, write_csv
from dtnbus.cluster import cluster_up, stop_nodes
from dtnbus.l2.launch import chain_up, stop_chain_side
from dtnbus.l2.payments import submit_reward
from dtnbus.l2.rpc import Rpc
from dtnbus.l2.wallet_view import WalletView
from dtnbus.reward import derive_reward_id, make_reward

STEPS = ("l1_commit", "propose", "confirmations", "execute", "total")
# the reference contract by hand, prague rules, its best case (issue 13): propose (a later
# one) + 3 confirmations + execute with the confirmers at owner positions 0-2
REFERENCE_MANUAL_GAS = 76_399 + 3 * 50_571 + 94_984


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rewards", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--dir", type=Path, default=None,
                        help="Cluster directory (default: a temporary one).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.dir or Path(tmp) / "cluster"
        config = cluster_up(directory, args.nodes)
        try:
            chain = chain_up(config, directory, "development")
            rows = []
            for i in range(args.rewards):
                trainer = Account.create().address
                wei = (i + 1) * 10**17
                reward = make_reward(derive_reward_id(trainer, f"m-{i}", wei), trainer, wei,
                                     f"m-{i}")
                status = submit_reward(directory, None, reward)
                if status.state != "paid":
                    raise SystemExit(f"reward {i} not paid: {status.why}")
                rows.append({"reward": i, "l1_seq": status.l1_seq, **status.seconds})
            gas = _gas_per_reward(chain)
        finally:
            stop_chain_side(directory)
            stop_nodes(directory)
    for row, used in zip(rows, gas, strict=True):
        row["gas"] = used
    summary = [{"step": step, "median_s": statistics.median(r[step] for r in rows),
                "max_s": max(r[step] for r in rows)} for step in STEPS]
    print(f"dtnbus reward -> trainer owed, {args.nodes} nodes, threshold {chain.threshold}, "
          f"local anvil, {args.rewards} rewards ({machine()})")
    print_table(summary, ["step", "median_s", "max_s"])
    median_gas = statistics.median(gas)
    print(f"gas per reward: median {median_gas:,.0f} (proposeReward + {chain.threshold - 1} "
          f"confirmations + execute) vs the reference's manual flow {REFERENCE_MANUAL_GAS:,} "
          f"(propose + 3 confirmations + execute, best case): "
          f"{median_gas / REFERENCE_MANUAL_GAS:.2f}x")
    print(f"wrote {write_csv('payout.csv', rows)}")


def _gas_per_reward(chain) -> list[int]:
    rpc = Rpc(chain.rpc_url())
    try:
        view = WalletView(rpc, chain.contract, chain.deploy_block)
        events = view.refresh()
        per_index: dict[int, int] = defaultdict(int)
        seen: set[str] = set()
        order: list[int] = []
        for e in events:
            if e.index is None or e.tx_hash in seen:
                continue
            seen.add(e.tx_hash)  # proposeReward logs a Proposal and a Confirmation
            if e.kind == "Proposal":
                order.append(e.index)
            per_index[e.index] += int(rpc.receipt(e.tx_hash)["gasUsed"], 16)
        return [per_index[i] for i in order]
    finally:
        rpc.close()


if __name__ == "__main__":
    main()
