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
    pub = "tcp://127.0.0.1:7000"      # advertised: where peers and clients connect
    router = "tcp://127.0.0.1:7001"
    bind = "0.0.0.0"                  # optional: the local address the sockets bind to
    metrics = "127.0.0.1:7002"        # /metrics; loopback unless you open it on purpose
    public_key = "MCowBQYDK2VwAyEA..."
    key_file = "keys/node-0.key"
    ledger = "ledgers/node-0.sqlite"
    [[clients]]           # admitted at genesis; more are admitted by ordered commands
    id = "client"
    public_key = "..."
    key_file = "keys/client.key"
    operator = true       # may admit and remove clients on the running cluster
    [storage]             # optional
    durability = "fsync"  # or "process": see docs/protocol.md, the fault model
    [admission]           # optional
    open = false          # true: any Ed25519 key is a client, named "pk:<its key>"

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
from dtnbus.curve import CurveKeys, CurveMember, add_curve_keys, load_curve_keys
from dtnbus.errors import LocalError
from dtnbus.messages import max_faulty
from dtnbus.replica import ReplicaConfig
from dtnbus.shaping import LinkProfile, Shaper, links_from_config

MAX_PORT = 65535
PROTOCOL_FIELDS = {f.name for f in dataclasses.fields(ReplicaConfig)} - {"replica_id", "n"}
DURABILITY = ("fsync", "process")
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
    bind: str | None = None  # local address to bind (NAT, cloud): None = pub/router's host

    @property
    def bind_pub(self) -> str:
        """The endpoint the PUB socket binds: `pub` with its host replaced by `bind`."""
        return _rebind(self.pub, self.bind)

    @property
    def bind_router(self) -> str:
        return _rebind(self.router, self.bind)


def _rebind(endpoint: str, bind: str | None) -> str:
    if bind is None or not endpoint.startswith("tcp://"):
        return endpoint
    _host, port = split_host_port(endpoint.removeprefix("tcp://"), endpoint)
    return f"tcp://{bind}:{port}"


def split_host_port(address: str, where: str) -> tuple[str, int]:
    """'host:port' -> (host, port), the port checked to be 1..65535."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise LocalError(f"{where}: {address!r} is not HOST:PORT")
    port = int(port_text)
    if not 1 <= port <= MAX_PORT:
        raise LocalError(f"{where}: port {port} in {address!r} is outside 1..{MAX_PORT}")
    return host, port


@dataclass(frozen=True, slots=True)
class ClientSpec:
    id: str
    public_key: str
    key_file: Path | None
    operator: bool = False


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
    open_admission: bool = False
    durability: str = "fsync"
    curve: CurveKeys | None = None  # CurveZMQ keys when the file says `curve = true`

    @property
    def sqlite_synchronous(self) -> str:
        """fsync: every group commit survives power loss (SQLite FULL). process: it reaches
        the OS before anything is sent, so it survives any crash of the node (NORMAL)."""
        return "FULL" if self.durability == "fsync" else "NORMAL"

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
        """A client by id: genesis ([[clients]]) or created later with `dtnbus client new`
        (a record in clients/ beside this file); None: the first genesis client."""
        known = (*self.clients, *self.local_clients())
        for spec in known:
            if client_id is None or spec.id == client_id:
                return spec
        raise LocalError(f"client {client_id!r} is not in {self.path} nor in "
                         f"{self.path.parent / 'clients'}; known: "
                         f"{', '.join(s.id for s in known)}; create it with: dtnbus client new "
                         f"--dir {self.path.parent} --name {client_id}")

    def local_curve_key(self, client_id: str) -> CurveMember | None:
        """The CurveZMQ key of a client made with `dtnbus client new`, from its record."""
        path = self.path.parent / "clients" / f"{client_id}.toml"
        try:
            table = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError):
            return None
        public, key_file = table.get("curve_public_key"), table.get("curve_key_file")
        if not isinstance(public, str) or not isinstance(key_file, str):
            return None
        return CurveMember(public, self.path.parent / key_file)

    def local_clients(self) -> list[ClientSpec]:
        """Clients created with `dtnbus client new` beside this cluster file (admitted by
        an ordered command, not at genesis: the nodes never read these records)."""
        out = []
        for path in sorted((self.path.parent / "clients").glob("*.toml")):
            try:
                table = tomllib.loads(path.read_text())
                out.append(ClientSpec(table["id"], table["public_key"],
                                      self.path.parent / table["key_file"]))
            except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError) as exc:
                raise LocalError(f"client record {path} is unreadable ({exc}); remove it or "
                                 "create the client again") from None
        return out

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

    def admitted_at_genesis(self) -> dict[str, str]:
        """Client id -> public key text: who may submit before any admission command."""
        return {s.id: s.public_key for s in self.clients}

    def operators(self) -> frozenset[str]:
        return frozenset(s.id for s in self.clients if s.operator)

    def signer(self, key_file: Path | None, who: str, public_key: str | None = None) -> Signer:
        """The signer of `who`, refusing (like ssh) a key file that group or others can
        read, and a key that is not the one the cluster file lists for `who`: peers would
        drop every message it signs as a bad signature."""
        if key_file is None:
            raise LocalError(f"{self.path} has no key_file for {who}; run this where its key is")
        key = read_private_key(key_file)
        check_key_file_mode(key_file)
        if public_key is not None and public_key_text(key.public_key()) != public_key:
            raise LocalError(f"key file {key_file} is not {who}'s key: its public key differs "
                             f"from the one {self.path} lists for {who}; use {who}'s own key "
                             "file or regenerate the cluster file")
        return Signer(key)

    def node_signer(self, node_id: int) -> Signer:
        spec = self.node(node_id)
        return self.signer(spec.key_file, f"node {node_id}", spec.public_key)

    def client_signer(self, client_id: str | None = None) -> Signer:
        spec = self.client(client_id)
        return self.signer(spec.key_file, f"client {spec.id}", spec.public_key)


def check_key_file_mode(path: Path) -> None:
    """A private key readable by group or others is refused (as ssh refuses 0644 keys)."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise LocalError(f"key file {path} is readable by group or others (mode {mode:04o}); "
                         f"run: chmod 600 {path}")


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
    if value.startswith("tcp://"):
        split_host_port(value.removeprefix("tcp://"), where)
    return value


def _metrics(value: str, where: str) -> str:
    if value:
        split_host_port(value, f"{where}: metrics")
    return value


def _bind(value: str | None, where: str) -> str | None:
    if value is not None and (not value or any(c in value for c in "/: ")):
        raise LocalError(f"{where}: bind {value!r} must be a host address such as 0.0.0.0 "
                         "(the ports come from pub and router)")
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
            metrics=_metrics(_optional(table, "metrics", str, where, ""), where),
            public_key=_need(table, "public_key", str, where),
            key_file=base / key_file if key_file else None,
            ledger=base / _need(table, "ledger", str, where),
            bind=_bind(_optional(table, "bind", str, where, None), where),
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
                                  base / key_file if key_file else None,
                                  _optional(table, "operator", bool, where, False)))
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
    admission_table = _table(raw, "admission", str(path))
    unknown = set(admission_table) - {"open"}
    if unknown:
        raise LocalError(f"{path}: [admission] has unknown keys {sorted(unknown)}; known: "
                         "['open']")
    open_admission = _optional(admission_table, "open", bool, f"{path}: [admission]", False)
    storage = _table(raw, "storage", str(path))
    unknown = set(storage) - {"durability"}
    if unknown:
        raise LocalError(f"{path}: [storage] has unknown keys {sorted(unknown)}; known: "
                         "['durability']")
    durability = _optional(storage, "durability", str, f"{path}: [storage]", "fsync")
    if durability not in DURABILITY:
        raise LocalError(f"{path}: [storage] durability must be one of {', '.join(DURABILITY)}"
                         f", got {durability!r}")
    config = ClusterConfig(path, scheme, tuple(nodes), tuple(clients), dict(protocol),
                           dict(shaping), tuple(_tables(raw, "links", str(path))), dict(regions),
                           open_admission, durability)
    for spec in nodes:
        load_public_key_text(spec.public_key)
    node_keys = {spec.public_key: spec.id for spec in nodes}
    for spec in clients:
        load_public_key_text(spec.public_key)
        if spec.public_key in node_keys:  # a replica's key must never sign as a client
            raise LocalError(f"{path}: client {spec.id!r} has node {node_keys[spec.public_key]}'s "
                             "public key; give the client a key of its own "
                             f"(dtnbus client new --name {spec.id})")
    if len({spec.id for spec in clients}) != len(clients):
        raise LocalError(f"{path}: a client id appears twice in [[clients]]; ids are unique")
    config.replica_config(0)  # validates [protocol]
    config.shaper(0)  # validates [shaping], [regions] and [[links]]
    return dataclasses.replace(config, curve=load_curve_keys(raw, path))


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


def check_port_range(base_port: int, count: int, flag: str = "--base-port") -> None:
    """`count` consecutive ports from `base_port` must all be valid TCP ports."""
    last = base_port + count - 1
    if base_port < 1 or last > MAX_PORT:
        raise LocalError(f"{flag} {base_port} needs ports {base_port}..{last}, past "
                         f"{MAX_PORT}; use {flag} {max(1, MAX_PORT - count + 1)} or lower")


def existing_cluster_files(out: Path) -> list[str]:
    """What in `out` a new cluster would overwrite: key files, ledgers, the cluster file."""
    found = []
    keys = sorted((out / "keys").glob("*.key")) if (out / "keys").is_dir() else []
    if keys:
        found.append(f"{len(keys)} key file(s) in {out / 'keys'}")
    ledgers = sorted((out / "ledgers").glob("*.sqlite")) if (out / "ledgers").is_dir() else []
    if ledgers:
        found.append(f"{len(ledgers)} ledger(s) in {out / 'ledgers'}")
    if (out / "cluster.toml").exists():
        found.append(str(out / "cluster.toml"))
    return found


def ensure_directory(out: Path, what: str = "--out") -> None:
    """Create `out` (and parents) or say in one line why it cannot be."""
    if out.exists() and not out.is_dir():
        raise LocalError(f"{what} {out} is a file, not a directory; give a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".dtnbus-write-test"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise LocalError(f"cannot write to {what} {out}: {exc.strerror or exc}; "
                         "choose a directory you can write to") from None


def generate_cluster(out: Path, nodes: int, scheme: str = "ed25519", host: str = "127.0.0.1",
                     base_port: int | None = None, hosts: list[str] | None = None,
                     protocol: dict[str, Any] | None = None,
                     shaping: dict[str, Any] | None = None,
                     links: list[dict[str, Any]] | None = None,
                     regions: dict[str, list[int]] | None = None,
                     bind: str | None = None, metrics_host: str = "127.0.0.1",
                     fresh: bool = False, clients: int = 0,
                     durability: str = "fsync", curve: bool = False) -> Path:
    """Create keys (mode 0600) for N nodes, the operator client "client" and `clients` more
    ("client-1", ...), and write `out/cluster.toml`. With `curve`, each also gets a CURVE
    key pair and the file says `curve = true` (curve.py).

    `hosts` gives each node its own address (one machine or network namespace each);
    they then all use the same ports, `base_port` (default 7000) onwards. `bind` is the
    local address every node binds (e.g. 0.0.0.0 behind NAT); `/metrics` listens on
    `metrics_host` (loopback unless asked). Existing keys, ledgers or cluster file in
    `out` are never overwritten unless `fresh`."""
    check_scheme(scheme)
    if nodes < 1:
        raise LocalError(f"--nodes must be at least 1 (4 or more to tolerate a fault), got {nodes}")
    if hosts is not None and len(hosts) != nodes:
        raise LocalError(f"--hosts lists {len(hosts)} addresses for {nodes} nodes; give one each")
    if base_port is not None:
        check_port_range(base_port, 3 if hosts is not None else 3 * nodes)
    _bind(bind, "--bind")
    ensure_directory(out)
    existing = existing_cluster_files(out)
    if existing and not fresh:
        raise LocalError(f"{out} already holds a cluster ({', '.join(existing)}); refusing to "
                         "overwrite it: choose another directory, or add --fresh to discard it")
    if fresh:
        for old in [*(out / "keys").glob("*.key"), *(out / "ledgers").glob("node-*.sqlite*")]:
            old.unlink()
    if hosts is not None:
        first = base_port or 7000
        ports = [first, first + 1, first + 2] * nodes
    else:
        ports = (list(range(base_port, base_port + 3 * nodes)) if base_port
                 else free_ports(3 * nodes, host))
    node_tables = []
    try:
        for i in range(nodes):
            key = generate_key(scheme)
            write_private_key(out / "keys" / f"node-{i}.key", key)
            p_pub, p_router, p_metrics = ports[3 * i: 3 * i + 3]
            address = hosts[i] if hosts is not None else host
            table: dict[str, Any] = {
                "id": i,
                "pub": f"tcp://{address}:{p_pub}",
                "router": f"tcp://{address}:{p_router}",
                "metrics": f"{metrics_host}:{p_metrics}",
                "public_key": public_key_text(key.public_key()),
                "key_file": f"keys/node-{i}.key",
                "ledger": f"ledgers/node-{i}.sqlite",
            }
            if bind is not None:
                table["bind"] = bind
            node_tables.append(table)
        client_key = generate_key(scheme)
        assert scheme_of(client_key) == scheme
        write_private_key(out / "keys" / "client.key", client_key)
        doc: dict[str, Any] = {"scheme": scheme}
        if protocol:
            doc["protocol"] = protocol
        if shaping:
            doc["shaping"] = shaping
        if durability != "fsync":
            doc["storage"] = {"durability": durability}
        doc["nodes"] = node_tables
        doc["clients"] = [{"id": "client",
                           "public_key": public_key_text(client_key.public_key()),
                           "key_file": "keys/client.key", "operator": True}]
        for k in range(1, clients + 1):  # one key per client program, admitted at genesis
            key = generate_key(scheme)
            write_private_key(out / "keys" / f"client-{k}.key", key)
            doc["clients"].append({"id": f"client-{k}",
                                   "public_key": public_key_text(key.public_key()),
                                   "key_file": f"keys/client-{k}.key"})
        if regions:
            doc["regions"] = regions
        if links:
            doc["links"] = links
        if curve:
            add_curve_keys(out, doc)
        path = out / "cluster.toml"
        write_text_atomic(path, tomli_w.dumps(doc))
    except OSError as exc:
        raise LocalError(f"cannot write the cluster into {out}: {exc.strerror or exc}") from None
    return path


def write_text_atomic(path: Path, text: str) -> None:
    """Readers (a starting node, Prometheus) never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
