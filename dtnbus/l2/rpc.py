"""A small Ethereum JSON-RPC client over one kept-alive HTTP(S) connection.

Two failure kinds, so callers can tell "the chain said no" from "no chain": `RpcUnavailable`
(no connection, a timeout, a non-JSON answer: retry later) and `RpcError` (the node answered
with an error: a revert, a nonce the node refuses, missing gas money; its code, message and
revert data are kept).
"""

from __future__ import annotations

import http.client
import itertools
import json
from typing import Any
from urllib.parse import urlsplit


class RpcUnavailable(Exception):
    """The node could not be reached or did not answer."""


class RpcError(Exception):
    """The node answered with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: bytes | None) -> None:
        super().__init__(f"{message} (code {code})")
        self.code, self.message, self.data = code, message, data


def _revert_data(error: dict[str, Any]) -> bytes | None:
    data = error.get("data")
    if isinstance(data, dict):
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x"):
        try:
            return bytes.fromhex(data[2:])
        except ValueError:
            return None
    return None


class Rpc:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"RPC URL {url!r} must be http:// or https://")
        self.url = url
        self._parts = parts
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._ids = itertools.count(1)

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = (http.client.HTTPSConnection if self._parts.scheme == "https"
                   else http.client.HTTPConnection)
            self._conn = cls(self._parts.hostname, self._parts.port, timeout=self._timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def call(self, method: str, *params: Any) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": next(self._ids), "method": method,
                           "params": list(params)})
        path = self._parts.path or "/"
        if self._parts.query:
            path += "?" + self._parts.query
        # a kept-alive connection the server has since closed fails on first use: reconnect
        # and try once more (safe: reads are idempotent, a re-sent raw transaction is the
        # same transaction)
        for attempt in (0, 1):
            reused = self._conn is not None
            try:
                conn = self._connection()
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                raw = response.read()
                break
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                self.close()
                if not reused or attempt or isinstance(exc, TimeoutError):
                    raise RpcUnavailable(f"{method}: {exc or type(exc).__name__}") from None
        try:
            answer = json.loads(raw)
        except ValueError:
            self.close()
            raise RpcUnavailable(f"{method}: HTTP {response.status}, not JSON") from None
        if not isinstance(answer, dict):
            raise RpcUnavailable(f"{method}: unexpected answer {str(answer)[:80]}")
        if answer.get("error"):
            error = answer["error"]
            if not isinstance(error, dict):
                raise RpcError(-1, str(error), None)
            raise RpcError(int(error.get("code", -1)), str(error.get("message", "")),
                           _revert_data(error))
        return answer.get("result")

    # ---- the calls we use ----------------------------------------------------------------------

    def chain_id(self) -> int:
        return int(self.call("eth_chainId"), 16)

    def block_number(self) -> int:
        return int(self.call("eth_blockNumber"), 16)

    def balance(self, address: str) -> int:
        return int(self.call("eth_getBalance", address, "latest"), 16)

    def nonce(self, address: str, block: str = "pending") -> int:
        return int(self.call("eth_getTransactionCount", address, block), 16)

    def gas_price(self) -> int:
        return int(self.call("eth_gasPrice"), 16)

    def code(self, address: str) -> bytes:
        return bytes.fromhex(self.call("eth_getCode", address, "latest")[2:])

    def eth_call(self, to: str, data: bytes, sender: str | None = None) -> bytes:
        tx: dict[str, str] = {"to": to, "data": "0x" + data.hex()}
        if sender:
            tx["from"] = sender
        return bytes.fromhex(self.call("eth_call", tx, "latest")[2:])

    def estimate_gas(self, sender: str, to: str, data: bytes, value: int = 0) -> int:
        tx = {"from": sender, "to": to, "data": "0x" + data.hex(), "value": hex(value)}
        return int(self.call("eth_estimateGas", tx), 16)

    def send_raw(self, raw: bytes) -> str:
        return self.call("eth_sendRawTransaction", "0x" + raw.hex())

    def receipt(self, tx_hash: str) -> dict[str, Any] | None:
        return self.call("eth_getTransactionReceipt", tx_hash)

    def transaction(self, tx_hash: str) -> dict[str, Any] | None:
        return self.call("eth_getTransactionByHash", tx_hash)

    def logs(self, address: str, from_block: int, to_block: int) -> list[dict[str, Any]]:
        return self.call("eth_getLogs", {"address": address, "fromBlock": hex(from_block),
                                         "toBlock": hex(to_block)})
