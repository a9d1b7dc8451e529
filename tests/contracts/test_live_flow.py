"""One reward round end to end, safe on a live network (bsc-test): no snapshots, no unlocked
accounts. The sender is $PRIVATE_KEY there (accounts[0] on the development chain); owners and the
trainer are fresh keys held in memory, funded with a little gas money (LIVE_GAS_FUND, default
0.002 ether each; on the real testnet a run costs about 0.01 tBNB).

Reverts are checked with eth_call and `reverts_with`: on a live network brownie raises web3's
ContractCustomError for a call or gas estimate that reverts with one of the contract's errors,
which brownie.reverts does not catch (the development-chain tests use brownie.reverts), and a
mined revert would only waste gas."""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager

import pytest
from brownie import accounts
from brownie.exceptions import VirtualMachineError
from eth_utils import keccak
from web3.exceptions import ContractCustomError

from scripts.multisig import (
    default_sender,
    deploy,
    fund,
    pay_reward,
    propose,
    propose_reward,
    to_wei,
    withdraw,
)

pytestmark = pytest.mark.live_safe

REWARD = 10**14  # 0.0001 ether


@contextmanager
def reverts_with(error):
    """brownie.reverts for a custom error that also understands a live node's
    ContractCustomError (which carries only the error's selector)."""
    selector = "0x" + keccak(text=f"{error}()")[:4].hex()
    try:
        yield
    except VirtualMachineError as exc:
        assert exc.revert_msg in (error, f"{error}: ")
    except ContractCustomError as exc:
        assert str(exc.data).startswith(selector), (exc.data, selector)
    else:
        raise AssertionError(f"did not revert (expected {error})")


@pytest.fixture(scope="module")
def sender():
    return default_sender()


@pytest.fixture(scope="module")
def fresh_owners(sender):
    keys = [accounts.add("0x" + secrets.token_hex(32)) for _ in range(4)]  # 3 owners + trainer
    fund(sender, [k.address for k in keys], to_wei(os.environ.get("LIVE_GAS_FUND", "0.002 ether")))
    return keys


def test_reward_round_on_any_network(sender, fresh_owners):
    owners, trainer = fresh_owners[:3], fresh_owners[3]
    wallet = deploy(sender, [o.address for o in owners], threshold=2, deposit=3 * REWARD)
    assert wallet.ownerCount() == 3
    assert wallet.balance() == 3 * REWARD

    index = propose(wallet, owners[0], trainer.address, REWARD)
    wallet.confirmTransaction(index, {"from": owners[0]})
    with reverts_with("NotEnoughConfirmations"):
        wallet.executeTransaction.call(index, {"from": owners[0]})
    with reverts_with("AlreadyConfirmed"):
        wallet.confirmTransaction.call(index, {"from": owners[0]})
    wallet.confirmTransaction(index, {"from": owners[1]})
    tx = wallet.executeTransaction(index, {"from": owners[1]})
    assert tx.events["Execution"]["value"] == REWARD
    with reverts_with("AlreadyExecuted"):
        wallet.executeTransaction.call(index, {"from": owners[2]})

    second = pay_reward(wallet, owners, trainer.address, REWARD)
    assert second == index + 1
    assert wallet.rewards(trainer) == 2 * REWARD

    # a reward the validators committed on Layer 1: proposing it is the first confirmation
    reward_id = secrets.token_bytes(32)
    third = propose_reward(wallet, owners[2], reward_id, trainer.address, REWARD)
    with reverts_with("RewardAlreadyProposed"):
        wallet.proposeReward.call(reward_id, trainer.address, REWARD, {"from": owners[0]})
    wallet.confirmTransaction(third, {"from": owners[0]})
    wallet.executeTransaction(third, {"from": owners[0]})
    assert wallet.rewards(trainer) == 3 * REWARD

    before = trainer.balance()
    paid = withdraw(wallet, trainer)
    assert paid == 3 * REWARD
    assert wallet.totalOwed() == 0
    assert wallet.balance() == 0
    assert trainer.balance() > before  # minus gas on a live network
