"""MultiSigContract as data: its packaged build (ABI, creation code), call encoding, and the
decoding of its events and custom errors. No RPC here, and no brownie (nodes, payout agents
and the CLI stay light); `tools/export_contract.py` refreshes the packaged build.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from eth_abi import decode, encode
from eth_utils import keccak, to_checksum_address

ARTIFACT = Path(__file__).with_name("MultiSigContract.json")


@cache
def artifact() -> dict[str, Any]:
    return json.loads(ARTIFACT.read_text())


def _signature(item: dict[str, Any]) -> str:
    return f"{item['name']}({','.join(i['type'] for i in item['inputs'])})"


@cache
def _functions() -> dict[str, dict[str, Any]]:
    return {i["name"]: i for i in artifact()["abi"] if i["type"] == "function"}


@cache
def _errors() -> dict[bytes, str]:
    return {keccak(text=_signature(i))[:4]: i["name"]
            for i in artifact()["abi"] if i["type"] == "error"}


def creation_code(threshold: int, owners: list[str]) -> bytes:
    """Creation bytecode with the constructor's arguments appended."""
    code = bytes.fromhex(artifact()["bytecode"].removeprefix("0x"))
    return code + encode(["uint256", "address[]"], [threshold, owners])


def call_data(name: str, *args: Any) -> bytes:
    """ABI-encoded call of function `name` with `args`."""
    fn = _functions()[name]
    types = [i["type"] for i in fn["inputs"]]
    return keccak(text=_signature(fn))[:4] + encode(types, list(args))


def decode_result(name: str, data: bytes) -> tuple[Any, ...]:
    fn = _functions()[name]
    return tuple(decode([o["type"] for o in fn["outputs"]], data))


def error_name(revert_data: bytes | None) -> str | None:
    """The custom error a revert carries (e.g. 'InsufficientBalance'), if it is one of ours."""
    if not revert_data or len(revert_data) < 4:
        return None
    return _errors().get(revert_data[:4])


# ---- events -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class WalletEvent:
    """One decoded log of the wallet, in chain order (block, log_index)."""

    kind: str  # Proposal, Confirmation, Revocation, Execution, Deposit, Payout
    block: int
    log_index: int
    tx_hash: str
    index: int | None = None  # proposal index
    actor: str | None = None  # proposer / owner / executor / sender / beneficiary
    destination: str | None = None
    value: int | None = None
    reward_id: bytes | None = None


_EVENT_SIGNATURES = {
    "Proposal": "Proposal(uint256,address,address,uint256,bytes32)",
    "Confirmation": "Confirmation(uint256,address)",
    "Revocation": "Revocation(uint256,address)",
    "Execution": "Execution(uint256,address,address,uint256)",
    "Deposit": "Deposit(address,uint256)",
    "Payout": "Payout(address,uint256)",
}
TOPICS = {"0x" + keccak(text=sig).hex(): kind for kind, sig in _EVENT_SIGNATURES.items()}


def _address(topic: str) -> str:
    return to_checksum_address("0x" + topic[-40:])


def decode_log(log: dict[str, Any]) -> WalletEvent | None:
    """A log as eth_getLogs returns it -> WalletEvent (None: not one of the wallet's events)."""
    topics = log.get("topics") or []
    kind = TOPICS.get(topics[0]) if topics else None
    if kind is None:
        return None
    data = bytes.fromhex(log["data"][2:])
    where = dict(kind=kind, block=int(log["blockNumber"], 16),
                 log_index=int(log["logIndex"], 16), tx_hash=log["transactionHash"])
    if kind == "Proposal":
        value, reward_id = decode(["uint256", "bytes32"], data)
        return WalletEvent(**where, index=int(topics[1], 16), actor=_address(topics[2]),
                           destination=_address(topics[3]), value=value, reward_id=reward_id)
    if kind in ("Confirmation", "Revocation"):
        return WalletEvent(**where, index=int(topics[1], 16), actor=_address(topics[2]))
    if kind == "Execution":
        (value,) = decode(["uint256"], data)
        return WalletEvent(**where, index=int(topics[1], 16), actor=_address(topics[2]),
                           destination=_address(topics[3]), value=value)
    (value,) = decode(["uint256"], data)  # Deposit, Payout
    return WalletEvent(**where, actor=_address(topics[1]), value=value)
