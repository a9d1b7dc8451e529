"""The cluster file (TOML): members, endpoints, public keys, protocol and shaping.

Loaded and validated once, at the edge, into frozen dataclasses; every problem is a
`LocalError` whose message is one line saying what is wrong and how to fix it.
Relative paths in the file (key files, ledgers) are relative to the file itself.

    scheme = "ed25519"
    [protocol]            # optional: ReplicaConfig fields
    batch_max_txs = 4096
    [shaping]             # optional: 0/0 = no shaping
    bandwidth_mbps = 30.0
    latency_ms = 300.0
    mode = "link"
    [[nodes]]
    id = 0
    pub = "tcp://127.0.0.1:7000"
    router = "tcp://127.0.0.1:7001"
    metrics = "127.0.0.1:7002"
    public_key = "MCowBQYDK2VwAyEA..."
    key_file = "keys/node-0.key"
    ledger = "ledgers/node-0.sqlite"
    [[clients]]
    id = "client"
    public_key = "..."
    key_file = "keys/client.key"

With `curve = true` (top level) every connection is CurveZMQ (curve.py): each
[[nodes]] table then also holds `curve_public_key` (z85) and `curve_key_file`, and so
does each [[clients]] table whose client may connect.
"""

from __future__ import annotations

import dataclasses
import socket
import tomllib
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from dtnbus.crypto import (
    Signer,
    Verifier,
    check_scheme,
    generate_key,
    load_public_key_text,
    public_key_text,
    read_private_key,
    scheme_of,
    write_private_key,
)
from dtnbus.curve import CurveKeys, add_curve_keys, load_curve_keys
from dtnbus.errors import LocalError
from dtnbus.messages import max_faulty
from dtnbus.replica import ReplicaConfig
from dtnbus.shaping import LinkProfile, Shaper, links_from_config

PROTOCOL_FIELDS = {f.name for f in dataclasses.fields(ReplicaConfig)} - {"replica_id", "n"}
SHAPING_FIELDS = {"bandwidth_mbps", "latency_ms", "mode", "latency_dist", "jitter_ms",
                  "mbps_base", "burst_bytes", "seed"}


@dataclass(frozen=True, slots=True)
class NodeSpec:
    id: int
    pub: str
    router: str
    metrics: str
    public_key: str
    key_file: Path | None
    ledger: Path


@dataclass(frozen=True, slots=True)
class ClientSpec:
    id: str
    public_key: str
    key_file: Path | None


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    path: Path
    scheme: str
    nodes: tuple[NodeSpec, ...]
    clients: tuple[ClientSpec, ...]
    protocol: dict[str, Any] = field(default_factory=dict)
    shaping: dict[str, Any] = field(default_factory=dict)
    links: tuple[dict[str, Any], ...] = ()
    regions: dict[str, list[int]] = field(default_factory=dict)
    curve: CurveKeys | None = None  # CurveZMQ keys when the file says `curve = true`

    @property
    def n(self) -> int:
        return len(self.nodes)

    @property
    def f(self) -> int:
        return max_faulty(self.n)

    def node(self, node_id: int) -> NodeSpec:
        for spec in self.nodes:
            if spec.id == node_id:
                return spec
        raise LocalError(f"node {node_id} is not in {self.path} (ids 0..{self.n - 1})")

    def client(self, client_id: str | None = None) -> ClientSpec:
        for spec in self.clients:
            if client_id is None or spec.id == client_id:
                return spec
        raise LocalError(f"client {client_id!r} is not in {self.path}")

    def replica_config(self, node_id: int) -> ReplicaConfig:
        try:
            return ReplicaConfig(node_id, self.n, **self.protocol)
        except (TypeError, ValueError) as exc:
            raise LocalError(f"{self.path}: [protocol]: {exc}") from None

    @property
    def shaped(self) -> bool:
        return bool(self.links) or any(self.shaping.get(k) for k in
                                       ("bandwidth_mbps", "latency_ms", "jitter_ms"))

    def shaper(self, sender: int | str) -> Shaper | None:
        """The outgoing shaper of a node or client, or None when nothing is shaped."""
        if not self.shaped:
            return None
        table = dict(self.shaping)
        mode = table.pop("mode", "link")
        seed = table.pop("seed", 0)
        try:
            default = LinkProfile(**table)
            ends = [s.id for s in self.nodes] + [c.id for c in self.clients]
            links = links_from_config(self.links, ends, regions=self.regions, default=default)
            return Shaper.from_links(links, sender, mode=mode, default=default, uplink=default,
                                     seed=seed * 1_000_003 + zlib.crc32(str(sender).encode()))
        except (TypeError, ValueError) as exc:
            raise LocalError(f"{self.path}: shaping: {exc}") from None

    def replica_verifiers(self) -> dict[int, Verifier]:
        return {s.id: Verifier(load_public_key_text(s.public_key)) for s in self.nodes}

    def client_verifiers(self) -> dict[str, Verifier]:
        return {s.id: Verifier(load_public_key_text(s.public_key)) for s in self.clients}

    def signer(self, key_file: Path | None, who: str) -> Signer:
        if key_file is None:
            raise LocalError(f"{self.path} has no key_file for {who}; run this where its key is")
        return Signer(read_private_key(key_file))


def _need(table: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in table:
        raise LocalError(f"{where}: missing '{key}'")
    value = table[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise LocalError(f"{where}: '{key}' has the wrong type ({type(value).__name__})")
    return value


def _optional(table: dict, key: str, kind: type, where: str, default: Any) -> Any:
    return _need(table, key, kind, where) if key in table else default


def _tables(raw: dict, key: str, where: str) -> list[dict]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise LocalError(f"{where}: '{key}' must be an array of tables ([[{key}]])")
    return value


def _table(raw: dict, key: str, where: str) -> dict:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise LocalError(f"{where}: '{key}' must be a table ([{key}])")
    return value


_PROTOCOL_TYPES = {f.name: f.type for f in dataclasses.fields(ReplicaConfig)}


def _check_protocol(protocol: dict, where: str) -> None:
    for key, value in protocol.items():
        want = _PROTOCOL_TYPES.get(key)
        if want == "bool":
            ok = isinstance(value, bool)
        elif want == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok:
            raise LocalError(f"{where}: [protocol] '{key}' must be {want}, "
                             f"got {type(value).__name__}")


def _endpoint(value: str, where: str) -> str:
    if not value.startswith(("tcp://", "ipc://")):
        raise LocalError(f"{where}: endpoint {value!r} must start with tcp:// or ipc://")
    return value


def load_cluster(path: Path) -> ClusterConfig:
    """Read and validate a cluster file."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise LocalError(f"cluster file {path} not found; create one with "
                         "'dtnbus keygen' or 'dtnbus cluster up'") from None
    except OSError as exc:
        raise LocalError(f"cannot read cluster file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise LocalError(f"cluster file {path} is not valid TOML: {exc}") from None
    base = path.parent
    scheme = check_scheme(raw.get("scheme", "ed25519"))
    nodes = []
    for i, table in enumerate(_tables(raw, "nodes", str(path))):
        where = f"{path}: nodes[{i}]"
        key_file = _optional(table, "key_file", str, where, None)
        nodes.append(NodeSpec(
            id=_need(table, "id", int, where),
            pub=_endpoint(_need(table, "pub", str, where), where),
            router=_endpoint(_need(table, "router", str, where), where),
            metrics=_optional(table, "metrics", str, where, ""),
            public_key=_need(table, "public_key", str, where),
            key_file=base / key_file if key_file else None,
            ledger=base / _need(table, "ledger", str, where),
        ))
    if len(nodes) < 1:
        raise LocalError(f"{path}: no [[nodes]]; a cluster needs at least 4 for f >= 1")
    if sorted(s.id for s in nodes) != list(range(len(nodes))):
        raise LocalError(f"{path}: node ids must be 0..{len(nodes) - 1}, each once")
    nodes.sort(key=lambda s: s.id)
    clients = []
    for i, table in enumerate(_tables(raw, "clients", str(path))):
        where = f"{path}: clients[{i}]"
        key_file = _optional(table, "key_file", str, where, None)
        clients.append(ClientSpec(_need(table, "id", str, where),
                                  _need(table, "public_key", str, where),
                                  base / key_file if key_file else None))
    protocol = _table(raw, "protocol", str(path))
    _check_protocol(protocol, str(path))
    unknown = set(protocol) - PROTOCOL_FIELDS
    if unknown:
        raise LocalError(f"{path}: [protocol] has unknown keys {sorted(unknown)}; "
                         f"known: {sorted(PROTOCOL_FIELDS)}")
    shaping = _table(raw, "shaping", str(path))
    unknown = set(shaping) - SHAPING_FIELDS
    if unknown:
        raise LocalError(f"{path}: [shaping] has unknown keys {sorted(unknown)}; "
                         f"known: {sorted(SHAPING_FIELDS)}")
    regions = raw.get("regions", {})
    if not isinstance(regions, dict):
        raise LocalError(f"{path}: [regions] must map a region name to a list of node ids")
    config = ClusterConfig(path, scheme, tuple(nodes), tuple(clients), dict(protocol),
                           dict(shaping), tuple(_tables(raw, "links", str(path))), dict(regions))
    for spec in nodes:
        load_public_key_text(spec.public_key)
    config.replica_config(0)  # validates [protocol]
    config.shaper(0)  # validates [shaping], [regions] and [[links]]
    _check_keys_not_shared(config)
    return dataclasses.replace(config, curve=load_curve_keys(raw, path))


def _check_keys_not_shared(config: ClusterConfig) -> None:
    """A replica's signing key must never be a client's: the bus would then accept a
    request the replica signed as that client's."""
    replica_keys = {s.public_key: s.id for s in config.nodes}
    for spec in config.clients:
        if spec.public_key in replica_keys:
            raise LocalError(f"{config.path}: client {spec.id!r} has the public key of node "
                             f"{replica_keys[spec.public_key]}; give the client its own key")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the kernel says are free now (all held open together, so they are distinct)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def generate_cluster(out: Path, nodes: int, scheme: str = "ed25519", host: str = "127.0.0.1",
                     base_port: int | None = None, hosts: list[str] | None = None,
                     protocol: dict[str, Any] | None = None,
                     shaping: dict[str, Any] | None = None,
                     links: list[dict[str, Any]] | None = None,
                     regions: dict[str, list[int]] | None = None,
                     curve: bool = False) -> Path:
    """Create keys (mode 0600) for N nodes and one client, and write `out/cluster.toml`.
    With `curve`, each also gets a CURVE key pair and the file says `curve = true`.

    `hosts` gives each node its own address (one machine or network namespace each);
    they then all use the same ports, `base_port` (default 7000) onwards."""
    check_scheme(scheme)
    if nodes < 1:
        raise LocalError(f"--nodes must be at least 1 (4 or more to tolerate a fault), got {nodes}")
    if hosts is not None and len(hosts) != nodes:
        raise LocalError(f"--hosts lists {len(hosts)} addresses for {nodes} nodes; give one each")
    out.mkdir(parents=True, exist_ok=True)
    if hosts is not None:
        first = base_port or 7000
        ports = [first, first + 1, first + 2] * nodes
    else:
        ports = (list(range(base_port, base_port + 3 * nodes)) if base_port
                 else free_ports(3 * nodes, host))
    node_tables = []
    for i in range(nodes):
        key = generate_key(scheme)
        write_private_key(out / "keys" / f"node-{i}.key", key)
        p_pub, p_router, p_metrics = ports[3 * i: 3 * i + 3]
        host = hosts[i] if hosts is not None else host
        node_tables.append({
            "id": i,
            "pub": f"tcp://{host}:{p_pub}",
            "router": f"tcp://{host}:{p_router}",
            "metrics": f"{host}:{p_metrics}",
            "public_key": public_key_text(key.public_key()),
            "key_file": f"keys/node-{i}.key",
            "ledger": f"ledgers/node-{i}.sqlite",
        })
    client_key = generate_key(scheme)
    assert scheme_of(client_key) == scheme
    write_private_key(out / "keys" / "client.key", client_key)
    doc: dict[str, Any] = {"scheme": scheme}
    if protocol:
        doc["protocol"] = protocol
    if shaping:
        doc["shaping"] = shaping
    doc["nodes"] = node_tables
    doc["clients"] = [{"id": "client", "public_key": public_key_text(client_key.public_key()),
                       "key_file": "keys/client.key"}]
    if regions:
        doc["regions"] = regions
    if links:
        doc["links"] = links
    if curve:
        add_curve_keys(out, doc)
    path = out / "cluster.toml"
    path.write_text(tomli_w.dumps(doc))
    return path
