"""ZeroMQ sockets of one node: PUB/SUB for broadcast, DEALER/ROUTER point to point.

Each node binds a PUB (its broadcasts) and a ROUTER (requests from clients, direct
messages from replicas) and connects a SUB to every peer's PUB and a DEALER to every
peer's ROUTER. High-water marks and a maximum message size bound memory: a slow or
dead peer costs at most HWM queued frames, and a frame larger than the cap is
refused by libzmq before it is buffered. The receive side is bounded much tighter
(RECV_HWM frames per connection): a peer that sends faster than this node reads stops
being read (TCP pushes back on it) instead of filling our memory, and the limit bounds
it per connection, so one flooding member never holds up another's frames. Sends
never block: a full queue is a drop.
The socket loop is synchronous (poll, then drain with NOBLOCK): per machine-limits.md
that is about 4x cheaper per message than an await per message.

With CURVE (`curve`, see curve.py) the PUB and ROUTER are CURVE servers vetted by the
ZAP handler (zap.py), every SUB and DEALER connection names its server's key, and each
ROUTER frame comes with its connection's member (the ZAP user id). The member, not a
self-chosen routing identity, then says whether a frame came from a replica
(FROM_REPLICA): our DEALERs set no identity, and a client connection that claims a
replica's identity, or takes over another member's, is refused.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import zmq

from dtnbus.curve import DOMAIN_MEMBERS, DOMAIN_REPLICAS, NODE_PREFIX, CurveEnd, connect_to, serve
from dtnbus.wire import bundle, unbundle
from dtnbus.zap import ZapGuard

FROM_SUB, FROM_ROUTER, FROM_REPLICA = 0, 1, 2  # FROM_REPLICA: a CURVE-authenticated replica
MAX_PINNED_IDENTITIES = 200_000  # routing identity -> the member that first used it
REPLICA_IDENTITY = b"\xffreplica-"  # replicas' DEALERs: never a route for client replies
DRAIN_LIMIT = 512  # messages taken from one socket per poll, so no socket starves another
# (a client may bundle several frames as the parts of one message: each is one frame)
# Messages queued per incoming connection before libzmq stops reading it, at least. A
# correct peer has a few per slot in flight (the node passes 4 x its window) and a client
# its pipeline; a flood of 33 kB PRE-PREPAREs from a member on a busy machine queued
# +132 MiB at 100,000 frames.
RECV_HWM = 1_000


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
                 max_frame: int = 64 * 1024 * 1024, curve: CurveEnd | None = None,
                 on_refusal: Callable[[str], None] | None = None,
                 recv_hwm: int = RECV_HWM) -> None:
        self.ctx = zmq.Context()
        self.waited = 0.0  # seconds spent blocked in poll: what the loop had to spare
        self.hwm = hwm
        self.recv_hwm = min(hwm, max(RECV_HWM, recv_hwm))
        self.curve = curve
        self.guard: ZapGuard | None = None
        self._pinned: OrderedDict[bytes, str] = OrderedDict()
        self.pub = self._socket(zmq.PUB)
        self.router = self._socket(zmq.ROUTER)
        self.router.setsockopt(zmq.MAXMSGSIZE, max_frame + 4096)
        self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting peer takes over
        if curve is not None:
            self._start_guard(curve, on_refusal)
        self.pub.bind(me.pub)
        self.router.bind(me.router)
        self.sub = self._socket(zmq.SUB)
        self.sub.setsockopt(zmq.MAXMSGSIZE, max_frame + 4096)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.dealers: dict[int, zmq.Socket] = {}
        for peer, ends in peers.items():
            dealer = self._socket(zmq.DEALER)
            if curve is None:
                self.sub.connect(ends.pub)
                dealer.setsockopt(zmq.IDENTITY, REPLICA_IDENTITY + str(me.node_id).encode())
                dealer.connect(ends.router)
            else:  # the ROUTER picks an unforgeable identity; the key says who we are
                connect_to(self.sub, curve, peer, ends.pub)
                connect_to(dealer, curve, peer, ends.router)
            self.dealers[peer] = dealer
        self.poller = zmq.Poller()
        self.poller.register(self.sub, zmq.POLLIN)
        self.poller.register(self.router, zmq.POLLIN)

    def _start_guard(self, curve: CurveEnd, on_refusal: Callable[[str], None] | None) -> None:
        """The ZAP handler and the monitors are up before anything is bound."""
        serve(self.pub, curve, DOMAIN_REPLICAS)
        serve(self.router, curve, DOMAIN_MEMBERS)
        self.guard = ZapGuard(self.ctx, curve, on_refusal)
        self.guard.watch(self.pub, "PUB")
        self.guard.watch(self.router, "ROUTER")
        try:
            self.guard.start()
        except RuntimeError:
            self.pub.close(linger=0)
            self.router.close(linger=0)
            self.ctx.term()
            raise

    def refuse(self, reason: str, detail: str) -> None:
        """Count and log (rate-limited) a frame the CURVE layer will not deliver."""
        if self.guard is not None:
            self.guard.refused(reason, detail)

    def _socket(self, kind: int) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, self.hwm)
        sock.setsockopt(zmq.RCVHWM, self.recv_hwm)
        return sock

    def publish(self, frame: bytes) -> bool:
        return _send(self.pub, [frame])

    def send_to(self, peer: int, frame: bytes) -> bool:
        dealer = self.dealers.get(peer)
        return dealer is not None and _send(dealer, [frame])

    def send_routed(self, identity: bytes, frame: bytes) -> bool:
        return _send(self.router, [identity, frame])

    def send_routed_many(self, identity: bytes, frames: list[bytes]) -> bool:
        """Several frames to one connection as one bundle (all or none; `wire.bundle`)."""
        return _send(self.router, [identity, frames[0] if len(frames) == 1 else bundle(frames)])

    def poll(self, timeout_ms: int) -> Iterable[tuple[int, bytes | None, bytes, str | None]]:
        """Wait up to timeout_ms, then yield what arrived: (source, routing id, frame,
        member). `member` is the connection's CURVE member for a ROUTER frame (None on
        the SUB, whose servers are all replicas, and without CURVE)."""
        started = time.monotonic()
        ready = dict(self.poller.poll(timeout_ms))
        self.waited += time.monotonic() - started
        if self.sub in ready:
            for _ in range(DRAIN_LIMIT):
                try:
                    yield FROM_SUB, None, self.sub.recv(zmq.NOBLOCK, copy=True), None
                except zmq.Again:
                    break
        if self.router in ready:
            if self.curve is not None:
                yield from self._drain_router_curve()
                return
            for _ in range(DRAIN_LIMIT):
                try:
                    parts = self.router.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                identity = parts[0]
                if len(parts) < 2:  # nothing after the identity: the decoder drops it
                    yield FROM_ROUTER, identity, b"", None
                for part in parts[1:]:  # each part a frame or a client's bundle of frames
                    for frame in unbundle(part):
                        yield FROM_ROUTER, identity, frame, None

    def _drain_router_curve(self) -> Iterable[tuple[int, bytes | None, bytes, str | None]]:
        for _ in range(DRAIN_LIMIT):
            try:
                parts = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            member = parts[0].get("User-Id")  # what the ZAP handler answered for its key
            identity = parts[0].bytes
            why = self._identity_refusal(identity, member)
            if why is not None:
                self.refuse("identity_mismatch", why)
                continue
            source = FROM_REPLICA if member.startswith(NODE_PREFIX) else FROM_ROUTER
            if len(parts) < 2:
                yield source, identity, b"", member
            for part in parts[1:]:  # each part a frame or a bundle of frames
                for frame in unbundle(part.bytes):
                    yield source, identity, frame, member

    def _identity_refusal(self, identity: bytes, member: str) -> str | None:
        """A routing identity belongs to the first member seen with it: with
        ROUTER_HANDOVER another connection could otherwise take over its replies."""
        if not member:
            return "a frame without a CURVE user id"
        if from_replica(identity):
            return f"{member} claims a replica's routing identity {identity!r}"
        owner = self._pinned.setdefault(identity, member)
        if owner != member:
            return f"{member} took over the routing identity of {owner}"
        if len(self._pinned) > MAX_PINNED_IDENTITIES:
            self._pinned.popitem(last=False)
        return None

    def close(self) -> None:
        if self.guard is not None:
            self.guard.stop()
            for sock in (self.pub, self.router):
                with contextlib.suppress(zmq.ZMQError):
                    sock.disable_monitor()
        for sock in (self.pub, self.router, self.sub, *self.dealers.values()):
            sock.close(linger=0)
        self.ctx.term()


def waiting_frames(sock: zmq.Socket) -> Iterator[bytes]:
    """Every frame waiting on a client's socket now, bundles opened (`wire.bundle`): what
    a node sends a client connection in one loop comes as one bundle."""
    while True:
        try:
            part = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return
        yield from unbundle(part)


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
