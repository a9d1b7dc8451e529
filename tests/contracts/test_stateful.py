"""Stateful property test: random owners (and an outsider) propose (both kinds), confirm,
revoke, execute, deposit and withdraw against a Python model of the wallet.

Invariants: nothing executes twice, nothing executes below the threshold, and the balances add
up (wallet balance = deposits - payouts >= total owed = sum of rewards; every trainer received
exactly what was credited). Each call's outcome, including the revert reason, must match the
model's prediction. Predicted reverts are checked with eth_call (same custom error, nothing
mined): the unit tests cover mined reverts, and tracing each mined revert made this test slow.
"""

from __future__ import annotations

import os

import brownie
import pytest
from brownie._config import CONFIG
from brownie.test import strategy
from eth_utils import keccak
from wallet_support import GWEI, reverts

THRESHOLD = 3
N_OWNERS = 5


@pytest.fixture(autouse=True)
def isolation(fn_isolation):
    pass


class WalletMachine:
    st_actor = strategy("uint8", max_value=N_OWNERS)  # N_OWNERS: the outsider
    st_trainer = strategy("uint8", max_value=2)
    st_index = strategy("uint8", max_value=15)
    st_gwei = strategy("uint256", max_value=3 * 10**9)
    st_deposit = strategy("uint256", min_value=1, max_value=2 * 10**18)
    st_zero_destination = strategy("bool")
    st_ragged = strategy("bool")  # a value that is not whole gwei
    st_reward = strategy("uint8", max_value=3)  # few ids: the same reward comes back

    def __init__(cls, wallet, owners, outsider, trainers):
        cls.wallet = wallet
        cls.actors = [*owners, outsider]
        cls.trainers = trainers

    def setup(self):
        # index -> destination, value, confirmed (set), executed; in order of proposal
        self.proposals: dict[int, dict] = {}
        self.order: list[int] = []
        self.counted = 0  # proposeTransaction proposals (transactionCount)
        self.deposited = 0
        self.paid_out = 0
        self.rewards = {t.address: 0 for t in self.trainers}
        self.received = {t.address: 0 for t in self.trainers}
        self.start_balance = {t.address: t.balance() for t in self.trainers}
        self.executions: dict[int, int] = {}

    # ---- helpers -------------------------------------------------------------------------------

    def _index(self, st_index):
        # one value past the end: an unknown index
        pick = st_index % (len(self.order) + 1)
        return self.order[pick] if pick < len(self.order) else self.counted

    def _owner_reason(self, actor, index):
        if actor == N_OWNERS:
            return "NotAnOwner"
        if index not in self.proposals:
            return "UnknownTransaction"
        if self.proposals[index]["executed"]:
            return "AlreadyExecuted"
        return None

    def _add(self, index, destination, value, confirmed):
        self.proposals[index] = {"destination": destination, "value": value,
                                 "confirmed": confirmed, "executed": False}
        self.order.append(index)

    def _owed(self):
        return sum(self.rewards.values())

    # ---- rules ---------------------------------------------------------------------------------

    def rule_deposit(self, st_actor, st_deposit):
        tx = self.actors[st_actor].transfer(self.wallet, st_deposit)
        assert tx.events["Deposit"]["amount"] == st_deposit
        self.deposited += st_deposit

    def _propose_reason(self, st_actor, st_zero_destination, st_ragged):
        if st_actor == N_OWNERS:
            return "NotAnOwner"
        if st_zero_destination:
            return "ZeroDestination"
        if st_ragged:
            return "ValueNotWholeGwei"
        return None

    def rule_propose(self, st_actor, st_trainer, st_gwei, st_zero_destination, st_ragged):
        sender = self.actors[st_actor]
        destination = (
            brownie.ZERO_ADDRESS if st_zero_destination else self.trainers[st_trainer].address
        )
        value = st_gwei * GWEI + st_ragged
        reason = self._propose_reason(st_actor, st_zero_destination, st_ragged)
        if reason:
            with reverts(reason):
                self.wallet.proposeTransaction.call(destination, value, {"from": sender})
            return
        tx = self.wallet.proposeTransaction(destination, value, {"from": sender})
        assert tx.return_value == self.counted
        self._add(self.counted, destination, value, set())
        self.counted += 1

    def rule_propose_reward(self, st_actor, st_trainer, st_reward, st_gwei, st_ragged):
        sender = self.actors[st_actor]
        trainer = self.trainers[st_trainer].address
        reward_id = keccak(text=f"reward {st_reward}")
        value = (st_gwei % 3 + 1) * 10**8 * GWEI + st_ragged  # few amounts: duplicates happen
        index = self.wallet.rewardIndex(reward_id, trainer, value)
        reason = self._propose_reason(st_actor, False, st_ragged)
        if reason is None and index in self.proposals:
            reason = "RewardAlreadyProposed"
        if reason:
            with reverts(reason):
                self.wallet.proposeReward.call(reward_id, trainer, value, {"from": sender})
            return
        tx = self.wallet.proposeReward(reward_id, trainer, value, {"from": sender})
        assert tx.return_value == index
        self._add(index, trainer, value, {st_actor})  # proposing a reward confirms it

    def rule_confirm(self, st_actor, st_index):
        index = self._index(st_index)
        sender = self.actors[st_actor]
        reason = self._owner_reason(st_actor, index)
        if reason is None and st_actor in self.proposals[index]["confirmed"]:
            reason = "AlreadyConfirmed"
        if reason:
            with reverts(reason):
                self.wallet.confirmTransaction.call(index, {"from": sender})
        else:
            self.wallet.confirmTransaction(index, {"from": sender})
            self.proposals[index]["confirmed"].add(st_actor)
            self._check_proposal(index)

    def rule_revoke(self, st_actor, st_index):
        index = self._index(st_index)
        sender = self.actors[st_actor]
        reason = self._owner_reason(st_actor, index)
        if reason is None and st_actor not in self.proposals[index]["confirmed"]:
            reason = "NotConfirmed"
        if reason:
            with reverts(reason):
                self.wallet.revokeConfirmation.call(index, {"from": sender})
        else:
            self.wallet.revokeConfirmation(index, {"from": sender})
            self.proposals[index]["confirmed"].discard(st_actor)
            self._check_proposal(index)

    def rule_execute(self, st_actor, st_index):
        index = self._index(st_index)
        sender = self.actors[st_actor]
        reason = self._owner_reason(st_actor, index)
        if reason is None:
            p = self.proposals[index]
            if len(p["confirmed"]) < THRESHOLD:
                reason = "NotEnoughConfirmations"
            elif self._owed() + p["value"] > self.wallet.balance():
                reason = "InsufficientBalance"
        if reason:
            with reverts(reason):
                self.wallet.executeTransaction.call(index, {"from": sender})
            return
        p = self.proposals[index]
        # executing now: the chain must agree it is confirmed enough and not yet executed
        assert self.wallet.confirmationCount(index) >= THRESHOLD
        assert not self.wallet.transactions(index)[2]
        tx = self.wallet.executeTransaction(index, {"from": sender})
        assert tx.events["Execution"]["txIndex"] == index
        p["executed"] = True
        self.executions[index] = self.executions.get(index, 0) + 1
        self.rewards[p["destination"]] += p["value"]
        self._check_proposal(index)

    def rule_withdraw(self, st_trainer):
        trainer = self.trainers[st_trainer]
        owed = self.rewards[trainer.address]
        if owed == 0:
            with reverts("NothingToWithdraw"):
                self.wallet.withdraw.call({"from": trainer})
            return
        tx = self.wallet.withdraw({"from": trainer})
        assert tx.events["Payout"]["amount"] == owed
        self.rewards[trainer.address] = 0
        self.received[trainer.address] += owed
        self.paid_out += owed

    # ---- invariants ----------------------------------------------------------------------------

    def invariant_nothing_executes_twice(self):
        assert all(count == 1 for count in self.executions.values())

    def invariant_proposals_match_the_model(self):
        # the newest proposal each step (rules also check the one they touch), all at teardown
        assert self.wallet.transactionCount() == self.counted
        if self.order:
            self._check_proposal(self.order[-1])

    def teardown(self):
        for index in self.order:
            self._check_proposal(index)

    def _check_proposal(self, index):
        p = self.proposals[index]
        destination, value, executed = self.wallet.transactions(index)
        assert (destination, value, executed) == (p["destination"], p["value"], p["executed"])
        assert self.wallet.confirmationCount(index) == len(p["confirmed"])
        if executed:  # nothing executed below the threshold
            assert len(p["confirmed"]) >= THRESHOLD

    def invariant_balances_add_up(self):
        balance = self.wallet.balance()
        assert balance == self.deposited - self.paid_out
        assert self.wallet.totalOwed() == self._owed()
        assert balance >= self.wallet.totalOwed()
        for trainer in self.trainers:
            assert self.wallet.rewards(trainer) == self.rewards[trainer.address]
            # gas price is 0 on the development chain: the balance moves by payouts only
            assert trainer.balance() == (
                self.start_balance[trainer.address] + self.received[trainer.address]
            )


# no_call_coverage: under --coverage brownie would trace every eth_call of the model checks
# (minutes); the unit tests give the coverage, this test gives the properties
@pytest.mark.no_call_coverage
def test_wallet_state_machine(MultiSigContract, state_machine, accounts):
    owners = list(accounts[1 : 1 + N_OWNERS])
    wallet = MultiSigContract.deploy(THRESHOLD, owners, {"from": accounts[0]})
    # every mined tx is traced under --coverage (~0.2 s each), so that run explores less;
    # STATEFUL_EXAMPLES raises it for a longer soak
    examples = int(os.environ.get("STATEFUL_EXAMPLES", 10 if CONFIG.argv["coverage"] else 20))
    state_machine(
        WalletMachine, wallet, owners, accounts[6], list(accounts[7:10]),
        settings={"max_examples": examples, "stateful_step_count": 25},
    )
