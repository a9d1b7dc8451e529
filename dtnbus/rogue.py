"""A member gone bad, in a process of our own: for flood and fuzz runs against real nodes.

`RogueMember` holds one member's real key and takes that member's place on the network:
it binds the member's PUB and ROUTER endpoints (the honest nodes' SUB and DEALER sockets
are connected to them and reconnect on their own) and connects a DEALER to every honest
node's ROUTER under the member's replica identity. Whatever it sends is therefore exactly
what a Byzantine replica could send: well-signed frames of any kind and content, and
any bytes at all. The member's own node process must not be running.

`flood_frames` builds the floods of issue 9 (N signed frames of one kind, each of the
costly shapes a Byzantine member can choose). Sending goes over the DEALERs (reliable,
ordered, back-pressured: nothing is lost between us and the node, so every frame sent is
a frame the node had to deal with) or the PUB (the path broadcasts take).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import threading
import time
from collections.abc import Iterable

import zmq

from dtnbus.config import ClusterConfig
from dtnbus.errors import PeerError
from dtnbus.messages import (
    Checkpoint,
    Commit,
    Fetch,
    Hello,
    Message,
    NewView,
    PeerStatus,
    Prepare,
    PrePrepare,
    Reply,
    StateReply,
    StateRequest,
    Status,
    StatusQuery,
    Suspect,
    ViewChange,
)
from dtnbus.transport import REPLICA_IDENTITY
from dtnbus.wire import Codec

BIG = 2**62  # far beyond anything real, within the wire's integer range
PUB_SEND_TIMEOUT_MS = 30_000  # a broadcast waits this long for a subscriber with no room


class RogueMember:
    """Member `node_id` of `config`, played by this process (see the module docstring)."""

    def __init__(self, config: ClusterConfig, node_id: int, sndhwm: int = 10_000,
                 rcvhwm: int = 16) -> None:
        spec = config.node(node_id)
        self.config = config
        self.id = node_id
        self.codec = Codec(config.signer(spec.key_file, f"node {node_id}", spec.public_key),
                           config.replica_verifiers(), config.client_verifiers())
        # the cluster's client key too, for one thing only: a StatusQuery sent behind a
        # flood on the same connection is answered once the node has read the whole flood
        self.client_codec = Codec(config.client_signer(), config.replica_verifiers(),
                                  config.client_verifiers())
        self.client_id = config.client().id
        self._nonce = 0
        self.ctx = zmq.Context()
        # An XPUB that never drops: a PUB silently discards what a slow subscriber's queue
        # cannot take, and a flood or fuzz run must know that each frame it counts as sent
        # reached every honest node (fuzz-1: ~40 frames "unaccounted" at the slowest node
        # were the PUB's). A send waits for room; SNDTIMEO bounds the wait on a dead node.
        self.pub = self._socket(zmq.XPUB, sndhwm)
        self.pub.setsockopt(zmq.XPUB_NODROP, 1)
        self.pub.setsockopt(zmq.SNDTIMEO, PUB_SEND_TIMEOUT_MS)
        self.pub.bind(spec.bind_pub)
        # the peers' connections to us, and whatever they send: a small receive queue, so
        # what we do not read stays queued at the honest nodes (the cost we measure), and
        # never piles up in this process
        self.router = self._socket(zmq.ROUTER, sndhwm, rcvhwm)
        self.router.bind(spec.bind_router)
        self.dealers: dict[int, zmq.Socket] = {}
        for peer in config.nodes:
            if peer.id == node_id:
                continue
            dealer = self._socket(zmq.DEALER, sndhwm)
            dealer.setsockopt(zmq.IDENTITY, REPLICA_IDENTITY + str(node_id).encode())
            dealer.connect(peer.router)
            self.dealers[peer.id] = dealer

    def _socket(self, kind: int, hwm: int, rcvhwm: int | None = None) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm if rcvhwm is None else rcvhwm)
        sock.setsockopt(zmq.RCVBUF, 256 * 1024)  # bound the kernel's share as well
        return sock

    def sign(self, msg: Message) -> bytes:
        return self.codec.encode(msg)

    def sign_payload(self, payload: bytes) -> bytes:
        """Our signature over any payload bytes (a Byzantine member signs what it likes)."""
        return self.codec.signer.sign(hashlib.sha256(payload).digest())

    def quiet(self, timeout: float = 10.0) -> bool:
        """Say we have heard everyone, until the honest nodes stop publishing Hello for us
        (none heard for half a second): from then on they send each other nothing but
        protocol traffic. True if they fell quiet within `timeout`."""
        sub = self._socket(zmq.SUB, 10_000)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        for peer in self.config.nodes:
            if peer.id != self.id:
                sub.connect(peer.pub)
        quiet_since = time.monotonic()
        deadline = quiet_since + timeout
        try:
            while time.monotonic() < deadline:
                self.pub.send(self.sign(Hello(self.id, self.config.n - 1)))
                if sub.poll(100):
                    while True:
                        try:
                            frame = sub.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        with contextlib.suppress(PeerError):
                            if isinstance(self.codec.parse(frame).msg, Hello):
                                quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= 0.5:
                    return True
        finally:
            sub.close(linger=0)
        return False

    def send(self, frames: Iterable[bytes], to: Iterable[int] | None = None,
             read: bool = True, stop: threading.Event | None = None,
             rate: float | None = None) -> int:
        """Send every frame to each honest node in `to` (default all) over the DEALERs,
        blocking when a node's queue is full (so none is lost), at most `rate` frames per
        second if given; with `read`, also read (and drop) what the nodes send us
        meanwhile; stop early once `stop` is set. Returns frames sent."""
        targets = [self.dealers[p] for p in (to if to is not None else self.dealers)]
        sent = 0
        start = time.monotonic()
        for frame in frames:
            if stop is not None and (rate is not None or sent % 64 == 0) and stop.is_set():
                break
            if rate is not None:
                due = start + sent / rate
                if stop is not None:
                    stop.wait(max(0.0, due - time.monotonic()))  # the pace itself
                else:
                    time.sleep(max(0.0, due - time.monotonic()))  # the pace itself
            for dealer in targets:
                dealer.send(frame, copy=len(frame) < 65536)
            sent += 1
            if read and sent % 256 == 0:
                self.discard_incoming()
        return sent

    def publish(self, frames: Iterable[bytes]) -> int:
        sent = 0
        for frame in frames:
            self.pub.send(frame, copy=len(frame) < 65536)
            sent += 1
        return sent

    def discard_incoming(self, dealers: bool = True) -> None:
        """Read and drop what the honest nodes sent us (their StateRequests, Fetches,
        replies to our StateRequests...), so no queue of ours grows."""
        for sock in (self.router, *(self.dealers.values() if dealers else ())):
            while True:
                try:
                    sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break

    def sync(self, timeout: float = 60.0, to: Iterable[int] | None = None,
             read: bool = True) -> dict[int, Status]:
        """Wait until each honest node (in `to`) has read everything we sent it: a
        StatusQuery queued behind it on the same connection is answered only then (a node
        handles one connection's frames in order). Returns the Status answers (a node
        missing from them did not answer within `timeout`). Without `read`, what the nodes
        sent to our ROUTER stays unread."""
        self._nonce += 1
        nonce = self._nonce
        query = self.client_codec.encode(StatusQuery(self.client_id, nonce))
        peers = list(to if to is not None else self.dealers)
        for peer in peers:
            self.dealers[peer].send(query)
        answers: dict[int, Status] = {}
        deadline = time.monotonic() + timeout
        while len(answers) < len(peers) and time.monotonic() < deadline:
            for peer in peers:
                if peer in answers:
                    continue
                dealer = self.dealers[peer]
                while dealer.poll(0):
                    frame = dealer.recv()
                    try:
                        msg = self.codec.decode(frame).msg
                    except PeerError:
                        continue
                    if isinstance(msg, Status) and msg.nonce == nonce:
                        answers[peer] = msg
            if read:
                self.discard_incoming(dealers=False)
            time.sleep(0.005)  # another process's queue: nothing to block on across three
        return answers

    def announce(self, timeout: float = 10.0) -> bool:
        """Publish Hello until every honest node has answered with a Hello of its own
        (which a node sends sooner when a peer says it has not heard everyone): then our
        PUB is connected to their SUBs. True when all answered within `timeout`."""
        sub = self._socket(zmq.SUB, 10_000)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        for peer in self.config.nodes:
            if peer.id != self.id:
                sub.connect(peer.pub)
        heard: set[int] = set()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and len(heard) < len(self.dealers):
                self.pub.send(self.sign(Hello(self.id, 0)))
                if sub.poll(50):
                    while True:
                        try:
                            frame = sub.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        try:
                            msg = self.codec.decode(frame).msg
                        except PeerError:
                            continue
                        if isinstance(msg, Hello):
                            heard.add(msg.replica)
        finally:
            sub.close(linger=0)
        return len(heard) >= len(self.dealers)

    def close(self) -> None:
        for sock in (self.pub, self.router, *self.dealers.values()):
            sock.close(linger=0)
        self.ctx.term()

    def __enter__(self) -> RogueMember:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------ floods

FLOOD_KINDS = ("view_change", "state_request", "fetch", "suspect", "peer_status",
               "checkpoint", "prepare", "commit", "preprepare", "new_view", "state_reply",
               "hello", "reply")


def flood_frames(rogue: RogueMember, kind: str, count: int, view: int = 0,
                 digests: list[bytes] | None = None, seed: int = 0) -> list[bytes]:
    """`count` signed frames of one kind from the rogue member, each a shape a Byzantine
    replica may choose to make the honest ones work: ever-higher views and sequences,
    requests for everything, lies about its state, votes for batches nobody ordered.
    `view` is the cluster's current view; `digests` real request digests (Fetch asks
    for bodies the nodes still hold)."""
    rng = random.Random(seed)
    me = rogue.id
    n = rogue.config.n
    cfg = rogue.config.replica_config(me)
    bodies = digests or [os.urandom(32)]

    def digest() -> bytes:
        return rng.randbytes(32)

    def make(i: int) -> Message:
        if kind == "view_change":  # one per view, ever higher: never a duplicate
            return ViewChange(view + 1 + i, me, 0, ())
        if kind == "state_request":  # the whole ledger, again and again
            return StateRequest(me, 1)
        if kind == "fetch":  # as many bodies as a Fetch may ask for
            return Fetch(me, tuple(bodies[(i + k) % len(bodies)]
                                   for k in range(min(len(bodies), cfg.batch_max_requests))))
        if kind == "suspect":
            return Suspect(me, view)
        if kind == "peer_status":  # claims to be far ahead, in a far view
            return PeerStatus(me, view + 1 + i, True, BIG - i, BIG - i)
        if kind == "checkpoint":  # checkpoints far beyond every window, ever higher
            return Checkpoint(me, (i + 1) * cfg.checkpoint_interval * 1000, digest())
        if kind in ("prepare", "commit"):  # votes for batches nobody ordered, in the window
            cls = Prepare if kind == "prepare" else Commit
            return cls(view, 1 + rng.randrange(BIG // 2), me, digest())
        if kind == "preprepare":  # orders as if it were primary, the most digests allowed
            return PrePrepare(view, 1 + i, me, tuple(digest() for _ in
                                                     range(cfg.batch_max_requests)))
        if kind == "new_view":  # a NEW-VIEW with no proof, for views it would lead
            return NewView(me + n * (i + 1), me, ())
        if kind == "state_reply":  # blocks nobody asked for
            return StateReply(me, 1, BIG, (), (), ())
        if kind == "hello":  # "I have heard nobody": makes peers say hello sooner
            return Hello(me, 0)
        if kind == "reply":  # what only clients receive
            return Reply(view, me, "client", 1, 1 + i, digest(), 1, 0, b"")
        if kind == "status":
            return Status(me, i, view, 0, b"", 0, True, 0, 0, ())
        raise ValueError(f"unknown flood kind {kind!r}; one of {', '.join(FLOOD_KINDS)}")

    return [rogue.sign(make(i)) for i in range(count)]
