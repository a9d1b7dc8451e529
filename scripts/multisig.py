"""Python side of MultiSigContract for brownie: owner key files, funding, deployment and the
propose / confirm / revoke / execute / withdraw calls.

Shared by the brownie scripts in this folder and the contract tests. dtnbus's own processes (the
payout agents, `dtnbus reward`) do not load brownie: they use dtnbus/l2 over plain JSON-RPC.
Every function takes brownie accounts and a deployed contract; none prints a private key.
Needs a loaded brownie project (``brownie run`` / ``brownie test`` do that; a library user calls
``brownie.project.load(<repo root>)`` and ``brownie.network.connect(...)`` first).

Environment variables (names documented in docs/contracts.md):
  PRIVATE_KEY        deployer / funder key (via brownie-config.yaml ``wallets.from_key``)
  BSC_TESTNET_RPC    RPC URL of the bsc-test network (read by brownie, not here)
  OWNERS_FILE        owner key file, default ``owners.json`` (git-ignored, mode 0600)
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from decimal import Decimal
from pathlib import Path
from typing import Any

OWNERS_FILE_DEFAULT = "owners.json"
DEPLOYER_KEY_ENV = "PRIVATE_KEY"


class SetupError(RuntimeError):
    """A missing or unsafe input the operator must fix (unset env var, readable key file...)."""


def owners_file(path: str | os.PathLike[str] | None = None) -> Path:
    return Path(path or os.environ.get("OWNERS_FILE") or OWNERS_FILE_DEFAULT)


def generate_owner_keys(path: Path, count: int, overwrite: bool = False) -> list[str]:
    """Writes `count` fresh key pairs to `path` (mode 0600, the reference's JSON shape
    ``[{"privateKey": "0x..", "address": "0x.."}]``) and returns only the addresses."""
    from eth_account import Account

    if count < 1:
        raise SetupError(f"owner count must be at least 1, got {count}")
    if path.exists() and not overwrite:
        raise SetupError(f"{path} exists; refusing to overwrite owner keys (set OVERWRITE=1)")
    keys = [Account.from_key("0x" + secrets.token_hex(32)) for _ in range(count)]
    records = [{"privateKey": "0x" + k.key.hex().removeprefix("0x"), "address": k.address}
               for k in keys]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # created 0600 from the start: the keys are never readable by others, not even briefly
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(records, fh, indent=1)
    os.replace(tmp, path)
    return [k.address for k in keys]


def load_owner_keys(path: Path) -> list[dict[str, str]]:
    """Reads an owner key file, refusing one that group or others can read."""
    if not path.exists():
        raise SetupError(f"owner key file {path} not found; run scripts/generate_keys.py first")
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SetupError(f"{path} is readable by others; chmod 600 {path}")
    records = json.loads(path.read_text())
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and {"privateKey", "address"} <= r.keys() for r in records
    ):
        raise SetupError(f"{path}: expected a list of {{privateKey, address}} objects")
    return records


def owner_addresses(path: Path) -> list[str]:
    return [r["address"] for r in load_owner_keys(path)]


def owner_accounts(path: Path) -> list[Any]:
    """Brownie LocalAccounts for every key in the file (order kept: owner i is index i)."""
    from brownie import accounts

    return [accounts.add(r["privateKey"]) for r in load_owner_keys(path)]


def deployer_account() -> Any:
    """The funded key from $PRIVATE_KEY; a clear error when it is unset, never a random key."""
    from brownie import accounts

    key = os.environ.get(DEPLOYER_KEY_ENV, "").strip()
    if not key:
        raise SetupError(f"${DEPLOYER_KEY_ENV} is not set: export the funded deployer key")
    return accounts.add(key)


def default_sender() -> Any:
    """accounts[0] on a development chain, the $PRIVATE_KEY account on a live network."""
    from brownie import accounts

    if is_development() and not os.environ.get(DEPLOYER_KEY_ENV):
        return accounts[0]
    return deployer_account()


def is_development() -> bool:
    from brownie import network
    from brownie._config import CONFIG

    return "cmd" in CONFIG.networks.get(network.show_active(), {})


def to_wei(amount: str | int) -> int:
    """'0.1 ether', '5 gwei', '1e17' or a plain integer of wei."""
    from brownie import Wei

    text = str(amount).strip()
    if " " in text:
        return int(Wei(text))
    return int(Decimal(text))


def _container() -> Any:
    from brownie import project

    loaded = project.get_loaded_projects()
    if not loaded:
        raise SetupError("no brownie project loaded: call brownie.project.load(<repo root>)")
    return loaded[0].MultiSigContract


def fund(funder: Any, addresses: list[str], amount: int) -> list[Any]:
    """Tops every address up to `amount` wei (re-running sends only what is missing)."""
    from brownie import web3

    txs = []
    for address in addresses:
        missing = amount - web3.eth.get_balance(address)
        if missing > 0:
            txs.append(funder.transfer(address, missing))
    return txs


def deploy(deployer: Any, owners: list[str], threshold: int, deposit: int = 0) -> Any:
    wallet = _container().deploy(threshold, owners, {"from": deployer})
    if deposit:
        deployer.transfer(wallet, deposit)
    return wallet


def wallet_at(address: str | None = None) -> Any:
    """The wallet at `address`, $MULTISIG_ADDRESS, or the latest deployment on this chain."""
    from brownie import web3

    container = _container()
    address = address or os.environ.get("MULTISIG_ADDRESS")
    if not address:
        if not len(container):
            raise SetupError("no MultiSigContract deployed here: set MULTISIG_ADDRESS")
        address = container[-1].address
    if not web3.eth.get_code(address):
        raise SetupError(f"no contract at {address} on this chain: check MULTISIG_ADDRESS")
    return container.at(address)


def propose(wallet: Any, owner: Any, destination: str, value: int) -> int:
    tx = wallet.proposeTransaction(destination, value, {"from": owner})
    return int(tx.events["Proposal"]["txIndex"])


def propose_reward(wallet: Any, owner: Any, reward_id: bytes, trainer: str, amount: int) -> int:
    """proposeReward: the proposal's index (the hash of its contents); it counts as the
    proposer's confirmation."""
    tx = wallet.proposeReward(reward_id, trainer, amount, {"from": owner})
    return int(tx.events["Proposal"]["txIndex"])


def confirm(wallet: Any, owner: Any, tx_index: int) -> Any:
    return wallet.confirmTransaction(tx_index, {"from": owner})


def revoke(wallet: Any, owner: Any, tx_index: int) -> Any:
    return wallet.revokeConfirmation(tx_index, {"from": owner})


def execute(wallet: Any, owner: Any, tx_index: int) -> Any:
    return wallet.executeTransaction(tx_index, {"from": owner})


def withdraw(wallet: Any, beneficiary: Any) -> int:
    """Collects the beneficiary's reward; returns the wei paid."""
    tx = wallet.withdraw({"from": beneficiary})
    return int(tx.events["Payout"]["amount"])


def pay_reward(wallet: Any, owners: list[Any], destination: str, value: int) -> int:
    """The seed's whole round by hand: owners[0] proposes, the first `threshold` owners
    confirm, the last confirmer executes. Returns the proposal index. (dtnbus's validators pay
    the rewards PBFT commits themselves, with proposeReward: dtnbus/l2.)"""
    threshold = int(wallet.numSignaturesRequired())
    if len(owners) < threshold:
        raise SetupError(f"{len(owners)} owner accounts given, threshold is {threshold}")
    index = propose(wallet, owners[0], destination, value)
    for owner in owners[:threshold]:
        confirm(wallet, owner, index)
    execute(wallet, owners[threshold - 1], index)
    return index
