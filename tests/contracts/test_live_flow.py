"""One reward round end to end, safe on a live network (bsc-test): no snapshots, no unlocked
accounts. The sender is $PRIVATE_KEY there (accounts[0] on the development chain); owners and the
trainer are fresh keys held in memory, funded with a little gas money (LIVE_GAS_FUND, default
0.002 ether each; on the real testnet a run costs about 0.01 tBNB).

Reverts are checked with eth_call and `reverts_with`: on a live network brownie raises web3's
ContractLogicError for a reverting call or gas estimate, which brownie.reverts does not catch
(the development-chain tests use brownie.reverts), and a mined revert would only waste gas."""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager

import pytest
from brownie import accounts
from brownie.exceptions import VirtualMachineError
from web3.exceptions import ContractLogicError

from scripts.multisig import default_sender, deploy, fund, pay_reward, propose, to_wei, withdraw

pytestmark = pytest.mark.live_safe

REWARD = 10**14  # 0.0001 ether


@contextmanager
def reverts_with(reason):
    """brownie.reverts that also understands a live node's ContractLogicError."""
    try:
        yield
    except VirtualMachineError as exc:
        assert exc.revert_msg == reason
    except ContractLogicError as exc:
        assert exc.args[0] == f"execution reverted: {reason}"
    else:
        raise AssertionError(f"did not revert (expected {reason!r})")


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
    wallet = deploy(sender, [o.address for o in owners], threshold=2, deposit=2 * REWARD)
    assert wallet.ownerCount() == 3
    assert wallet.balance() == 2 * REWARD

    index = propose(wallet, owners[0], trainer.address, REWARD)
    wallet.confirmTransaction(index, {"from": owners[0]})
    with reverts_with("not enough confirmations"):
        wallet.executeTransaction.call(index, {"from": owners[0]})
    with reverts_with("already confirmed"):
        wallet.confirmTransaction.call(index, {"from": owners[0]})
    wallet.confirmTransaction(index, {"from": owners[1]})
    tx = wallet.executeTransaction(index, {"from": owners[1]})
    assert tx.events["Execution"]["value"] == REWARD
    with reverts_with("already executed"):
        wallet.executeTransaction.call(index, {"from": owners[2]})

    second = pay_reward(wallet, owners, trainer.address, REWARD)
    assert second == index + 1
    assert wallet.rewards(trainer) == 2 * REWARD

    before = trainer.balance()
    paid = withdraw(wallet, trainer)
    assert paid == 2 * REWARD
    assert wallet.totalOwed() == 0
    assert wallet.balance() == 0
    assert trainer.balance() > before  # minus gas on a live network
