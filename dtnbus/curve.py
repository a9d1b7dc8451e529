"""CurveZMQ keys and socket roles: who may open a connection to a node, and who it is.

With `curve = true` in the cluster file every ZeroMQ connection of the bus is encrypted
and both ends are authenticated (CurveZMQ, RFC 26). Each node and each admitted client
has a CURVE key pair beside its signing key; the public halves are in the cluster file
(z85 text, 40 characters), the secret halves in key files (mode 0600, git-ignored).

Roles: a node's PUB and ROUTER are CURVE servers; every SUB and DEALER (a node's, a
client's) is a CURVE client that knows its server's public key, so it never talks to an
impostor. Who may connect is decided by the node's ZAP handler (zap.py) against the keys
in this file: the PUB (domain `dtnbus-replicas`) admits node keys only, so no client can
subscribe to the replicas' votes; the ROUTER (domain `dtnbus-members`) admits node and
client keys. The ZAP user id names the member (`node:3`, `client:alice`): libzmq stamps
it on every frame, and the transport and node bind each connection to it
(`binding_refusal`): a client's connection can never pass for a replica's.

CURVE keys are separate from the signing keys on purpose: the transport key is used by
libzmq on every frame, the signing key proves protocol statements to third parties, and
losing one must not give away the other.
"""

from __future__ import annotations

import contextlib
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from zmq.utils import z85

from dtnbus.crypto import write_secret_file
from dtnbus.errors import LocalError
from dtnbus.messages import CLIENT_KINDS, Message, StatusQuery, sender_of

DOMAIN_REPLICAS = "dtnbus-replicas"  # a node's PUB: only replicas may subscribe
DOMAIN_MEMBERS = "dtnbus-members"  # a node's ROUTER: replicas and admitted clients
NODE_PREFIX, CLIENT_PREFIX = "node:", "client:"
Z85_KEY_CHARS = 40  # a 32-byte key in z85


def node_member(node_id: int) -> str:
    """The ZAP user id of a node's connections."""
    return f"{NODE_PREFIX}{node_id}"


def client_member(client_id: str) -> str:
    """The ZAP user id of a client's connections."""
    return f"{CLIENT_PREFIX}{client_id}"


@dataclass(frozen=True, slots=True)
class CurveMember:
    public_key: str  # z85
    key_file: Path | None  # the secret half, where this machine holds it


@dataclass(frozen=True, slots=True)
class CurveEnd:
    """What one process needs to open its sockets under CURVE."""

    member: str
    public_key: bytes  # z85
    secret_key: bytes = field(repr=False)  # z85; never printed
    servers: dict[int, bytes]  # node id -> its public key: whom our DEALERs/SUB may reach
    admitted: dict[bytes, str]  # public key -> member: whom our ROUTER/PUB let in


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """The cluster file's CURVE section: every node's key, and each admitted client's."""

    path: Path
    nodes: dict[int, CurveMember]
    clients: dict[str, CurveMember]

    def admitted(self) -> dict[bytes, str]:
        keys = {m.public_key.encode(): node_member(i) for i, m in self.nodes.items()}
        keys.update({m.public_key.encode(): client_member(c) for c, m in self.clients.items()})
        return keys

    def node_end(self, node_id: int) -> CurveEnd:
        return self._end(node_member(node_id), self.nodes.get(node_id), f"node {node_id}",
                         self.admitted())

    def client_end(self, client_id: str, local: CurveMember | None = None) -> CurveEnd:
        """A client's end; `local`: its key from a `dtnbus client new` record, when the
        cluster file (genesis) does not list it."""
        return self._end(client_member(client_id), self.clients.get(client_id) or local,
                         f"client {client_id!r}", {})

    def _end(self, member: str, spec: CurveMember | None, who: str,
             admitted: dict[bytes, str]) -> CurveEnd:
        if spec is None:
            raise LocalError(f"{self.path} has curve = true but no curve_public_key for "
                             f"{who}; add one with 'dtnbus keygen --curve'")
        if spec.key_file is None:
            raise LocalError(f"{self.path} has no curve_key_file for {who}; "
                             "run this where its CURVE key is")
        secret = read_curve_secret(spec.key_file, spec.public_key)
        servers = {i: m.public_key.encode() for i, m in self.nodes.items()}
        return CurveEnd(member, spec.public_key.encode(), secret, servers, admitted)


# ---------------------------------------------------------------- key files


def new_curve_key_file(path: Path) -> str:
    """Create a CURVE key pair, write the secret half (0600), return the public half."""
    public, secret = zmq.curve_keypair()
    write_secret_file(path, secret + b"\n")
    return public.decode("ascii")


def read_curve_secret(path: Path, public_key: str) -> bytes:
    """The z85 secret key in `path`, checked against the public key the cluster file lists."""
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise LocalError(f"cannot read CURVE key file {path}: {exc.strerror}") from None
    if not _is_z85_key(secret):
        raise LocalError(f"CURVE key file {path} does not hold a z85 secret key "
                         f"({Z85_KEY_CHARS} characters); recreate it with 'dtnbus keygen --curve'")
    if zmq.curve_public(secret) != public_key.encode():
        raise LocalError(f"CURVE key file {path} does not match its curve_public_key in the "
                         "cluster file; the file or the key is from another cluster")
    return secret


def _is_z85_key(text: bytes) -> bool:
    if len(text) != Z85_KEY_CHARS:
        return False
    try:
        return len(z85.decode(text)) == 32
    except (ValueError, KeyError, TypeError, struct.error):
        return False


def add_curve_keys(out: Path, doc: dict[str, Any]) -> None:
    """Give every node and client table of a cluster document a CURVE key pair (keygen)."""
    doc["curve"] = True
    for table in doc.get("nodes", []):
        name = f"keys/node-{table['id']}.curve.key"
        table["curve_public_key"] = new_curve_key_file(out / name)
        table["curve_key_file"] = name
    for table in doc.get("clients", []):
        name = f"keys/{table['id']}.curve.key"
        table["curve_public_key"] = new_curve_key_file(out / name)
        table["curve_key_file"] = name


# ---------------------------------------------------------------- the cluster file


def load_curve_keys(raw: dict[str, Any], path: Path) -> CurveKeys | None:
    """Read `curve = true` and the curve keys of [[nodes]] / [[clients]]; None when off.
    Called after the tables themselves were validated. No two members may share a CURVE
    key, so that a connection names exactly one of them."""
    flag = raw.get("curve", False)
    if not isinstance(flag, bool):
        raise LocalError(f"{path}: 'curve' must be true or false, got {flag!r}")
    if not flag:
        return None
    base = path.parent
    nodes: dict[int, CurveMember] = {}
    clients: dict[str, CurveMember] = {}
    owner: dict[str, str] = {}
    for kind, tables in (("nodes", raw.get("nodes", [])), ("clients", raw.get("clients", []))):
        for i, table in enumerate(tables):
            where = f"{path}: {kind}[{i}]"
            public = table.get("curve_public_key")
            if public is None and kind == "clients":
                continue  # a client without a CURVE key simply cannot connect
            if public is None:
                raise LocalError(f"{where}: curve = true but no curve_public_key; "
                                 "create keys with 'dtnbus keygen --curve'")
            if not isinstance(public, str) or not _is_z85_key(public.encode("ascii", "replace")):
                raise LocalError(f"{where}: curve_public_key is not a z85 CURVE key "
                                 f"({Z85_KEY_CHARS} characters)")
            key_file = table.get("curve_key_file")
            if key_file is not None and not isinstance(key_file, str):
                raise LocalError(f"{where}: 'curve_key_file' must be a path string")
            member = (node_member(table["id"]) if kind == "nodes"
                      else client_member(table["id"]))
            if public in owner:
                raise LocalError(f"{where}: curve_public_key is also {owner[public]}'s; "
                                 "every member needs its own CURVE key")
            owner[public] = member
            spec = CurveMember(public, base / key_file if key_file else None)
            if kind == "nodes":
                nodes[table["id"]] = spec
            else:
                clients[table["id"]] = spec
    return CurveKeys(path, nodes, clients)


# ---------------------------------------------------------------- sockets


def serve(sock: zmq.Socket, end: CurveEnd, domain: str) -> None:
    """Make a binding socket a CURVE server whose peers the ZAP handler vets for `domain`.
    ZAP_ENFORCE_DOMAIN: with no ZAP handler answering, libzmq would otherwise let every
    key in (the 'Stonehouse' legacy); we fail closed instead."""
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, end.secret_key)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, end.public_key)
    sock.setsockopt(zmq.ZAP_DOMAIN, domain.encode())
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


def connect_to(sock: zmq.Socket, end: CurveEnd, node_id: int, endpoint: str) -> None:
    """Connect a SUB or DEALER to one node as a CURVE client. libzmq takes the options
    at connect time, so one SUB can hold connections to many servers, each its own key."""
    server = end.servers.get(node_id)
    if server is None:
        raise LocalError(f"no CURVE public key for node {node_id} in the cluster file")
    sock.setsockopt(zmq.CURVE_SERVERKEY, server)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, end.public_key)
    sock.setsockopt(zmq.CURVE_SECRETKEY, end.secret_key)
    sock.connect(endpoint)


def binding_refusal(member: str, msg: Message) -> str | None:
    """Why a message may not arrive over this member's connection (None: it may).

    A client's connection carries only client messages signed as that client. A node's
    carries replica messages and the client requests it forwards; not only its own
    (it relays the NEW-VIEW that started a view, signed by that view's primary, to a
    peer that missed it), so signatures, not the connection, say who wrote them.
    Signatures say who wrote a message; this says who may deliver it, so an admitted
    client can neither pose as a replica nor relay what it was not meant to hold."""
    sender = sender_of(msg)
    if member.startswith(NODE_PREFIX):
        return "member_mismatch" if isinstance(msg, StatusQuery) else None
    if msg.KIND not in CLIENT_KINDS:
        return "member_mismatch"
    return None if client_member(str(sender)) == member else "member_mismatch"


class HandshakeWatch:
    """A client's view of its CURVE handshakes, from its DEALERs' monitors: which nodes
    refused it, so that a stale key is reported as such rather than as a timeout."""

    EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
              | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)

    def __init__(self, sockets: dict[int, zmq.Socket]) -> None:
        self._monitors = {node: sock.get_monitor_socket(self.EVENTS)
                          for node, sock in sockets.items()}
        self._sockets = sockets
        self.failed: dict[int, str] = {}  # node -> why its last handshake failed

    def refusals(self) -> dict[int, str]:
        from zmq.utils.monitor import parse_monitor_message

        for node, mon in self._monitors.items():
            while True:
                try:
                    event = parse_monitor_message(mon.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
                if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    self.failed.pop(node, None)
                elif event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                    self.failed[node] = "refused our CURVE key"
                else:
                    self.failed[node] = "failed the CURVE handshake"
        return dict(self.failed)

    def summary(self) -> str | None:
        """One sentence for an error message, or None when no node refused us."""
        failed = self.refusals()
        if not failed:
            return None
        nodes = ", ".join(str(n) for n in sorted(failed))
        how = "; ".join(sorted(set(failed.values())))
        return (f"node(s) {nodes} {how}: is this the cluster file the nodes run with, "
                "and does it list this client's curve_public_key?")

    def close(self) -> None:
        for node, mon in self._monitors.items():
            with contextlib.suppress(zmq.ZMQError):
                self._sockets[node].disable_monitor()
            mon.close(linger=0)
