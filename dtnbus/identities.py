"""Client identities on the client's side: keys, where they are found, and sessions that
survive a restart of the client.

- `new_identity` makes a key pair for one client program (private key 0600, git-ignored
  under keys/) and a small record `clients/NAME.toml` beside the cluster file, so
  `submit --client NAME` finds it. The nodes learn the public key from the ordered
  admission command (`admit`), never from this file: the cluster file's [[clients]] are
  genesis and never change under a running cluster, or replicas that restarted would
  start from a different admitted set than the others.
- `resume_session`: `submit --client NAME` keeps one session per piece of work (a hash
  of the transactions it was given), so the same command run again after a crash sends
  the same requests under the same identities: what executed is answered with its
  result, nothing executes twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import tomli_w

from dtnbus import admission
from dtnbus.client import Client, SubmitResult, new_session
from dtnbus.config import ClientSpec, ClusterConfig
from dtnbus.crypto import generate_key, public_key_text, write_private_key
from dtnbus.curve import new_curve_key_file
from dtnbus.errors import LocalError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def registry(config: ClusterConfig) -> Path:
    return config.path.parent / "clients"


def check_name(name: str) -> str:
    if not NAME.fullmatch(name) or name.startswith(admission.OPEN_PREFIX):
        raise LocalError(f"client name {name!r} must be 1-64 letters, digits, '_', '.', '-' "
                         "(starting with a letter or digit)")
    return name


def new_identity(config: ClusterConfig, name: str) -> ClientSpec:
    """A key pair and a local record for a new client (not yet admitted)."""
    check_name(name)
    if any(s.id == name for s in (*config.clients, *config.local_clients())):
        raise LocalError(f"client {name!r} already exists in {config.path.parent}; choose "
                         "another --name")
    key = generate_key(config.scheme)
    key_file = Path("keys") / f"client-{name}.key"
    write_private_key(config.path.parent / key_file, key)
    record = registry(config) / f"{name}.toml"
    record.parent.mkdir(parents=True, exist_ok=True)
    spec = ClientSpec(name, public_key_text(key.public_key()), config.path.parent / key_file)
    table = {"id": name, "public_key": spec.public_key, "key_file": str(key_file)}
    if config.curve is not None:  # its CurveZMQ key too: the admission carries the public half
        curve_file = Path("keys") / f"client-{name}.curve.key"
        table["curve_public_key"] = new_curve_key_file(config.path.parent / curve_file)
        table["curve_key_file"] = str(curve_file)
    record.write_text(tomli_w.dumps(table))
    return spec


def curve_key_of(config: ClusterConfig, name: str) -> str:
    """The CurveZMQ public key recorded for a client made here ("" without CURVE)."""
    member = config.local_curve_key(name)
    return member.public_key if member is not None else ""


def operator_of(config: ClusterConfig) -> ClientSpec:
    """The first operator whose private key is here (it signs admission commands)."""
    for spec in config.clients:
        if spec.operator and spec.key_file is not None and spec.key_file.exists():
            return spec
    raise LocalError(f"no operator key in {config.path.parent}: admitting or removing a "
                     "client needs a [[clients]] entry with operator = true whose key_file is "
                     "on this host")


def admit(config: ClusterConfig, change: admission.AdmissionChange,
          timeout: float = 30.0) -> SubmitResult:
    """Submit an admission command as the operator and wait until it is decided."""
    operator = operator_of(config)
    with Client(config, operator.id) as client:
        return client.submit([(admission.encode(change),)], timeout=timeout)


def work_digest(requests: Sequence[tuple[bytes, ...]]) -> str:
    h = hashlib.sha256()
    for txs in requests:
        h.update(len(txs).to_bytes(4, "big"))
        for tx in txs:
            h.update(len(tx).to_bytes(8, "big") + tx)
    return h.hexdigest()


def resume_session(config: ClusterConfig, client: str, work: str) -> tuple[int, bool]:
    """The session for this client and this piece of work: the one used before (True) or
    a new one, recorded before the first request leaves (False)."""
    path = registry(config) / f"{client}.sessions.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent submitters of one client
        try:
            table = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            table = {}
        if work in table:
            return int(table[work]), True
        session = new_session()
        table[work] = session
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(table))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return session, False
