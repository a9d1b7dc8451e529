"""Deploy the wallet: `brownie run scripts/deploy.py [main THRESHOLD] --network bsc-test`.

Owners are the addresses in $OWNERS_FILE (default owners.json); THRESHOLD defaults to $THRESHOLD
or 3 (the reference's). $DEPOSIT (e.g. "0.5 ether", default none) is sent to the wallet after
deployment. The deployer is $PRIVATE_KEY (accounts[0] on a development chain). Prints the address
to use as $MULTISIG_ADDRESS.
"""

import os

from scripts.multisig import (
    SetupError,
    default_sender,
    deploy,
    owner_addresses,
    owners_file,
    to_wei,
)


def main(threshold=None):
    owners = owner_addresses(owners_file())
    required = int(threshold or os.environ.get("THRESHOLD", 3))
    if not 0 < required <= len(owners):
        raise SetupError(f"threshold {required} must be between 1 and {len(owners)} owners")
    deposit = to_wei(os.environ.get("DEPOSIT", "0"))
    wallet = deploy(default_sender(), owners, required, deposit)
    print(f"MultiSigContract at {wallet.address}: {len(owners)} owners, threshold {required}, "
          f"balance {wallet.balance()} wei")
    print(f"export MULTISIG_ADDRESS={wallet.address}")
    return wallet
