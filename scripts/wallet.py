"""Operate a deployed wallet from the command line, one step per call:

    brownie run scripts/wallet.py propose DESTINATION VALUE --network bsc-test
    brownie run scripts/wallet.py confirm INDEX      (also: revoke INDEX, execute INDEX)
    brownie run scripts/wallet.py withdraw
    brownie run scripts/wallet.py status [INDEX]

The wallet is $MULTISIG_ADDRESS (or the latest deployment on the chain). Owner steps are signed by
owner number $OWNER_INDEX (default 0) of $OWNERS_FILE; withdraw by $TRAINER_KEY, else
$PRIVATE_KEY. VALUE is wei or e.g. "0.1 ether".
"""

import os

from brownie import accounts

from scripts import multisig
from scripts.multisig import SetupError, owner_accounts, owners_file, to_wei, wallet_at


def _owner():
    index = int(os.environ.get("OWNER_INDEX", 0))
    keys = owner_accounts(owners_file())
    if not 0 <= index < len(keys):
        raise SetupError(f"OWNER_INDEX {index} out of range: {len(keys)} keys in the file")
    return keys[index]


def propose(destination, value):
    index = multisig.propose(wallet_at(), _owner(), destination, to_wei(value))
    print(f"proposal {index}: pay {to_wei(value)} wei to {destination}")


def confirm(index):
    multisig.confirm(wallet_at(), _owner(), int(index))
    status(index)


def revoke(index):
    multisig.revoke(wallet_at(), _owner(), int(index))
    status(index)


def execute(index):
    multisig.execute(wallet_at(), _owner(), int(index))
    status(index)


def withdraw():
    key = os.environ.get("TRAINER_KEY") or os.environ.get(multisig.DEPLOYER_KEY_ENV)
    if not key:
        raise SetupError("set $TRAINER_KEY (or $PRIVATE_KEY) to the beneficiary's key")
    paid = multisig.withdraw(wallet_at(), accounts.add(key))
    print(f"paid {paid} wei")


def status(index=None):
    wallet = wallet_at()
    print(f"wallet {wallet.address}: balance {wallet.balance()} wei, owed {wallet.totalOwed()}, "
          f"{wallet.ownerCount()} owners, threshold {wallet.numSignaturesRequired()}, "
          f"{wallet.transactionCount()} proposals")
    if index is not None:
        destination, value, executed = wallet.transactions(int(index))
        print(f"proposal {index}: {value} wei to {destination}, "
              f"{wallet.confirmationCount(int(index))} confirmations, executed={executed}")


def main():
    status()
