"""One-off chain operations a cluster's set-up needs: start a local anvil, deploy the wallet,
give owners gas money, deposit rewards. Signed locally with eth-account, sent over JSON-RPC.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from eth_account import Account
from eth_utils import to_checksum_address

from dtnbus.config import free_ports
from dtnbus.errors import LocalError
from dtnbus.l2.contract import creation_code
from dtnbus.l2.rpc import Rpc, RpcError, RpcUnavailable

# anvil's first development account (from its public default mnemonic): development only
ANVIL_DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
ANVIL_CHAIN_ID = 31337


def anvil_path() -> str:
    """anvil from PATH, else the one setup.sh linked beside this Python (the venv's bin)."""
    beside = Path(sys.executable).parent / "anvil"
    return shutil.which("anvil") or (str(beside) if beside.exists() else "anvil")


def start_anvil(state_file: Path, log_file: Path, host: str = "127.0.0.1",
                port: int | None = None,
                timeout: float = 15.0) -> tuple[subprocess.Popen[bytes], str]:
    """A local chain (prague rules, the ones our gas figures use) on `port` (default: a free
    one). `state_file` keeps the chain across a stop and start (anvil loads it at start and
    writes it when it exits cleanly)."""
    port = port or free_ports(1, host)[0]
    state_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        try:
            proc = subprocess.Popen(
                [anvil_path(), "--host", host, "--port", str(port), "--hardfork", "prague",
                 "--chain-id", str(ANVIL_CHAIN_ID), "--state", str(state_file)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        except FileNotFoundError:
            raise LocalError("anvil is not on PATH: run 'make setup' and use the venv "
                             "(.venv/bin holds anvil)") from None
    url = f"http://{host}:{port}"
    rpc = Rpc(url, timeout=2.0)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                rpc.chain_id()
                return proc, url
            except RpcUnavailable:
                if proc.poll() is not None:
                    raise LocalError(f"anvil exited at start (code {proc.returncode}); "
                                     f"see {log_file}") from None
                if time.monotonic() > deadline:
                    proc.kill()
                    raise LocalError(f"anvil did not answer on {url} within {timeout:.0f}s; "
                                     f"see {log_file}") from None
                time.sleep(0.05)  # polling a starting process: no event to wait on
    finally:
        rpc.close()


def wait_receipt(rpc: Rpc, tx_hash: str, timeout: float = 120.0) -> dict:
    """The receipt of a transaction (it must succeed), waiting for it to be mined."""
    deadline = time.monotonic() + timeout
    while True:
        receipt = rpc.receipt(tx_hash)
        if receipt is not None:
            if int(receipt["status"], 16) != 1:
                raise LocalError(f"transaction {tx_hash} reverted")
            return receipt
        if time.monotonic() > deadline:
            raise LocalError(f"transaction {tx_hash} not mined within {timeout:.0f}s")
        time.sleep(0.2)  # a live chain mines every few seconds


def send(rpc: Rpc, key: str | bytes, chain_id: int, to: str | None, value: int = 0,
         data: bytes = b"") -> dict:
    """Sign and send one transaction from `key`; returns its receipt."""
    sender = Account.from_key(key).address
    tx: dict = {"nonce": rpc.nonce(sender), "gasPrice": rpc.gas_price(), "value": value,
                "data": data, "chainId": chain_id}
    try:
        estimate = rpc.call("eth_estimateGas", {
            "from": sender, **({"to": to} if to else {}), "value": hex(value),
            "data": "0x" + data.hex()})
    except RpcError as exc:
        raise LocalError(f"the chain refuses the transaction from {sender}: "
                         f"{exc.message}") from None
    tx["gas"] = int(int(estimate, 16) * 1.2) + 5000
    if to:
        tx["to"] = to
    signed = Account.sign_transaction(tx, key)
    try:
        tx_hash = rpc.send_raw(bytes(signed.raw_transaction))
    except RpcError as exc:
        raise LocalError(f"the chain refuses the transaction from {sender}: "
                         f"{exc.message}") from None
    return wait_receipt(rpc, tx_hash)


def deploy_wallet(rpc: Rpc, key: str, chain_id: int, threshold: int,
                  owners: list[str]) -> tuple[str, int]:
    """Deploy MultiSigContract(threshold, owners); returns (address, block)."""
    receipt = send(rpc, key, chain_id, None, data=creation_code(threshold, owners))
    return to_checksum_address(receipt["contractAddress"]), int(receipt["blockNumber"], 16)


def top_up(rpc: Rpc, key: str, chain_id: int, addresses: list[str], amount: int) -> None:
    """Bring each address's balance up to `amount` wei (gas money for the owners)."""
    for address in addresses:
        missing = amount - rpc.balance(address)
        if missing > 0:
            send(rpc, key, chain_id, address, value=missing)
