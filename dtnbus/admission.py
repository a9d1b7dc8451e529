"""Who may submit: client admission as ordered transactions.

The cluster file lists the clients admitted at genesis and marks some of them as
operators (or declares admission open: any Ed25519 key is a client, named by its key).
On a running cluster an operator admits or removes a client by submitting an ordinary
request whose transaction is an admission command; every replica applies it when it
executes that request, so all of them change the admitted set at the same point in the
order, and the block hash covers it (a request from a client that is not admitted there
is REFUSED, the same everywhere). No restart, no file to copy around.

A command is `PREFIX + msgpack([action, client, public_key, curve_key])`, action "add"
or "remove"; `curve_key` (z85, may be empty) lets the client connect under CurveZMQ: every
node adds it to its ZAP table when it executes the command.
Only an operator's request may carry one; from anyone else the bytes are an ordinary
transaction.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import msgpack

PREFIX = b"\x00dtnbus-admission/1\x00"
OPEN_PREFIX = "pk:"  # open admission: a client id is "pk:" + base64 of its raw Ed25519 key
ACTIONS = ("add", "remove")


@dataclass(frozen=True, slots=True)
class AdmissionChange:
    action: str  # "add" or "remove"
    client: str
    public_key: str  # the key text as in a cluster file ("" when removing)
    curve_key: str = ""  # its CurveZMQ public key (z85), when the cluster runs CURVE


def encode(change: AdmissionChange) -> bytes:
    """The transaction an operator submits to apply `change`."""
    if change.action not in ACTIONS:
        raise ValueError(f"admission action must be one of {ACTIONS}, got {change.action!r}")
    return PREFIX + msgpack.packb([change.action, change.client, change.public_key,
                                   change.curve_key], use_bin_type=True)


def decode(tx: bytes) -> AdmissionChange | None:
    """The command a transaction carries, or None (an ordinary transaction, or garbage
    behind the prefix: both are simply transactions)."""
    if not tx.startswith(PREFIX):
        return None
    try:
        action, client, key, *rest = msgpack.unpackb(tx[len(PREFIX):], raw=False)
    except Exception:
        return None
    curve = rest[0] if len(rest) == 1 else ""
    if action not in ACTIONS or type(client) is not str or type(key) is not str \
            or type(curve) is not str or len(rest) > 1 or not 0 < len(client) <= 256:
        return None
    return AdmissionChange(action, client, key, curve)


def open_id(raw_public_key: bytes) -> str:
    """The client id of an Ed25519 key under open admission."""
    return OPEN_PREFIX + base64.urlsafe_b64encode(raw_public_key).decode().rstrip("=")


def open_key(client: str) -> bytes | None:
    """The raw Ed25519 key an open-admission client id names, or None."""
    if not client.startswith(OPEN_PREFIX):
        return None
    text = client[len(OPEN_PREFIX):]
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        return None
    return raw if len(raw) == 32 else None
