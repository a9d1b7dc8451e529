"""The cluster file's `[chain]` table: which chain, which wallet, which owner is which node.

    [chain]
    network = "development"             # or "bsc-test"
    rpc = "http://127.0.0.1:8545"       # development: the anvil `cluster up` started
    rpc_env = "BSC_TESTNET_RPC"         # bsc-test: the URL is read from this variable
    chain_id = 31337
    contract = "0x..."                  # the deployed MultiSigContract
    deploy_block = 1                    # where its events start
    threshold = 3                       # confirmations a payment needs (q, never below f+1)
    owners = ["0x...", ...]             # node i's owner address (contract owner i)
    owner_keys = ["keys/node-0.owner.key", ...]   # node i's owner key (0600, git-ignored)
    payout_metrics = ["127.0.0.1:9100", ...]      # node i's payout agent /metrics
    poll_seconds = 0.1                  # how often an agent reads its ledger and the chain
    takeover_seconds = 2.0              # how long a node waits for the one before it

Kept apart from dtnbus/config.py (which ignores the table): the consensus core never needs it.
Owner keys are one hex line, created 0600 beside the node keys; they are never printed.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
from eth_account import Account
from eth_utils import is_checksum_address

from dtnbus.errors import LocalError
from dtnbus.messages import max_faulty

NETWORKS = ("development", "bsc-test")
BSC_RPC_ENV = "BSC_TESTNET_RPC"
DEPLOYER_KEY_ENV = "PRIVATE_KEY"


@dataclass(frozen=True, slots=True)
class ChainConfig:
    cluster_file: Path
    network: str
    rpc: str | None
    rpc_env: str | None
    chain_id: int
    contract: str
    deploy_block: int
    threshold: int
    owners: tuple[str, ...]
    owner_keys: tuple[Path, ...]
    payout_metrics: tuple[str, ...]
    poll_seconds: float = 0.1
    takeover_seconds: float = 2.0

    @property
    def n(self) -> int:
        return len(self.owners)

    def rpc_url(self) -> str:
        if self.rpc_env:
            return rpc_from_env(self.rpc_env)
        assert self.rpc is not None
        return self.rpc

    def owner_key(self, node_id: int) -> bytes:
        """Node `node_id`'s owner private key (a file only its owner may read)."""
        if not 0 <= node_id < self.n:
            raise LocalError(f"node {node_id} is not in {self.cluster_file} [chain].owners")
        return read_owner_key(self.owner_keys[node_id], self.owners[node_id])

    def node_of(self, address: str) -> int | None:
        """Which node an owner address belongs to (None: not one of the validators)."""
        try:
            return self.owners.index(address)
        except ValueError:
            return None


def rpc_from_env(name: str) -> str:
    url = os.environ.get(name, "").strip()
    if not url:
        raise LocalError(f"${name} is not set: export the RPC URL of BSC testnet "
                         f"(e.g. https://data-seed-prebsc-1-s1.binance.org:8545)")
    return url


def deployer_key_from_env() -> str:
    key = os.environ.get(DEPLOYER_KEY_ENV, "").strip()
    if not key:
        raise LocalError(f"${DEPLOYER_KEY_ENV} is not set: export the funded deployer key "
                         "(it deploys the wallet and gives the owners gas money)")
    if not re.fullmatch(r"(0x)?[0-9a-fA-F]{64}", key):
        raise LocalError(f"${DEPLOYER_KEY_ENV} is not a private key (64 hex digits)")
    return key


def check_threshold(threshold: int, n: int) -> int:
    """The wallet's threshold: at least f+1 (a Byzantine minority alone can never pay) and at
    most n (payable while every owner is needed)."""
    f = max_faulty(n)
    if not f + 1 <= threshold <= n:
        raise LocalError(f"threshold {threshold} must be between f+1 = {f + 1} and n = {n}: "
                         "below f+1 the f faulty validators could pay alone")
    return threshold


# ---- owner keys -------------------------------------------------------------------------------

def write_owner_key(path: Path) -> str:
    """A fresh owner key in `path` (created 0600); returns only its address."""
    key = secrets.token_bytes(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("0x" + key.hex() + "\n")
    return Account.from_key(key).address


def read_owner_key(path: Path, address: str) -> bytes:
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise LocalError(f"cannot read owner key {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise LocalError(f"owner key {path} is readable by others; chmod 600 {path}")
    if not re.fullmatch(r"0x[0-9a-f]{64}", text):
        raise LocalError(f"owner key {path} is not one line of 0x and 64 hex digits")
    key = bytes.fromhex(text[2:])
    if Account.from_key(key).address != address:
        raise LocalError(f"owner key {path} does not belong to {address} ([chain].owners)")
    return key


# ---- the [chain] table ------------------------------------------------------------------------

def _get(table: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in table:
        raise LocalError(f"{where}: missing '{key}'")
    value = table[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise LocalError(f"{where}: '{key}' has the wrong type ({type(value).__name__})")
    return value


def load_chain(cluster_file: Path) -> ChainConfig:
    """The [chain] table of a cluster file, validated."""
    try:
        raw = tomllib.loads(cluster_file.read_text())
    except FileNotFoundError:
        raise LocalError(f"cluster file {cluster_file} not found; start a cluster with "
                         "'dtnbus cluster up --chain development'") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise LocalError(f"cannot read cluster file {cluster_file}: {exc}") from None
    table = raw.get("chain")
    if not isinstance(table, dict):
        raise LocalError(f"{cluster_file} has no [chain]: this cluster has no wallet; start "
                         "one with 'dtnbus cluster up --chain development'")
    where = f"{cluster_file}: [chain]"
    network = _get(table, "network", str, where)
    if network not in NETWORKS:
        raise LocalError(f"{where}: network {network!r} must be one of {', '.join(NETWORKS)}")
    owners = tuple(_get(table, "owners", list, where))
    keys = tuple(_get(table, "owner_keys", list, where))
    metrics = tuple(table.get("payout_metrics", [""] * len(owners)))
    if not owners or len(keys) != len(owners) or len(metrics) != len(owners):
        raise LocalError(f"{where}: owners, owner_keys and payout_metrics need one entry a node")
    for address in owners:
        if not isinstance(address, str) or not is_checksum_address(address):
            raise LocalError(f"{where}: owner {address!r} is not a checksummed address")
    if len(set(owners)) != len(owners):
        raise LocalError(f"{where}: an owner address appears twice")
    contract = _get(table, "contract", str, where)
    if not is_checksum_address(contract):
        raise LocalError(f"{where}: contract {contract!r} is not a checksummed address")
    config = ChainConfig(
        cluster_file=cluster_file, network=network,
        rpc=table.get("rpc"), rpc_env=table.get("rpc_env"),
        chain_id=_get(table, "chain_id", int, where),
        contract=contract,
        deploy_block=_get(table, "deploy_block", int, where),
        threshold=check_threshold(_get(table, "threshold", int, where), len(owners)),
        owners=owners,
        owner_keys=tuple(cluster_file.parent / k for k in keys),
        payout_metrics=tuple(str(m) for m in metrics),
        poll_seconds=float(table.get("poll_seconds", 0.1)),
        takeover_seconds=float(table.get("takeover_seconds", 2.0)),
    )
    if (config.rpc is None) == (config.rpc_env is None):
        raise LocalError(f"{where}: give exactly one of 'rpc' (a URL) or 'rpc_env' (a variable)")
    if not (0 < config.poll_seconds <= 60 and 0 < config.takeover_seconds <= 3600):
        raise LocalError(f"{where}: poll_seconds must be in (0, 60], takeover_seconds in "
                         "(0, 3600]")
    return config


def save_chain(cluster_file: Path, table: dict[str, Any]) -> ChainConfig:
    """Write (or replace) the [chain] table, keeping everything else in the file."""
    raw = tomllib.loads(cluster_file.read_text())
    raw["chain"] = table
    tmp = cluster_file.with_name(cluster_file.name + ".tmp")
    tmp.write_text(tomli_w.dumps(raw))
    tmp.replace(cluster_file)
    return load_chain(cluster_file)
