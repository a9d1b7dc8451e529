"""Fund the owners: `brownie run scripts/fund_owners.py [main AMOUNT] --network bsc-test`.

Tops every address in $OWNERS_FILE up to AMOUNT (default $FUND_AMOUNT or "0.1 ether", what the
reference sent) from the $PRIVATE_KEY account (accounts[0] on a development chain).
"""

import os

from brownie import web3

from scripts.multisig import default_sender, fund, owner_addresses, owners_file, to_wei


def main(amount=None):
    wei = to_wei(amount or os.environ.get("FUND_AMOUNT", "0.1 ether"))
    funder = default_sender()
    owners = owner_addresses(owners_file())
    txs = fund(funder, owners, wei)
    print(f"funded {len(txs)} of {len(owners)} owners up to {wei} wei from {funder.address}")
    for address in owners:
        print(f"  {address} {web3.eth.get_balance(address)} wei")
