"""ZeroMQ sockets of one node: PUB/SUB for broadcast, DEALER/ROUTER point to point.

Each node binds a PUB (its broadcasts) and a ROUTER (requests from clients, direct
messages from replicas) and connects a SUB to every peer's PUB and a DEALER to every
peer's ROUTER. High-water marks and a maximum message size bound memory: a slow or
dead peer costs at most HWM queued frames, and a frame larger than the cap is
refused by libzmq before it is buffered. Sends never block: a full queue is a drop.
The socket loop is synchronous (poll, then drain with NOBLOCK): per machine-limits.md
that is about 4x cheaper per message than an await per message.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import zmq

FROM_SUB, FROM_ROUTER = 0, 1
REPLICA_IDENTITY = b"\xffreplica-"  # replicas' DEALERs: never a route for client replies
DRAIN_LIMIT = 512  # frames taken from one socket per poll, so no socket starves another


@dataclass(frozen=True, slots=True)
class Endpoints:
    pub: str
    router: str
    node_id: int = -1


def from_replica(identity: bytes | None) -> bool:
    """Did a ROUTER frame come over a replica's DEALER (not a client's connection)?"""
    return bool(identity) and identity.startswith(REPLICA_IDENTITY)  # type: ignore[union-attr]


class Transport:
    def __init__(self, me: Endpoints, peers: dict[int, Endpoints], hwm: int = 100_000,
                 max_frame: int = 64 * 1024 * 1024) -> None:
        self.ctx = zmq.Context()
        self.hwm = hwm
        self.pub = self._socket(zmq.PUB)
        self.pub.bind(me.pub)
        self.router = self._socket(zmq.ROUTER)
        self.router.setsockopt(zmq.MAXMSGSIZE, max_frame + 4096)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting peer takes over
        self.router.bind(me.router)
        self.sub = self._socket(zmq.SUB)
        self.sub.setsockopt(zmq.MAXMSGSIZE, max_frame + 4096)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.dealers: dict[int, zmq.Socket] = {}
        for peer, ends in peers.items():
            self.sub.connect(ends.pub)
            dealer = self._socket(zmq.DEALER)
            dealer.setsockopt(zmq.IDENTITY, REPLICA_IDENTITY + str(me.node_id).encode())
            dealer.connect(ends.router)
            self.dealers[peer] = dealer
        self.poller = zmq.Poller()
        self.poller.register(self.sub, zmq.POLLIN)
        self.poller.register(self.router, zmq.POLLIN)

    def _socket(self, kind: int) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, self.hwm)
        sock.setsockopt(zmq.RCVHWM, self.hwm)
        return sock

    def publish(self, frame: bytes) -> bool:
        return _send(self.pub, [frame])

    def send_to(self, peer: int, frame: bytes) -> bool:
        dealer = self.dealers.get(peer)
        return dealer is not None and _send(dealer, [frame])

    def send_routed(self, identity: bytes, frame: bytes) -> bool:
        return _send(self.router, [identity, frame])

    def poll(self, timeout_ms: int) -> Iterable[tuple[int, bytes | None, bytes]]:
        """Wait up to timeout_ms, then yield what arrived: (source, routing id, frame)."""
        ready = dict(self.poller.poll(timeout_ms))
        if self.sub in ready:
            for _ in range(DRAIN_LIMIT):
                try:
                    yield FROM_SUB, None, self.sub.recv(zmq.NOBLOCK, copy=True)
                except zmq.Again:
                    break
        if self.router in ready:
            for _ in range(DRAIN_LIMIT):
                try:
                    parts = self.router.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if len(parts) == 2:
                    yield FROM_ROUTER, parts[0], parts[1]
                else:
                    yield FROM_ROUTER, parts[0], b""  # a malformed multipart: decoder drops it

    def close(self) -> None:
        for sock in (self.pub, self.router, self.sub, *self.dealers.values()):
            sock.close(linger=0)
        self.ctx.term()


def _send(sock: zmq.Socket, parts: list[bytes]) -> bool:
    try:
        sock.send_multipart(parts, zmq.NOBLOCK, copy=len(parts[-1]) < 65536)
    except zmq.Again:
        return False
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EHOSTUNREACH:
            return False
        raise
    return True
