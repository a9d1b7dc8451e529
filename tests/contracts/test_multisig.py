"""MultiSigContract: construction, every revert path by its error, events by value, pull payout,
and reward proposals (proposeReward)."""

from __future__ import annotations

import pytest
from brownie import ZERO_ADDRESS
from eth_account import Account
from eth_utils import keccak
from wallet_support import GWEI, reverts

THRESHOLD = 3
DEPOSIT = 10 * 10**18  # the wallet's starting balance
VALUE = 10**18  # 1 ether: a typical reward


@pytest.fixture(scope="module")
def wallet(MultiSigContract, deployer, owners):
    """5 owners (accounts 1-5), threshold 3, holding DEPOSIT."""
    contract = MultiSigContract.deploy(THRESHOLD, owners, {"from": deployer})
    deployer.transfer(contract, DEPOSIT)
    return contract


@pytest.fixture(autouse=True)
def isolation(fn_isolation):
    pass


def _proposed(wallet, owners, trainer, value=VALUE):
    return wallet.proposeTransaction(trainer, value, {"from": owners[0]}).return_value


def _confirmed(wallet, owners, trainer, count=THRESHOLD, value=VALUE):
    index = _proposed(wallet, owners, trainer, value)
    for owner in owners[:count]:
        wallet.confirmTransaction(index, {"from": owner})
    return index


# ---- construction ----------------------------------------------------------------------------


def test_constructor_records_owners_and_threshold(wallet, owners):
    assert wallet.numSignaturesRequired() == THRESHOLD
    assert wallet.ownerCount() == len(owners)
    assert wallet.getOwners() == owners
    assert [wallet.owners(i) for i in range(len(owners))] == owners
    assert all(wallet.isOwner(o) for o in owners)
    assert wallet.transactionCount() == 0
    assert wallet.totalOwed() == 0
    assert wallet.balance() == DEPOSIT
    assert wallet.MAX_OWNERS() == 31


def test_non_owner_is_not_owner(wallet, outsider):
    assert not wallet.isOwner(outsider)
    assert not wallet.isOwner(ZERO_ADDRESS)


def test_constructor_rejects_zero_threshold(MultiSigContract, deployer, owners):
    with reverts("InvalidThreshold"):
        MultiSigContract.deploy(0, owners, {"from": deployer})


def test_constructor_rejects_threshold_above_owner_count(MultiSigContract, deployer, owners):
    with reverts("InvalidThreshold"):
        MultiSigContract.deploy(len(owners) + 1, owners, {"from": deployer})


def test_constructor_rejects_empty_owner_list(MultiSigContract, deployer):
    with reverts("InvalidThreshold"):
        MultiSigContract.deploy(1, [], {"from": deployer})


def test_constructor_rejects_duplicate_owner(MultiSigContract, deployer, owners):
    with reverts("DuplicateOwner"):
        MultiSigContract.deploy(2, [owners[0], owners[1], owners[0]], {"from": deployer})


def test_constructor_rejects_zero_owner(MultiSigContract, deployer, owners):
    with reverts("ZeroOwner"):
        MultiSigContract.deploy(1, [owners[0], ZERO_ADDRESS], {"from": deployer})


def test_constructor_rejects_more_owners_than_the_bitmap_holds(MultiSigContract, deployer):
    many = [Account.create().address for _ in range(32)]
    with reverts("TooManyOwners"):
        MultiSigContract.deploy(3, many, {"from": deployer})


def test_single_owner_threshold_one_works(MultiSigContract, deployer, trainer):
    solo = MultiSigContract.deploy(1, [deployer], {"from": deployer})
    deployer.transfer(solo, VALUE)
    index = solo.proposeTransaction(trainer, VALUE, {"from": deployer}).return_value
    solo.confirmTransaction(index, {"from": deployer})
    solo.executeTransaction(index, {"from": deployer})
    assert solo.rewards(trainer) == VALUE


# ---- deposit -----------------------------------------------------------------------------------


def test_deposit_emits_event_and_holds_value(wallet, outsider):
    tx = outsider.transfer(wallet, 12345)
    assert tx.events["Deposit"] == {"sender": outsider, "amount": 12345}
    assert wallet.balance() == DEPOSIT + 12345


# ---- propose -----------------------------------------------------------------------------------


def test_propose_returns_sequential_indexes_and_emits(wallet, owners, trainer):
    tx0 = wallet.proposeTransaction(trainer, VALUE, {"from": owners[0]})
    tx1 = wallet.proposeTransaction(trainer, 7 * GWEI, {"from": owners[4]})
    assert (tx0.return_value, tx1.return_value) == (0, 1)
    assert tx1.events["Proposal"] == {
        "txIndex": 1, "proposer": owners[4], "destination": trainer, "value": 7 * GWEI,
        "rewardId": "0x" + "00" * 32,
    }
    assert wallet.transactionCount() == 2
    assert wallet.transactions(0) == (trainer, VALUE, False)
    assert wallet.confirmationCount(0) == 0
    assert not wallet.confirmations(0, owners[0])  # proposing does not confirm


def test_propose_by_non_owner_reverts(wallet, outsider, trainer):
    with reverts("NotAnOwner"):
        wallet.proposeTransaction(trainer, VALUE, {"from": outsider})


def test_propose_to_zero_address_reverts(wallet, owners):
    with reverts("ZeroDestination"):
        wallet.proposeTransaction(ZERO_ADDRESS, VALUE, {"from": owners[0]})


def test_propose_value_above_uint64_gwei_reverts(wallet, owners, trainer):
    wallet.proposeTransaction(trainer, (2**64 - 1) * GWEI, {"from": owners[0]})
    with reverts("ValueTooLarge"):
        wallet.proposeTransaction(trainer, 2**64 * GWEI, {"from": owners[0]})


def test_propose_value_below_gwei_precision_reverts(wallet, owners, trainer):
    with reverts("ValueNotWholeGwei"):
        wallet.proposeTransaction(trainer, GWEI + 1, {"from": owners[0]})


def test_zero_value_proposal_is_allowed(wallet, owners, trainer):
    index = _confirmed(wallet, owners, trainer, value=0)
    wallet.executeTransaction(index, {"from": owners[0]})
    assert wallet.rewards(trainer) == 0


# ---- confirm / revoke ------------------------------------------------------------------------


def test_confirm_counts_and_emits(wallet, owners, trainer):
    index = _proposed(wallet, owners, trainer)
    tx = wallet.confirmTransaction(index, {"from": owners[2]})
    assert tx.events["Confirmation"] == {"txIndex": index, "owner": owners[2]}
    assert wallet.confirmations(index, owners[2])
    assert not wallet.confirmations(index, owners[1])
    assert wallet.confirmationCount(index) == 1


def test_confirm_by_non_owner_reverts(wallet, owners, outsider, trainer):
    index = _proposed(wallet, owners, trainer)
    with reverts("NotAnOwner"):
        wallet.confirmTransaction(index, {"from": outsider})


def test_confirm_unknown_index_reverts(wallet, owners):
    with reverts("UnknownTransaction"):
        wallet.confirmTransaction(0, {"from": owners[0]})


def test_confirm_twice_reverts(wallet, owners, trainer):
    index = _proposed(wallet, owners, trainer)
    wallet.confirmTransaction(index, {"from": owners[1]})
    with reverts("AlreadyConfirmed"):
        wallet.confirmTransaction(index, {"from": owners[1]})


def test_confirm_after_execution_reverts(wallet, owners, trainer):
    index = _confirmed(wallet, owners, trainer)
    wallet.executeTransaction(index, {"from": owners[0]})
    with reverts("AlreadyExecuted"):
        wallet.confirmTransaction(index, {"from": owners[4]})


def test_revoke_uncounts_and_emits(wallet, owners, trainer):
    index = _confirmed(wallet, owners, trainer, count=2)
    tx = wallet.revokeConfirmation(index, {"from": owners[1]})
    assert tx.events["Revocation"] == {"txIndex": index, "owner": owners[1]}
    assert not wallet.confirmations(index, owners[1])
    assert wallet.confirmations(index, owners[0])
    assert wallet.confirmationCount(index) == 1
    wallet.confirmTransaction(index, {"from": owners[1]})  # may confirm again
    assert wallet.confirmationCount(index) == 2


def test_revoke_without_confirmation_reverts(wallet, owners, trainer):
    index = _proposed(wallet, owners, trainer)
    with reverts("NotConfirmed"):
        wallet.revokeConfirmation(index, {"from": owners[0]})


def test_revoke_by_non_owner_reverts(wallet, owners, outsider, trainer):
    index = _proposed(wallet, owners, trainer)
    with reverts("NotAnOwner"):
        wallet.revokeConfirmation(index, {"from": outsider})


def test_revoke_unknown_index_reverts(wallet, owners):
    with reverts("UnknownTransaction"):
        wallet.revokeConfirmation(3, {"from": owners[0]})


def test_revoke_after_execution_reverts(wallet, owners, trainer):
    index = _confirmed(wallet, owners, trainer)
    wallet.executeTransaction(index, {"from": owners[0]})
    with reverts("AlreadyExecuted"):
        wallet.revokeConfirmation(index, {"from": owners[0]})


def test_revoked_confirmation_no_longer_counts_for_execution(wallet, owners, trainer):
    index = _confirmed(wallet, owners, trainer)
    wallet.revokeConfirmation(index, {"from": owners[2]})
    with reverts("NotEnoughConfirmations"):
        wallet.executeTransaction(index, {"from": owners[0]})


# ---- execute -----------------------------------------------------------------------------------


def test_execute_books_reward_and_emits(wallet, owners, trainer):
    index = _confirmed(wallet, owners, trainer)
    tx = wallet.executeTransaction(index, {"from": owners[4]})
    assert tx.events["Execution"] == {
        "txIndex": index, "executor": owners[4], "destination": trainer, "value": VALUE
    }
    assert wallet.transactions(index) == (trainer, VALUE, True)
    assert wallet.rewards(trainer) == VALUE
    assert wallet.totalOwed() == VALUE
    assert wallet.balance() == DEPOSIT  # nothing leaves until the trainer withdraws


def test_execute_below_threshold_reverts(wallet, owners, trainer):
    index = _confirmed(wallet, owners, trainer, count=THRESHOLD - 1)
    with reverts("NotEnoughConfirmations"):
        wallet.executeTransaction(index, {"from": owners[0]})
    assert wallet.transactions(index) == (trainer, VALUE, False)


def test_execute_twice_reverts(wallet, owners, trainer):
    index = _confirmed(wallet, owners, trainer)
    wallet.executeTransaction(index, {"from": owners[0]})
    with reverts("AlreadyExecuted"):
        wallet.executeTransaction(index, {"from": owners[1]})
    assert wallet.rewards(trainer) == VALUE


def test_execute_by_non_owner_reverts(wallet, owners, outsider, trainer):
    index = _confirmed(wallet, owners, trainer)
    with reverts("NotAnOwner"):
        wallet.executeTransaction(index, {"from": outsider})


def test_execute_unknown_index_reverts(wallet, owners):
    with reverts("UnknownTransaction"):
        wallet.executeTransaction(0, {"from": owners[0]})


def test_execute_cannot_commit_more_than_the_balance(wallet, owners, trainer):
    first = _confirmed(wallet, owners, trainer, value=DEPOSIT - GWEI)
    wallet.executeTransaction(first, {"from": owners[0]})
    second = _confirmed(wallet, owners, trainer, value=2 * GWEI)
    with reverts("InsufficientBalance"):
        wallet.executeTransaction(second, {"from": owners[0]})
    exact = _confirmed(wallet, owners, trainer, value=GWEI)
    wallet.executeTransaction(exact, {"from": owners[0]})  # balance covers it exactly
    assert wallet.totalOwed() == wallet.balance() == DEPOSIT


def test_execute_waits_for_a_deposit(wallet, owners, trainer, deployer):
    index = _confirmed(wallet, owners, trainer, value=DEPOSIT + GWEI)
    with reverts("InsufficientBalance"):
        wallet.executeTransaction(index, {"from": owners[0]})
    deployer.transfer(wallet, GWEI)
    wallet.executeTransaction(index, {"from": owners[0]})
    assert wallet.rewards(trainer) == DEPOSIT + GWEI


def test_rewards_accumulate_across_proposals(wallet, owners, trainer):
    for value in (3 * GWEI, 4 * GWEI):
        wallet.executeTransaction(_confirmed(wallet, owners, trainer, value=value),
                                  {"from": owners[0]})
    assert wallet.rewards(trainer) == 7 * GWEI


# ---- withdraw (pull payment) -----------------------------------------------------------------


def test_withdraw_pays_trainer_and_emits(wallet, owners, trainer):
    wallet.executeTransaction(_confirmed(wallet, owners, trainer), {"from": owners[0]})
    before = trainer.balance()
    tx = wallet.withdraw({"from": trainer})
    assert tx.events["Payout"] == {"beneficiary": trainer, "amount": VALUE}
    assert trainer.balance() == before + VALUE - tx.gas_used * tx.gas_price
    assert wallet.rewards(trainer) == 0
    assert wallet.totalOwed() == 0
    assert wallet.balance() == DEPOSIT - VALUE


def test_withdraw_with_nothing_owed_reverts(wallet, trainer):
    with reverts("NothingToWithdraw"):
        wallet.withdraw({"from": trainer})


def test_withdraw_twice_reverts(wallet, owners, trainer):
    wallet.executeTransaction(_confirmed(wallet, owners, trainer), {"from": owners[0]})
    wallet.withdraw({"from": trainer})
    with reverts("NothingToWithdraw"):
        wallet.withdraw({"from": trainer})


def test_contract_trainer_can_withdraw(wallet, owners, probe):
    wallet.executeTransaction(_confirmed(wallet, owners, probe), {"from": owners[0]})
    probe.claim(wallet, {"from": owners[0]})
    assert probe.received() == VALUE
    assert probe.balance() == VALUE


def test_refused_payout_reverts_and_keeps_the_credit(wallet, owners, probe):
    wallet.executeTransaction(_confirmed(wallet, owners, probe), {"from": owners[0]})
    probe.setMode(1, {"from": owners[0]})  # Reject
    with reverts("PayoutFailed"):
        probe.claim(wallet, {"from": owners[0]})
    assert wallet.rewards(probe) == VALUE
    assert wallet.totalOwed() == VALUE


def test_reentrant_withdraw_gets_nothing_more(wallet, owners, probe):
    wallet.executeTransaction(_confirmed(wallet, owners, probe), {"from": owners[0]})
    probe.setMode(2, {"from": owners[0]})  # Reenter
    tx = probe.claim(wallet, {"from": owners[0]})
    assert probe.reentryFailed()
    assert probe.received() == VALUE  # paid once, not twice
    assert len(tx.events["Payout"]) == 1
    assert wallet.rewards(probe) == 0
    assert wallet.totalOwed() == 0
    assert wallet.balance() == DEPOSIT - VALUE


# ---- views on unknown indexes -----------------------------------------------------------------


def test_views_reject_unknown_index(wallet, owners):
    with reverts("UnknownTransaction"):
        wallet.transactions(0)
    with reverts("UnknownTransaction"):
        wallet.confirmations(0, owners[0])
    with reverts("UnknownTransaction"):
        wallet.confirmationCount(0)


def test_confirmations_of_non_owner_is_false(wallet, owners, outsider, trainer):
    index = _proposed(wallet, owners, trainer)
    assert not wallet.confirmations(index, outsider)


# ---- reward proposals (the Layer 1 link) -----------------------------------------------------

REWARD_ID = keccak(text="dtnbus test reward 1")


def _reward_index(reward_id, trainer, amount):
    from eth_abi import encode

    digest = keccak(encode(["bytes32", "address", "uint256"], [reward_id, str(trainer), amount]))
    return int.from_bytes(digest, "big") | 1 << 255


def test_propose_reward_indexes_by_contents_and_confirms_for_the_proposer(
        wallet, owners, trainer):
    tx = wallet.proposeReward(REWARD_ID, trainer, VALUE, {"from": owners[1]})
    index = tx.return_value
    assert index == _reward_index(REWARD_ID, trainer, VALUE)
    assert index == wallet.rewardIndex(REWARD_ID, trainer, VALUE)
    assert tx.events["Proposal"] == {
        "txIndex": index, "proposer": owners[1], "destination": trainer, "value": VALUE,
        "rewardId": "0x" + REWARD_ID.hex(),
    }
    assert tx.events["Confirmation"] == {"txIndex": index, "owner": owners[1]}
    assert wallet.confirmations(index, owners[1])
    assert wallet.confirmationCount(index) == 1
    assert wallet.transactions(index) == (trainer, VALUE, False)
    assert wallet.transactionCount() == 0  # reward indexes are not counted


def test_reward_is_paid_after_threshold_confirmations(wallet, owners, trainer):
    index = wallet.proposeReward(REWARD_ID, trainer, VALUE, {"from": owners[0]}).return_value
    wallet.confirmTransaction(index, {"from": owners[1]})
    with reverts("NotEnoughConfirmations"):
        wallet.executeTransaction(index, {"from": owners[1]})
    wallet.confirmTransaction(index, {"from": owners[2]})
    tx = wallet.executeTransaction(index, {"from": owners[2]})
    assert tx.events["Execution"]["value"] == VALUE
    assert wallet.rewards(trainer) == VALUE


def test_the_same_reward_cannot_be_proposed_twice_even_after_payment(wallet, owners, trainer):
    index = wallet.proposeReward(REWARD_ID, trainer, VALUE, {"from": owners[0]}).return_value
    with reverts("RewardAlreadyProposed"):
        wallet.proposeReward(REWARD_ID, trainer, VALUE, {"from": owners[3]})
    for owner in owners[1:3]:
        wallet.confirmTransaction(index, {"from": owner})
    wallet.executeTransaction(index, {"from": owners[0]})
    with reverts("RewardAlreadyProposed"):
        wallet.proposeReward(REWARD_ID, trainer, VALUE, {"from": owners[4]})
    assert wallet.rewards(trainer) == VALUE


def test_other_contents_under_the_same_id_do_not_block_the_real_reward(
        wallet, owners, trainer, outsider):
    bogus = wallet.proposeReward(REWARD_ID, outsider, VALUE, {"from": owners[4]}).return_value
    real = wallet.proposeReward(REWARD_ID, trainer, VALUE, {"from": owners[0]}).return_value
    assert bogus != real
    assert wallet.transactions(bogus) == (outsider, VALUE, False)
    assert wallet.transactions(real) == (trainer, VALUE, False)


def test_reward_indexes_never_meet_sequential_ones(wallet, owners, trainer):
    sequential = _proposed(wallet, owners, trainer)
    index = wallet.proposeReward(REWARD_ID, trainer, VALUE, {"from": owners[0]}).return_value
    assert sequential == 0
    assert index >= 2**255
    assert wallet.transactionCount() == 1


def test_propose_reward_rejects_bad_input(wallet, owners, outsider, trainer):
    with reverts("NotAnOwner"):
        wallet.proposeReward(REWARD_ID, trainer, VALUE, {"from": outsider})
    with reverts("ZeroRewardId"):
        wallet.proposeReward(b"\0" * 32, trainer, VALUE, {"from": owners[0]})
    with reverts("ZeroAmount"):
        wallet.proposeReward(REWARD_ID, trainer, 0, {"from": owners[0]})
    with reverts("ZeroDestination"):
        wallet.proposeReward(REWARD_ID, ZERO_ADDRESS, VALUE, {"from": owners[0]})
    with reverts("ValueNotWholeGwei"):
        wallet.proposeReward(REWARD_ID, trainer, VALUE + 1, {"from": owners[0]})


def test_proposer_cannot_confirm_its_reward_again_but_may_revoke(wallet, owners, trainer):
    index = wallet.proposeReward(REWARD_ID, trainer, VALUE, {"from": owners[0]}).return_value
    with reverts("AlreadyConfirmed"):
        wallet.confirmTransaction(index, {"from": owners[0]})
    wallet.revokeConfirmation(index, {"from": owners[0]})
    assert wallet.confirmationCount(index) == 0
