"""Layer 2: the validators pay the rewards PBFT commits through their MultiSigContract.

reward.py (one level up) defines the reward transaction; here: the packaged contract
(contract.py), JSON-RPC (rpc.py), the [chain] table (chain_config.py), set-up (chain_ops.py,
launch.py), the ledger and wallet readers (ledger_feed.py, wallet_view.py), who acts when
(duty.py), the payout agent and its state (agent.py, agent_state.py), and the commands
(payments.py, commands.py). See docs/payouts.md.
"""
