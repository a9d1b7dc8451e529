"""Provisioning for real hosts: each key is made on its own host, only public parts travel.

    host K:  dtnbus keygen --node K --advertise ADDR --out DIR
             -> DIR/keys/node-K.key (0600, never leaves the host) and DIR/node-K.toml,
                a fragment holding the node's public key and endpoints
    client:  dtnbus keygen --client NAME --out DIR   (the same for a submitting client)
    admin:   dtnbus cluster assemble node-*.toml client-*.toml --out cluster.toml
             -> one cluster file, checked (ids 0..n-1, one scheme, distinct keys and
                endpoints), copied to every host next to its keys/

`dtnbus keygen --nodes N` (dtnbus.config.generate_cluster) is the one-machine shortcut.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from dtnbus.config import (
    check_port_range,
    ensure_directory,
    load_cluster,
    split_host_port,
    write_text_atomic,
)
from dtnbus.crypto import check_scheme, generate_key, public_key_text, write_private_key
from dtnbus.errors import LocalError

DEFAULT_BASE_PORT = 7000


def _refuse_existing(paths: list[Path], fresh: bool) -> None:
    there = [p for p in paths if p.exists()]
    if there and not fresh:
        raise LocalError(f"{there[0]} already exists; refusing to overwrite a key: use another "
                         "--out, or add --fresh to discard it (peers that know the old public "
                         "key will reject the new one)")


def node_fragment(out: Path, node_id: int, advertise: str, scheme: str = "ed25519",
                  bind: str | None = None, base_port: int = DEFAULT_BASE_PORT,
                  metrics_host: str = "127.0.0.1", fresh: bool = False) -> Path:
    """Make node `node_id`'s key on this host and write its public fragment `node-K.toml`."""
    check_scheme(scheme)
    if node_id < 0:
        raise LocalError(f"--node must be 0 or more, got {node_id}")
    if not advertise or any(c in advertise for c in "/: "):
        raise LocalError(f"--advertise {advertise!r} must be the host address peers reach "
                         "this node at (an IP or DNS name, no port)")
    check_port_range(base_port, 3)
    ensure_directory(out)
    key_path = out / "keys" / f"node-{node_id}.key"
    fragment = out / f"node-{node_id}.toml"
    _refuse_existing([key_path], fresh)
    table: dict[str, Any] = {
        "id": node_id,
        "pub": f"tcp://{advertise}:{base_port}",
        "router": f"tcp://{advertise}:{base_port + 1}",
        "metrics": f"{metrics_host}:{base_port + 2}",
        "public_key": "",
        "key_file": f"keys/node-{node_id}.key",
        "ledger": f"ledgers/node-{node_id}.sqlite",
    }
    if bind is not None:
        table["bind"] = bind
    try:
        key = generate_key(scheme)
        write_private_key(key_path, key)
        table["public_key"] = public_key_text(key.public_key())
        write_text_atomic(fragment, tomli_w.dumps({"scheme": scheme, "nodes": [table]}))
    except OSError as exc:
        raise LocalError(f"cannot write into {out}: {exc.strerror or exc}") from None
    return fragment


def client_fragment(out: Path, name: str, scheme: str = "ed25519", fresh: bool = False,
                    operator: bool = False) -> Path:
    """Make a client's key and its public fragment `client-NAME.toml` (`operator`: it may
    admit and remove clients on the running cluster)."""
    check_scheme(scheme)
    if not name or len(name) > 64 or not all(c.isalnum() or c in "-_." for c in name):
        raise LocalError(f"--client {name!r}: use 1-64 letters, digits, '-', '_' or '.'")
    ensure_directory(out)
    key_path = out / "keys" / f"{name}.key"
    fragment = out / f"client-{name}.toml"
    _refuse_existing([key_path], fresh)
    try:
        key = generate_key(scheme)
        write_private_key(key_path, key)
        table: dict[str, Any] = {"id": name, "public_key": public_key_text(key.public_key()),
                                 "key_file": f"keys/{name}.key"}
        if operator:
            table["operator"] = True
        doc = {"scheme": scheme, "clients": [table]}
        write_text_atomic(fragment, tomli_w.dumps(doc))
    except OSError as exc:
        raise LocalError(f"cannot write into {out}: {exc.strerror or exc}") from None
    return fragment


def _read_fragment(path: Path) -> dict[str, Any]:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise LocalError(f"fragment {path} not found") from None
    except OSError as exc:
        raise LocalError(f"cannot read fragment {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise LocalError(f"fragment {path} is not valid TOML: {exc}") from None
    for key in ("nodes", "clients"):
        if not isinstance(raw.get(key, []), list):
            raise LocalError(f"fragment {path}: '{key}' must be [[{key}]] tables")
    if not raw.get("nodes") and not raw.get("clients"):
        raise LocalError(f"fragment {path} has no [[nodes]] or [[clients]] table")
    return raw


def assemble(fragments: list[Path], out: Path, fresh: bool = False,
             base: dict[str, Any] | None = None) -> Path:
    """Join node and client fragments into one cluster file, checked as a whole.

    `base` may carry `[protocol]`, `[shaping]` and other top-level settings."""
    if not fragments:
        raise LocalError("give the fragment files to assemble (node-K.toml, client-NAME.toml)")
    if out.exists() and not fresh:
        raise LocalError(f"{out} already exists; refusing to overwrite a cluster file: choose "
                         "another --out, or add --fresh to replace it")
    schemes: dict[str, Path] = {}
    nodes: dict[int, tuple[dict[str, Any], Path]] = {}
    clients: dict[str, tuple[dict[str, Any], Path]] = {}
    for path in fragments:
        raw = _read_fragment(path)
        schemes.setdefault(check_scheme(raw.get("scheme", "ed25519")), path)
        for table in raw.get("nodes", []):
            node_id = table.get("id")
            if not isinstance(node_id, int) or isinstance(node_id, bool):
                raise LocalError(f"fragment {path}: a node has no integer id")
            if node_id in nodes:
                raise LocalError(f"node {node_id} appears in {nodes[node_id][1]} and {path}; "
                                 "each id once")
            nodes[node_id] = (table, path)
        for table in raw.get("clients", []):
            name = table.get("id")
            if name in clients:
                raise LocalError(f"client {name!r} appears in {clients[name][1]} and {path}")
            clients[str(name)] = (table, path)
    if len(schemes) > 1:
        raise LocalError(f"fragments mix signature schemes {sorted(schemes)}; regenerate "
                         "them with one --scheme")
    if sorted(nodes) != list(range(len(nodes))):
        missing = sorted(set(range(max(nodes, default=-1) + 1)) - set(nodes))
        raise LocalError(f"node ids must be 0..{len(nodes) - 1} with none missing; missing: "
                         f"{missing or 'none'}, have {sorted(nodes)}")
    seen_keys: dict[str, str] = {}
    seen_ends: dict[str, str] = {}
    for node_id, (table, path) in sorted(nodes.items()):
        who = f"node {node_id} ({path})"
        key = str(table.get("public_key", ""))
        if key in seen_keys:
            raise LocalError(f"{who} has the same public key as {seen_keys[key]}; "
                             "each node needs its own key (run keygen --node on each host)")
        seen_keys[key] = who
        for end in ("pub", "router"):
            value = str(table.get(end, ""))
            if value in seen_ends:
                raise LocalError(f"{who}: {end} {value} is also {seen_ends[value]}'s endpoint")
            seen_ends[value] = who
            if value.startswith("tcp://"):
                split_host_port(value.removeprefix("tcp://"), who)
    doc: dict[str, Any] = dict(base or {})
    doc["scheme"] = next(iter(schemes))
    doc["nodes"] = [t for _, (t, _p) in sorted(nodes.items())]
    doc["clients"] = [t for t, _p in clients.values()]
    ensure_directory(out.parent, "--out")
    write_text_atomic(out, tomli_w.dumps(doc))
    try:
        load_cluster(out)  # everything a node will check, checked now
    except LocalError:
        out.unlink()
        raise
    return out
