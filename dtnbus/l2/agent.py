"""A validator's payout agent: pays the rewards its node's ledger commits, through the wallet.

One process per validator (`dtnbus payout --config F --node K`), beside the node: it reads
the node's committed ledger (read-only), follows the wallet's events over JSON-RPC and signs
with the node's owner key. The node's consensus loop never waits for a chain.

Each step: read new ledger blocks; fold in new wallet events (rebuilt from the deployment
block at start, so a restarted agent reconciles with the chain before it acts); settle the
transactions it already signed (its outbox); then do what `duty` says is its turn, at most
one transaction in flight. Safety does not rest on the timing: the wallet refuses a second
proposal of the same reward and a second execution, and this agent confirms nothing but the
first committed entry of a reward id in its own ledger. Failures (RPC down, a wallet that
cannot cover the amount, no gas money, a nonce another transaction took, a revert) put the
step off with backoff and say why in the state file, the metrics and the log.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from eth_account import Account

from dtnbus.config import ClusterConfig
from dtnbus.errors import LocalError
from dtnbus.l2.agent_state import AgentState, OutboxRow
from dtnbus.l2.chain_config import ChainConfig
from dtnbus.l2.contract import WalletEvent, call_data, decode_result, error_name
from dtnbus.l2.duty import Duty, ProposalFacts, designated_proposer, duty
from dtnbus.l2.ledger_feed import LedgerFeed
from dtnbus.l2.rpc import Rpc, RpcError, RpcUnavailable
from dtnbus.l2.wallet_view import ProposalState, WalletView
from dtnbus.metrics import PayoutMetrics
from dtnbus.reward import Reward, format_bnb

log = logging.getLogger("dtnbus.payout")

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 15.0
RPC_BACKOFF_MAX = 10.0
GAUGES_EVERY = 1.0
GAS_MARGIN = 1.2  # estimate x 1.2 + 5000: a state change between estimate and mining
STUCK_AFTER = 60.0  # a broadcast transaction still unmined after this is logged


def state_path(ledger: Path) -> Path:
    """The agent's own file beside the node's ledger: ledgers/node-3.payout.sqlite."""
    return ledger.with_name(ledger.name.removesuffix(".sqlite") + ".payout.sqlite")


@dataclass(slots=True)
class PendingReward:
    reward: Reward
    seq: int
    designated: int
    index: int
    seen: float  # monotonic: when this run of the agent first knew it was committed
    state: str = "committed"  # committed | proposed | confirmed (then paid: no longer pending)
    why: str = ""
    blocker: str | None = None
    confirmations: int = 0


@dataclass(slots=True)
class Backoff:
    until: float
    delay: float
    reason: str
    why: str = ""


class PayoutAgent:
    def __init__(self, config: ClusterConfig, chain: ChainConfig, node_id: int,
                 metrics: PayoutMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if chain.n != config.n:
            raise LocalError(f"{chain.cluster_file}: [chain] lists {chain.n} owners for "
                             f"{config.n} nodes")
        self.me = node_id
        self.n = config.n
        self.q = chain.threshold
        self.chain = chain
        self.address = chain.owners[node_id]
        self._key = chain.owner_key(node_id)
        self.clock = clock
        self.metrics = metrics or PayoutMetrics(node_id)
        ledger = config.node(node_id).ledger
        self.feed = LedgerFeed(ledger)
        self.state = AgentState(state_path(ledger))
        self.rpc = Rpc(chain.rpc_url())
        self.view = WalletView(self.rpc, chain.contract, chain.deploy_block)
        self.takeover = chain.takeover_seconds
        self.pending: dict[bytes, PendingReward] = {}  # ledger order
        self.committed: dict[bytes, Reward] = {}  # every first entry, paid or not
        self.by_index: dict[int, bytes] = {}  # proposal index -> reward id
        self.proposal_seen: dict[int, float] = {}
        self.threshold_seen: dict[int, float] = {}
        self.backoffs: dict[bytes, Backoff] = {}
        self.unbacked_seen: dict[int, float] = {}
        self.flagged: set[int] = set()
        self.waiting_since: dict[str, float] = {}  # tx hash -> when first seen unmined
        self.stuck: set[str] = set()
        self.synced = False  # the wallet view has caught up once (events before: history)
        self.verified = False
        self.rpc_delay = 0.0
        self.rpc_retry_at = 0.0
        self.rpc_down_since: float | None = None
        self.next_gauges = 0.0
        self.stopping = threading.Event()
        self._load()

    # ---- start-up -----------------------------------------------------------------------------

    def _load(self) -> None:
        now = self.clock()
        rows = self.state.db.execute(
            "SELECT reward_id, seq, designated, client, trainer, amount_wei, model_id, reason, "
            "state, confirmations FROM rewards ORDER BY seq, position, item").fetchall()
        for rid, seq, designated, _client, trainer, amount, model, reason, st, conf in rows:
            reward = Reward(bytes(rid), trainer, int(amount), model, reason)
            self.committed[reward.reward_id] = reward
            self.by_index[reward.index] = reward.reward_id
            if st != "paid":
                self.pending[reward.reward_id] = PendingReward(
                    reward, seq, designated, reward.index, now, state=st, confirmations=conf)

    def _verify_chain(self) -> None:
        """Once the chain answers: is it the chain and the wallet the cluster file names?"""
        chain_id = self.rpc.chain_id()
        if chain_id != self.chain.chain_id:
            raise LocalError(f"RPC {self.rpc.url} serves chain {chain_id}, [chain] says "
                             f"{self.chain.chain_id}")
        if not self.rpc.code(self.chain.contract):
            raise LocalError(f"no contract at {self.chain.contract} on chain {chain_id}")
        (is_owner,) = decode_result("isOwner", self.rpc.eth_call(
            self.chain.contract, call_data("isOwner", self.address)))
        if not is_owner:
            raise LocalError(f"{self.address} (node {self.me}'s owner) is not an owner of "
                             f"{self.chain.contract}")
        (required,) = decode_result("numSignaturesRequired", self.rpc.eth_call(
            self.chain.contract, call_data("numSignaturesRequired")))
        if required != self.q:
            log.warning("wallet threshold is %d, [chain].threshold says %d: using %d",
                        required, self.q, required)
            self.q = required
        self.verified = True

    # ---- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        def stop(signum: int, frame: Any) -> None:
            self.stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log.info("payout agent of node %d up: owner %s, wallet %s, threshold %d of %d",
                 self.me, self.address, self.chain.contract, self.q, self.n)
        try:
            while not self.stopping.is_set():
                self.step()
                self.stopping.wait(self.chain.poll_seconds)
        finally:
            self.close()

    def close(self) -> None:
        self.feed.close()
        self.state.close()
        self.rpc.close()
        log.info("payout agent of node %d stopped", self.me)

    def step(self) -> None:
        now = self.clock()
        self._read_ledger(now)
        if now < self.rpc_retry_at:
            return
        try:
            if not self.verified:
                self._verify_chain()
            events = self.view.refresh()
            self._observe(events, now)
            self.synced = True
            if self.rpc_down_since is not None:
                log.info("chain RPC answers again after %.1fs", now - self.rpc_down_since)
                self.rpc_down_since = None
            self.rpc_delay = 0.0
            self._settle_outbox(now)
            self._flag_unbacked(now)
            self._act(now)
            if now >= self.next_gauges:
                self.next_gauges = now + GAUGES_EVERY
                self._gauges()
        except RpcUnavailable as exc:
            self.metrics.rpc_error(unavailable=True)
            self._rpc_trouble(now, f"chain RPC unreachable ({exc})")
        except RpcError as exc:
            self.metrics.rpc_error(unavailable=False)
            self._rpc_trouble(now, f"chain RPC error ({exc})")
        self._publish(now)

    def _rpc_trouble(self, now: float, why: str) -> None:
        self.rpc_delay = min(RPC_BACKOFF_MAX, max(BACKOFF_FIRST, self.rpc_delay * 2))
        self.rpc_retry_at = now + self.rpc_delay
        self.metrics.retry("rpc")
        if self.rpc_down_since is None:
            self.rpc_down_since = now
            log.warning("%s; retrying with backoff", why)
        for p in self.pending.values():
            p.blocker, p.why = "rpc", f"{why}; retrying in {self.rpc_delay:.1f}s"

    # ---- Layer 1 ------------------------------------------------------------------------------

    def _read_ledger(self, now: float) -> None:
        after = int(self.state.get("ledger_seq", "0"))
        for block in self.feed.read(after, limit=200):
            db = self.state.db
            db.execute("BEGIN IMMEDIATE")
            try:
                for k, entry in enumerate(block.rewards):
                    self._committed(entry.seq, k, entry.position, entry.item, entry.client,
                                    entry.reward, now)
                for problem in block.malformed:
                    self.metrics.malformed()
                    log.warning("malformed reward transaction skipped: %s", problem)
                self.state.put("ledger_seq", str(block.seq))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            after = block.seq
        self.metrics.set_progress(after, self.view.cursor)

    def _committed(self, seq: int, k: int, position: int, item: int, client: str,
                   reward: Reward, now: float) -> None:
        first = self.committed.get(reward.reward_id)
        if first is not None:
            conflict = not first.same_payment(reward)
            self.state.db.execute("INSERT OR IGNORE INTO duplicates VALUES (?,?,?,?,?,?)",
                                  (seq, position, item, reward.reward_id, client, int(conflict)))
            self.metrics.duplicate(conflict)
            (log.warning if conflict else log.info)(
                "reward %s committed again at seq %d (%s): only its first entry is paid",
                reward.id_hex[:18], seq, "other contents" if conflict else "same payment")
            return
        designated = designated_proposer(seq, k, self.n)
        self.state.db.execute(
            "INSERT INTO rewards (reward_id, proposal, seq, position, item, designated, client, "
            "trainer, amount_wei, model_id, reason, state, why, committed_at, updated) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?, 'committed', '', ?, ?)",
            (reward.reward_id, hex(reward.index), seq, position, item, designated, client,
             reward.trainer, str(reward.amount_wei), reward.model_id, reward.reason,
             time.time(), time.time()))
        self.committed[reward.reward_id] = reward
        self.by_index[reward.index] = reward.reward_id
        self.pending[reward.reward_id] = PendingReward(reward, seq, designated, reward.index, now)
        self.metrics.reward_committed()
        log.info("reward %s committed at seq %d: %s BNB to %s (model %s); node %d proposes",
                 reward.id_hex[:18], seq, format_bnb(reward.amount_wei), reward.trainer,
                 reward.model_id, designated)

    # ---- the chain ----------------------------------------------------------------------------

    def _observe(self, events: list[WalletEvent], now: float) -> None:
        for e in events:
            if e.kind == "Deposit":
                for rid, b in list(self.backoffs.items()):  # funds arrived: try again now
                    if b.reason == "wallet_balance":
                        self.backoffs[rid] = Backoff(now, b.delay, b.reason, b.why)
                continue
            if e.index is None:
                continue
            p = self.view.proposals.get(e.index)
            if p is None:
                continue
            rid = self.by_index.get(e.index)
            pending = self.pending.get(rid) if rid is not None else None
            if e.kind == "Proposal":
                self.proposal_seen.setdefault(e.index, now)
                if pending is not None:
                    self._mark(pending, "proposed", proposed_at=time.time())
                    if self.synced:
                        self.metrics.observe_phase("committed_to_proposed", now - pending.seen)
            elif e.kind == "Confirmation":
                if e.index in self.flagged:
                    self._unbacked_confirmation(p, e.actor)
                if len(p.confirmations) >= self.q and e.index not in self.threshold_seen:
                    self.threshold_seen[e.index] = now
                    if pending is not None:
                        self._mark(pending, "confirmed", confirmed_at=time.time())
                        if self.synced:
                            self.metrics.observe_phase(
                                "proposed_to_confirmed",
                                now - self.proposal_seen.get(e.index, now))
            elif e.kind == "Execution" and pending is not None:
                self._paid(pending, p, now)

    def _paid(self, pending: PendingReward, p: ProposalState, now: float) -> None:
        rid = pending.reward.reward_id
        self.state.db.execute(
            "UPDATE rewards SET state = 'paid', why = ?, blocker = NULL, executed_tx = ?, "
            "paid_at = ?, confirmations = ?, updated = ? WHERE reward_id = ?",
            (f"paid: executed in {p.executed_tx}", p.executed_tx, time.time(),
             len(p.confirmations), time.time(), rid))
        del self.pending[rid]
        self.backoffs.pop(rid, None)
        self.metrics.reward_paid()
        if self.synced:
            self.metrics.observe_phase("confirmed_to_executed",
                                       now - self.threshold_seen.get(p.index, now))
        log.info("reward %s paid: %s BNB credited to %s in %s (executed by %s)",
                 pending.reward.id_hex[:18], format_bnb(p.value), p.destination, p.executed_tx,
                 p.executor)

    def _mark(self, pending: PendingReward, state: str, **times: float) -> None:
        """Move a reward forward (never back) to `state`, noting when it got there."""
        order = ("committed", "proposed", "confirmed")
        if order.index(state) <= order.index(pending.state):
            return
        pending.state = state
        sets = ", ".join(f"{k} = COALESCE({k}, ?)" for k in times)
        self.state.db.execute(
            f"UPDATE rewards SET state = ?, {sets}, updated = ? WHERE reward_id = ?",
            (state, *times.values(), time.time(), pending.reward.reward_id))

    def _catch_up(self, pending: PendingReward, p: ProposalState, now: float) -> None:
        """A reward this ledger committed after the chain had moved on (this node was behind):
        take in what the chain already did with it."""
        self._mark(pending, "proposed", proposed_at=time.time())
        if len(p.confirmations) >= self.q:
            self.threshold_seen.setdefault(p.index, now)
            self._mark(pending, "confirmed", confirmed_at=time.time())
        if p.executed:
            self._paid(pending, p, now)

    def _facts(self, p: ProposalState) -> ProposalFacts:
        node = self.chain.node_of
        return ProposalFacts(node(p.proposer), tuple(node(c) for c in p.confirmations),
                             p.executed, self.proposal_seen.get(p.index, self.clock()),
                             self.threshold_seen.get(p.index))

    # ---- unbacked proposals (never confirmed; flagged) ----------------------------------------

    def _flag_unbacked(self, now: float) -> None:
        grace = 2 * self.takeover
        for index, p in self.view.proposals.items():
            if index in self.by_index:
                if index in self.flagged:  # our ledger caught up with it after all
                    self.flagged.discard(index)
                    log.info("proposal %s is backed after all (reward %s)", hex(index)[:18],
                             "0x" + p.reward_id.hex()[:16])
                continue
            if index in self.flagged:
                continue
            first = self.unbacked_seen.setdefault(index, now)
            committed = self.committed.get(p.reward_id)
            if committed is not None:
                why = (f"its reward id is committed for {format_bnb(committed.amount_wei)} "
                       f"BNB to {committed.trainer}, not these contents")
            elif not any(p.reward_id):
                why = "it is a plain proposeTransaction: no Layer 1 entry"
            elif now - first >= grace:
                why = f"no entry of this node's ledger has its reward id after {grace:.0f}s"
            else:
                continue
            self.flagged.add(index)
            log.warning(
                "UNBACKED proposal %s by %s (node %s): %s BNB to %s; %s; this node never "
                "confirms it", hex(index)[:18], p.proposer, self.chain.node_of(p.proposer),
                format_bnb(p.value), p.destination, why)
            for owner in p.confirmations:
                self._unbacked_confirmation(p, owner)
        self.metrics.set_unbacked(len(self.flagged))

    def _unbacked_confirmation(self, p: ProposalState, owner: str | None) -> None:
        self.metrics.unbacked_confirmation()
        log.warning("owner %s (node %s) confirmed unbacked proposal %s", owner,
                    self.chain.node_of(owner or ""), hex(p.index)[:18])

    # ---- acting -------------------------------------------------------------------------------

    def _duty(self, pending: PendingReward, now: float) -> Duty:
        p = self.view.proposals.get(pending.index)
        return duty(self.me, self.n, self.q, self.takeover, now, pending.designated,
                    pending.seen, None if p is None else self._facts(p))

    def _act(self, now: float) -> None:
        busy = bool(self.state.in_flight())
        for pending in list(self.pending.values()):
            # a mined confirmation may make this node the executor: look again at once
            for _ in range(3):
                if pending.reward.reward_id not in self.pending:
                    break  # paid meanwhile
                p = self.view.proposals.get(pending.index)
                pending.confirmations = len(p.confirmations) if p else 0
                if p is not None:
                    self._catch_up(pending, p, now)
                    if pending.reward.reward_id not in self.pending:
                        break  # it was paid before this ledger committed it
                backoff = self.backoffs.get(pending.reward.reward_id)
                if backoff is not None and now < backoff.until:
                    break  # its blocker and why stay as they were set
                d = self._duty(pending, now)
                pending.blocker, pending.why = None, d.why
                if d.action is None or busy:
                    break
                self._perform(pending, d.action, now)
                busy = bool(self.state.in_flight())
                if busy:
                    break

    def _call_for(self, pending: PendingReward, action: str) -> bytes:
        r = pending.reward
        if action == "propose":
            return call_data("proposeReward", r.reward_id, r.trainer, r.amount_wei)
        if action == "confirm":
            return call_data("confirmTransaction", pending.index)
        return call_data("executeTransaction", pending.index)

    def _perform(self, pending: PendingReward, action: str, now: float) -> None:
        """Sign and send one transaction, and settle it if the chain mines it at once."""
        data = self._call_for(pending, action)
        contract = self.chain.contract
        try:
            gas = self.rpc.estimate_gas(self.address, contract, data)
        except RpcError as exc:
            self._refused(pending, action, exc, now)
            return
        gas_limit = int(gas * GAS_MARGIN) + 5000
        price = self.rpc.gas_price()
        funds = self.rpc.balance(self.address)
        if funds < gas_limit * price:
            self._block(pending, "owner_gas", now,
                        f"owner {self.address} of node {self.me} holds {format_bnb(funds)} BNB, "
                        f"needs {format_bnb(gas_limit * price)} for gas: send it gas money")
            return
        nonce = self.rpc.nonce(self.address, "pending")
        signed = Account.sign_transaction(
            {"nonce": nonce, "gasPrice": price, "gas": gas_limit, "to": contract, "value": 0,
             "data": data, "chainId": self.chain.chain_id}, self._key)
        tx_hash = "0x" + bytes(signed.hash).hex()
        row = self.state.record_signed(pending.reward.reward_id, action, nonce, tx_hash,
                                       bytes(signed.raw_transaction))  # durable before sent
        log.info("%s reward %s: tx %s (nonce %d)", action, pending.reward.id_hex[:18], tx_hash,
                 nonce)
        row = self._broadcast(row, now)
        if row.state == "sent":
            self._settle(row, now)  # a development chain mines at once

    def _refused(self, pending: PendingReward, action: str, exc: RpcError,
                 now: float) -> None:
        """The node refused to estimate: the call would revert (or cannot be paid for)."""
        name = error_name(exc.data)
        if name in ("RewardAlreadyProposed", "AlreadyConfirmed", "AlreadyExecuted",
                    "NotEnoughConfirmations"):
            # our view is a block behind the chain: the next refresh shows why
            self.backoffs[pending.reward.reward_id] = Backoff(now + 0.2, 0.2, "other")
            log.debug("%s of %s not needed (%s)", action, pending.reward.id_hex[:18], name)
        elif name == "InsufficientBalance":
            self._block(pending, "wallet_balance", now, self._wallet_short(pending.reward))
        elif name == "NotAnOwner":
            self._block(pending, "not_owner", now, f"{self.address} is not a wallet owner")
        elif "insufficient funds" in exc.message.lower():
            self._block(pending, "owner_gas", now,
                        f"owner {self.address} of node {self.me} cannot pay for gas: "
                        "send it gas money")
        else:
            self._block(pending, "other", now,
                        f"{action} refused by the chain: {name or exc.message}")

    def _wallet_short(self, reward: Reward) -> str:
        balance = self.rpc.balance(self.chain.contract)
        (owed,) = decode_result("totalOwed", self.rpc.eth_call(self.chain.contract,
                                                                call_data("totalOwed")))
        short = owed + reward.amount_wei - balance
        return (f"wallet {self.chain.contract} holds {format_bnb(balance)} BNB, "
                f"{format_bnb(owed)} of it owed to trainers; paying {format_bnb(reward.amount_wei)}"
                f" needs {format_bnb(max(short, 0))} BNB more: deposit it")

    def _block(self, pending: PendingReward, reason: str, now: float, why: str) -> None:
        rid = pending.reward.reward_id
        old = self.backoffs.get(rid)
        again = old is not None and old.reason == reason
        delay = min(BACKOFF_MAX, old.delay * 2) if again and old else BACKOFF_FIRST
        self.backoffs[rid] = Backoff(now + delay, delay, reason, why)
        self.metrics.retry(reason)
        if not again or old is None or old.why != why:
            log.warning("reward %s blocked: %s (retrying with backoff)",
                        pending.reward.id_hex[:18], why)
        else:
            log.debug("reward %s still blocked; next try in %.1fs", pending.reward.id_hex[:18],
                      delay)
        pending.blocker, pending.why = reason, why

    # ---- the outbox ---------------------------------------------------------------------------

    def _broadcast(self, row: OutboxRow, now: float) -> OutboxRow:
        """Send the signed bytes; returns the row with its new state."""
        try:
            self.rpc.send_raw(row.raw)
        except RpcUnavailable:
            return row  # stays 'signed': the same bytes go out once the RPC answers
        except RpcError as exc:
            message = exc.message.lower()
            if any(known in message for known in ("already known", "known transaction",
                                                  "already imported")):
                return self._sent(row)  # an earlier send of these bytes arrived
            if "nonce too low" in message or "underpriced" in message:
                if self.rpc.receipt(row.tx_hash) is not None:
                    return self._sent(row)  # mined already: settled next
                self._give_up(row, "nonce_conflict", f"refused: {exc.message}")
                return replace(row, state="abandoned")
            self._give_up(row, "refused", f"refused: {exc.message}")
            pending = self.pending.get(row.reward_id)
            if pending is not None:
                reason = "owner_gas" if "insufficient funds" in message else "other"
                self._block(pending, reason, now, f"{row.action} transaction refused by the "
                            f"chain: {exc.message}")
            return replace(row, state="abandoned")
        return self._sent(row)

    def _sent(self, row: OutboxRow) -> OutboxRow:
        if row.state != "sent":
            self.state.set_outbox_state(row.id, "sent")
        return replace(row, state="sent")

    def _give_up(self, row: OutboxRow, outcome: str, note: str) -> None:
        self.state.set_outbox_state(row.id, "abandoned", note)
        self.metrics.transaction(row.action, outcome)
        log.warning("%s tx %s (nonce %d) abandoned: %s", row.action, row.tx_hash, row.nonce,
                    note)

    def _settle_outbox(self, now: float) -> None:
        for row in self.state.in_flight():
            self._settle(row, now)

    def _settle(self, row: OutboxRow, now: float) -> None:
        """Learn what became of a signed transaction; resend the same bytes if it vanished
        and is still needed."""
        receipt = self.rpc.receipt(row.tx_hash)
        if receipt is not None:
            gas_used, block = int(receipt["gasUsed"], 16), int(receipt["blockNumber"], 16)
            if int(receipt["status"], 16) == 1:
                self.state.set_outbox_state(row.id, "mined", "", block, gas_used)
                self.metrics.transaction(row.action, "mined", gas_used)
                self.backoffs.pop(row.reward_id, None)
            else:
                self.state.set_outbox_state(row.id, "reverted", "reverted on chain", block,
                                            gas_used)
                self.metrics.transaction(row.action, "reverted", gas_used)
                log.warning("%s tx %s reverted in block %d (gas used %d)", row.action,
                            row.tx_hash, block, gas_used)
            self._observe(self.view.refresh(), now)
            return
        if row.state == "signed":
            self._broadcast(row, now)
            return
        if self.rpc.transaction(row.tx_hash) is not None:
            since = self.waiting_since.setdefault(row.tx_hash, now)
            if now - since > STUCK_AFTER and row.tx_hash not in self.stuck:
                self.stuck.add(row.tx_hash)
                log.warning("%s tx %s not mined after %.0fs (gas price too low for this "
                            "chain?); still waiting for it", row.action, row.tx_hash,
                            now - since)
            return  # still waiting to be mined
        if self.rpc.nonce(self.address, "latest") > row.nonce:
            self._give_up(row, "nonce_conflict", "its nonce was used by another transaction")
        elif self._still_needed(row):
            log.info("%s tx %s vanished from the mempool: sending the same bytes again",
                     row.action, row.tx_hash)
            self._broadcast(row, now)
        else:
            self._give_up(row, "abandoned", "never mined and no longer needed")

    def _still_needed(self, row: OutboxRow) -> bool:
        pending = self.pending.get(row.reward_id)
        if pending is None:
            return False
        p = self.view.proposals.get(pending.index)
        if row.action == "propose":
            return p is None
        if p is None or p.executed:
            return False
        if row.action == "confirm":
            return self.address not in p.confirmations and len(p.confirmations) < self.q
        return len(p.confirmations) >= self.q

    # ---- reporting ----------------------------------------------------------------------------

    def _gauges(self) -> None:
        balance = self.rpc.balance(self.chain.contract)
        (owed,) = decode_result("totalOwed", self.rpc.eth_call(self.chain.contract,
                                                                call_data("totalOwed")))
        self.metrics.set_wallet(balance, owed)
        self.metrics.set_owner_balance(self.rpc.balance(self.address))

    def _publish(self, now: float) -> None:
        """Why each pending reward is not paid yet: the state file and the gauges."""
        blocked: dict[str, int] = {}
        backoff = 0.0
        for pending in self.pending.values():
            if pending.blocker:
                blocked[pending.blocker] = blocked.get(pending.blocker, 0) + 1
            b = self.backoffs.get(pending.reward.reward_id)
            if b is not None and b.until > now:
                backoff = max(backoff, b.delay)
            self.state.db.execute(
                "UPDATE rewards SET why = ?, blocker = ?, confirmations = ?, updated = ? "
                "WHERE reward_id = ? AND (why != ? OR blocker IS NOT ? OR confirmations != ?)",
                (pending.why, pending.blocker, pending.confirmations, time.time(),
                 pending.reward.reward_id, pending.why, pending.blocker, pending.confirmations))
        if self.rpc_down_since is not None:
            backoff = max(backoff, self.rpc_delay)
        self.metrics.set_blocked(blocked)
        self.metrics.set_backoff(backoff)
        self.metrics.set_pending(len(self.pending))


def run_payout(config: ClusterConfig, chain: ChainConfig, node_id: int,
               log_level: str = "INFO") -> None:
    """Entry point of `dtnbus payout`."""
    logging.basicConfig(level=log_level,
                        format=f"%(asctime)s payout-{node_id} %(levelname)s %(message)s")
    metrics = PayoutMetrics(node_id)
    address = chain.payout_metrics[node_id]
    if address:
        host, _, port = address.rpartition(":")
        try:
            metrics.serve(host, int(port))
        except (OSError, ValueError) as exc:
            raise LocalError(f"payout agent {node_id}: cannot serve metrics on {address}: "
                             f"{exc}") from None
    PayoutAgent(config, chain, node_id, metrics).run()
