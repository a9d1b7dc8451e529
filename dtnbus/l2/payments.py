"""What `dtnbus reward` and `dtnbus reward status` do: submit a reward on Layer 1 and follow
its payment on chain; say for every committed reward where its payment stands and why.

The ledger says what was committed (the first entry of each reward id is the one paid), the
chain says what was proposed, confirmed and executed, and the payout agents' state files say
why a reward is not paid yet.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dtnbus.client import Client
from dtnbus.cluster import resolve_config
from dtnbus.config import ClusterConfig
from dtnbus.errors import LocalError, ProblemFound
from dtnbus.l2.agent import state_path
from dtnbus.l2.agent_state import AgentState
from dtnbus.l2.chain_config import ChainConfig, load_chain
from dtnbus.l2.contract import call_data, decode_result
from dtnbus.l2.ledger_feed import CommittedReward, first_entries
from dtnbus.l2.rpc import Rpc, RpcError, RpcUnavailable
from dtnbus.l2.wallet_view import ProposalState, WalletView
from dtnbus.reward import Reward, format_bnb
from dtnbus.storage import Ledger

POLL = 0.02  # how often `dtnbus reward` looks at the chain while it waits


@dataclass(slots=True)
class RewardStatus:
    reward_id: str
    l1_seq: int | None
    proposal: str | None  # the wallet's proposal index (hex) once proposed
    confirmations: int
    required: int
    executed_tx: str | None
    owed_wei: int | None  # what the trainer is owed now (None: the chain did not answer)
    trainer: str
    amount_wei: int
    model_id: str
    state: str  # committed | proposed | confirmed | paid
    why: str
    duplicates: int = 0  # later ledger entries with this id (never paid)
    seconds: dict[str, float] = field(default_factory=dict)
    already_committed: bool = False

    def to_json(self) -> dict:
        return asdict(self)


def _chain_error(chain: ChainConfig, exc: Exception) -> ProblemFound:
    return ProblemFound(f"chain {chain.network} ({chain.rpc or '$' + str(chain.rpc_env)}) does "
                      f"not answer: {exc}")


def load(directory: Path | None, config_file: Path | None) -> tuple[ClusterConfig, ChainConfig]:
    config = resolve_config(directory, config_file)
    return config, load_chain(config.path)


def _ledgers(config: ClusterConfig) -> list[tuple[int, Path]]:
    """(height, path) of every node ledger present here, highest first."""
    found = []
    for spec in config.nodes:
        try:
            ledger = Ledger(spec.ledger, readonly=True)
        except LocalError:
            continue
        found.append((ledger.height, spec.ledger))
        ledger.close()
    if not found:
        raise LocalError(f"no node ledger under {config.path.parent}: is this the cluster's "
                         "directory?")
    return sorted(found, reverse=True)


def committed_rewards(config: ClusterConfig, at_least: int = 0) -> dict[bytes, CommittedReward]:
    """The first entry of every reward id, from the most advanced ledger here."""
    height, path = _ledgers(config)[0]
    if height < at_least:
        raise LocalError(f"no ledger here has reached seq {at_least} yet")
    return first_entries(path)


def _wait_ledger(config: ClusterConfig, seq: int, timeout: float = 15.0) -> None:
    """Until a ledger here holds block `seq` (bounded: the replies said it commits)."""
    deadline = time.monotonic() + timeout
    while _ledgers(config)[0][0] < seq:
        if time.monotonic() > deadline:
            raise ProblemFound(f"the cluster answered that the reward is at seq {seq}, but no "
                               f"ledger here holds that block after {timeout:.0f}s")
        time.sleep(POLL)  # another process appends the block: nothing to block on


def _duplicates(config: ClusterConfig) -> dict[bytes, int]:
    counts: dict[bytes, int] = {}
    for spec in config.nodes:
        path = state_path(spec.ledger)
        if not path.exists():
            continue
        state = AgentState(path, readonly=True)
        try:
            for rid, count in state.db.execute(
                    "SELECT reward_id, COUNT(*) FROM duplicates GROUP BY reward_id"):
                counts[bytes(rid)] = max(counts.get(bytes(rid), 0), count)
        finally:
            state.close()
    return counts


def _agent_whys(config: ClusterConfig) -> dict[bytes, str]:
    """Why each unpaid reward waits: a blocker any agent reports wins, else the freshest."""
    best: dict[bytes, tuple[int, float, str]] = {}
    for spec in config.nodes:
        path = state_path(spec.ledger)
        if not path.exists():
            continue
        state = AgentState(path, readonly=True)
        try:
            for rid, why, blocker, updated in state.db.execute(
                    "SELECT reward_id, why, blocker, updated FROM rewards WHERE state != 'paid'"):
                key = (1 if blocker else 0, updated, f"node {spec.id}: {why}")
                if why and key > best.get(bytes(rid), (-1, 0.0, "")):
                    best[bytes(rid)] = key
        finally:
            state.close()
    return {rid: why for rid, (_b, _u, why) in best.items()}


def _owed(rpc: Rpc, chain: ChainConfig, trainer: str) -> int:
    (owed,) = decode_result("rewards", rpc.eth_call(chain.contract, call_data("rewards",
                                                                            trainer)))
    return owed


def _status(chain: ChainConfig, entry: CommittedReward | None, reward: Reward,
            p: ProposalState | None, owed: int, why: str) -> RewardStatus:
    if p is None:
        state = "committed" if entry is not None else "not committed"
    elif p.executed:
        state = "paid"
    else:
        state = "confirmed" if len(p.confirmations) >= chain.threshold else "proposed"
    if state == "paid":
        why = f"paid: executed in {p.executed_tx}" if p else why
    return RewardStatus(
        reward_id=reward.id_hex, l1_seq=entry.seq if entry else None,
        proposal=hex(p.index) if p else None, confirmations=len(p.confirmations) if p else 0,
        required=chain.threshold, executed_tx=p.executed_tx if p else None, owed_wei=owed,
        trainer=reward.trainer, amount_wei=reward.amount_wei, model_id=reward.model_id,
        state=state, why=why)


def reward_statuses(directory: Path | None, config_file: Path | None,
                    ) -> tuple[list[RewardStatus], str | None]:
    """Every committed reward, in ledger order, with its payment and why it waits; and why
    the chain could not be asked (then the payout agents' last knowledge stands in)."""
    config, chain = load(directory, config_file)
    entries = committed_rewards(config)
    whys = _agent_whys(config)
    dups = _duplicates(config)
    rpc = Rpc(chain.rpc_url(), timeout=5.0)
    try:
        view = WalletView(rpc, chain.contract, chain.deploy_block)
        view.refresh()
        out = []
        for rid, entry in entries.items():
            reward = entry.reward
            status = _status(chain, entry, reward, view.proposals.get(reward.index),
                             _owed(rpc, chain, reward.trainer),
                             whys.get(rid, "no payout agent has reported on it yet"))
            status.duplicates = dups.get(rid, 0)
            out.append(status)
        return out, None
    except (RpcUnavailable, RpcError) as exc:
        known = _agent_states(config)
        out = []
        for rid, entry in entries.items():
            status = _status(chain, entry, entry.reward, None, None,
                             whys.get(rid, "no payout agent has reported on it yet"))
            state, confirmations, executed_tx = known.get(rid, ("committed", 0, None))
            status.state, status.confirmations, status.executed_tx = (
                state, confirmations, executed_tx)
            if state != "committed":
                status.proposal = hex(entry.reward.index)
            status.duplicates = dups.get(rid, 0)
            out.append(status)
        return out, str(_chain_error(chain, exc))
    finally:
        rpc.close()


_PROGRESS = ("committed", "proposed", "confirmed", "paid")


def _agent_states(config: ClusterConfig) -> dict[bytes, tuple[str, int, str | None]]:
    """The furthest any payout agent has seen each reward get: (state, confirmations, tx)."""
    best: dict[bytes, tuple[str, int, str | None]] = {}
    for spec in config.nodes:
        path = state_path(spec.ledger)
        if not path.exists():
            continue
        state = AgentState(path, readonly=True)
        try:
            for rid, st, conf, tx in state.db.execute(
                    "SELECT reward_id, state, confirmations, executed_tx FROM rewards"):
                old = best.get(bytes(rid), ("committed", 0, None))
                if (_PROGRESS.index(st), conf) > (_PROGRESS.index(old[0]), old[1]):
                    best[bytes(rid)] = (st, conf, tx)
        finally:
            state.close()
    return best


def submit_reward(directory: Path | None, config_file: Path | None, reward: Reward,
                  timeout: float = 60.0) -> RewardStatus:
    """Commit `reward` on Layer 1 (unless its id already is) and wait until the trainer is
    owed it on chain or `timeout` passes. Times each step as seen from here."""
    config, chain = load(directory, config_file)
    start, wall_start = time.monotonic(), time.time()
    seconds: dict[str, float] = {}
    first = committed_rewards(config).get(reward.reward_id)
    if first is not None and not first.reward.same_payment(reward):
        raise LocalError(_conflict(first))
    already = first is not None
    if first is None:
        with Client(config) as client:
            result = client.submit([(reward.encode(),)], timeout=min(timeout, 60.0))
        if result.refused:
            raise ProblemFound(f"Layer 1 refused the reward request: {result.refused} "
                               "(is this client admitted?)")
        if not result.results:
            raise ProblemFound(f"the reward was not committed on Layer 1 within "
                               f"{min(timeout, 60.0):.0f}s (fewer than f+1 = {config.f + 1} "
                               "matching replies): is the cluster up?")
        seq = next(iter(result.results.values()))[0]
        seconds["l1_commit"] = time.monotonic() - start
        wall_commit = time.time()
        _wait_ledger(config, seq)  # a quorum's tentative replies may come before any block
        first = committed_rewards(config, at_least=seq).get(reward.reward_id)
        if first is None:
            raise ProblemFound(f"committed at seq {seq} but no ledger here shows it")
        if not first.reward.same_payment(reward):  # another client's entry came first
            raise LocalError(_conflict(first))
    status = _wait_paid(config, chain, first, reward, start, seconds, timeout, already)
    if not already and status.state == "paid":
        status.seconds.update(_agent_step_times(config, chain, reward, wall_start, wall_commit))
    return status


def _agent_step_times(config: ClusterConfig, chain: ChainConfig, reward: Reward,
                      wall_start: float, wall_commit: float) -> dict[str, float]:
    """The steps to the millisecond from the payout agents' outboxes (same host, same clock):
    when each agent saw its proposal, confirmations and execution mined. Nothing (and the
    20 ms observation stands) if the agents' files are not here."""
    mined: dict[str, list[float]] = {"propose": [], "confirm": [], "execute": []}
    for spec in config.nodes:
        path = state_path(spec.ledger)
        if not path.exists():
            continue
        state = AgentState(path, readonly=True)
        try:
            for action, updated in state.db.execute(
                    "SELECT action, updated FROM outbox WHERE reward_id = ? AND state = 'mined'",
                    (reward.reward_id,)):
                mined[action].append(updated)
        finally:
            state.close()
    confirms = sorted(mined["confirm"])
    if not mined["propose"] or len(confirms) < chain.threshold - 1 or not mined["execute"]:
        return {}
    proposed = min(mined["propose"])
    confirmed = confirms[chain.threshold - 2] if chain.threshold > 1 else proposed
    executed = min(mined["execute"])
    return {"propose": round(proposed - wall_commit, 4),
            "confirmations": round(confirmed - proposed, 4),
            "execute": round(executed - confirmed, 4),
            "total": round(executed - wall_start, 4)}


def _conflict(first: CommittedReward) -> str:
    r = first.reward
    return (f"reward id {r.id_hex} was already committed at seq {first.seq} for "
            f"{format_bnb(r.amount_wei)} BNB to {r.trainer} (model {r.model_id}); this one "
            "differs and would never be paid: give it another --reward-id")


def _wait_paid(config: ClusterConfig, chain: ChainConfig, entry: CommittedReward,
               reward: Reward, start: float, seconds: dict[str, float], timeout: float,
               already: bool) -> RewardStatus:
    rpc = Rpc(chain.rpc_url())
    mark = time.monotonic()  # the end of the previous step
    try:
        view = WalletView(rpc, chain.contract, chain.deploy_block)
        deadline = start + timeout
        p = None
        while True:
            view.refresh()
            p = view.proposals.get(reward.index)
            now = time.monotonic()
            if p is not None and "propose" not in seconds and not already:
                seconds["propose"], mark = now - mark, now
            if p is not None and len(p.confirmations) >= chain.threshold \
                    and "confirmations" not in seconds and not already:
                seconds["confirmations"], mark = now - mark, now
            if p is not None and p.executed:
                if not already:
                    seconds["execute"] = now - mark
                    seconds["total"] = now - start
                break
            if now >= deadline:
                break
            time.sleep(POLL)
        why = _agent_whys(config).get(reward.reward_id, "no payout agent has reported yet")
        status = _status(chain, entry, reward, p, _owed(rpc, chain, reward.trainer), why)
    except (RpcUnavailable, RpcError) as exc:
        raise _chain_error(chain, exc) from None
    finally:
        rpc.close()
    status.seconds = {k: round(v, 4) for k, v in seconds.items()}
    status.already_committed = already
    return status
