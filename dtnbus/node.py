"""One validator process: the event loop that wires the rings around the replica.

    sockets -> wire (decode, verify) -> replica.step / tick -> effects
    effects -> ledger (durable first) -> wire (encode, sign) -> shaper -> sockets

Single-threaded and synchronous (zmq.Poller): the poll timeout is the earliest of the
replica's next timer, the shaper's next departure and the readiness heartbeat. The
only other thread is prometheus-client's HTTP server. SIGTERM/SIGINT stop the loop;
sockets and the ledger are then closed.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

import zmq

from dtnbus.config import ClusterConfig
from dtnbus.errors import LocalError, PeerError
from dtnbus.messages import (
    Hello,
    Message,
    Reply,
    Request,
    Status,
    StatusQuery,
    kind_name,
)
from dtnbus.metrics import NodeMetrics
from dtnbus.replica import (
    Broadcast,
    CheckpointStable,
    Drop,
    Effect,
    Execute,
    Forward,
    Observe,
    Replica,
    Send,
    SendClient,
    ViewEntered,
)
from dtnbus.storage import Ledger
from dtnbus.transport import FROM_ROUTER, Endpoints, Transport
from dtnbus.wire import Codec

log = logging.getLogger("dtnbus.node")

HELLO_EVERY = 0.1  # per 10 nodes: n Hellos cost n(n-1) verifications per round
HELLO_CHECK = 1.0
MAX_POLL = 0.05  # also bounds how long a stop signal waits


class Node:
    def __init__(self, config: ClusterConfig, node_id: int, serve_metrics: bool = True) -> None:
        spec = config.node(node_id)
        self.config = config
        self.id = node_id
        self.codec = Codec(config.signer(spec.key_file, f"node {node_id}"),
                           config.replica_verifiers(), config.client_verifiers())
        self.replica = Replica(config.replica_config(node_id))
        self.ledger = Ledger(spec.ledger)
        if self.ledger.height:
            raise_if_unrecoverable(self.ledger, node_id)
        self.metrics = NodeMetrics(node_id)
        peers = {s.id: Endpoints(s.pub, s.router) for s in config.nodes if s.id != node_id}
        try:
            if serve_metrics and spec.metrics:
                host, _, port = spec.metrics.rpartition(":")
                self.metrics.serve(host, int(port))
            self.transport = Transport(Endpoints(spec.pub, spec.router), peers)
        except (OSError, ValueError, zmq.ZMQError) as exc:
            self.ledger.close()
            raise LocalError(f"node {node_id}: cannot listen on {spec.pub} / {spec.router} / "
                             f"{spec.metrics}: {exc}; is another node running there?") from None
        self.shaper = config.shaper(node_id)
        self.routes: dict[str, bytes] = {}  # client id -> ROUTER identity of its connection
        self.heard: set[int] = set()
        self.peer_heard: dict[int, int] = {}  # how many peers each peer has heard
        self.hello_every = HELLO_EVERY * max(1.0, config.n / 10)
        self.next_hello = 0.0
        self.stopping = False

    # ------------------------------------------------------------ loop

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        log.info("node %d up: n=%d f=%d", self.id, self.config.n, self.config.f)
        try:
            while not self.stopping:
                self.run_once()
        finally:
            self.close()

    def run_once(self) -> None:
        now = time.monotonic()
        wake = [now + MAX_POLL, self.next_hello]
        replica_wake = self.replica.next_wakeup()
        if replica_wake is not None:
            wake.append(replica_wake)
        if self.shaper is not None:
            due = self.shaper.next_due()
            if due is not None:
                wake.append(due)
        timeout_ms = max(0, int((min(wake) - now) * 1000 + 0.999))
        for source, identity, frame in self.transport.poll(timeout_ms):
            self._on_frame(source, identity, frame)
        now = time.monotonic()
        self._apply(self.replica.tick(now), now)
        if now >= self.next_hello:
            self._hello(now)
        if self.shaper is not None:
            self._release_shaped(now)
        self._update_gauges()

    def _stop(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def close(self) -> None:
        self.transport.close()
        self.ledger.close()
        log.info("node %d stopped at seq %d", self.id, self.replica.last_executed)

    # ------------------------------------------------------------ input

    def _on_frame(self, source: int, identity: bytes | None, frame: bytes) -> None:
        try:
            raw = self.codec.parse(frame)
            if not self.replica.wants(raw.msg):
                self.metrics.message_received(kind_name(raw.msg.KIND), len(frame))
                return  # a vote its slot no longer needs: not worth a signature check
            env = self.codec.authenticate(raw)
        except PeerError as exc:
            self.metrics.dropped(exc.reason)
            log.debug("dropped frame: %s", exc)
            return
        msg = env.msg
        self.metrics.message_received(kind_name(msg.KIND), len(frame))
        now = time.monotonic()
        if isinstance(msg, Request | StatusQuery) and source == FROM_ROUTER and identity:
            self.routes[msg.client] = identity
        if isinstance(msg, Hello):
            self.heard.add(msg.replica)
            self.peer_heard[msg.replica] = msg.heard
            if msg.heard < self.config.n - 1:
                self.next_hello = min(self.next_hello, now + 0.01)  # a (re)joining peer
            return
        if isinstance(msg, StatusQuery):
            self._send_client(msg.client, self._status(msg.nonce), now)
            return
        if isinstance(msg, Reply | Status):
            self.metrics.dropped("unknown_sender")  # only clients receive these
            return
        self._apply(self.replica.step(env, now), now)

    def _status(self, nonce: int) -> Status:
        r = self.replica
        phases = tuple((name, count, total)
                       for name, (count, total) in self.metrics.phase_summary().items())
        return Status(self.id, nonce, r.view, r.last_executed, r.head, r.stable_checkpoint,
                      self.ready, len(r.pending), r.executed_txs, phases)

    @property
    def ready(self) -> bool:
        return len(self.heard) >= self.config.n - 1

    # ------------------------------------------------------------ effects

    def _apply(self, effects: list[Effect], now: float) -> None:
        for eff in effects:
            if isinstance(eff, Broadcast):
                self._broadcast(eff.msg, now)
            elif isinstance(eff, Send):
                self._send_replica(eff.to, self._encode_own(eff.msg, now), now)
            elif isinstance(eff, Forward):
                self._send_replica(eff.to, eff.frame, now)
            elif isinstance(eff, SendClient):
                self._send_client(eff.client, eff.msg, now)
            elif isinstance(eff, Execute):
                self.ledger.append(eff)  # durable before any reply that follows
                txs = sum(r.txs for r in eff.requests)
                self.metrics.executed(1, txs)
                self.metrics.batch_cut(len(eff.digests))
                self.metrics.observe_phase("committed_to_executed",
                                           time.monotonic() - eff.committed_at)
            elif isinstance(eff, Observe):
                self.metrics.observe_phase(eff.phase, max(0.0, eff.seconds))
            elif isinstance(eff, Drop):
                self.metrics.dropped(eff.reason)
            elif isinstance(eff, CheckpointStable):
                self.metrics.checkpoint_stable(eff.seq)
            elif isinstance(eff, ViewEntered):
                self.metrics.view_changed(eff.view)
                log.info("node %d entered view %d (primary %d)", self.id, eff.view,
                         self.replica.primary)

    def _encode(self, msg: Message) -> bytes:
        frame = self.codec.encode(msg)
        self.metrics.message_sent(kind_name(msg.KIND), len(frame))
        return frame

    def _encode_own(self, msg: Message, now: float) -> bytes:
        """Sign a replica message and hand the frame back: it may later prove what we said."""
        frame = self._encode(msg)
        self._apply(self.replica.note_signed(msg, frame, now), now)
        return frame

    def _broadcast(self, msg: Message, now: float) -> None:
        frame = self._encode_own(msg, now)
        if self.shaper is None:
            if not self.transport.publish(frame):
                self.metrics.dropped("send_queue_full")
            return
        for peer in self.transport.dealers:
            self._send_replica(peer, frame, now)

    def _send_replica(self, peer: int, frame: bytes, now: float) -> None:
        if self.shaper is not None and not self.shaper.is_unshaped(peer):
            self.shaper.submit(now, peer, len(frame), frame)
        elif not self.transport.send_to(peer, frame):
            self.metrics.dropped("send_queue_full")

    def _send_client(self, client: str, msg: Message, now: float) -> None:
        identity = self.routes.get(client)
        if identity is None:
            return  # never heard from this client on this node: nowhere to send
        frame = self._encode(msg)
        if self.shaper is not None and not self.shaper.is_unshaped(client):
            self.shaper.submit(now, client, len(frame), (identity, frame))
        elif not self.transport.send_routed(identity, frame):
            self.metrics.dropped("send_queue_full")

    def _release_shaped(self, now: float) -> None:
        assert self.shaper is not None
        for dst, item in self.shaper.pop_due(now):
            if isinstance(dst, int):
                ok = self.transport.send_to(dst, item)
            else:
                ok = self.transport.send_routed(*item)
            if not ok:
                self.metrics.dropped("send_queue_full")

    def _hello(self, now: float) -> None:
        """Publish Hello until we have heard every peer and every peer has heard all:
        PUB/SUB silently loses what is sent before a subscription is up (slow joiner)."""
        full = self.config.n - 1
        if self.ready and len(self.peer_heard) == full and min(self.peer_heard.values()) == full:
            self.next_hello = now + HELLO_CHECK
            return
        self.transport.publish(self._encode(Hello(self.id, len(self.heard))))
        self.next_hello = now + self.hello_every

    def _update_gauges(self) -> None:
        r = self.replica
        m = self.metrics
        m.set_view(r.view)
        m.set_last_executed(r.last_executed)
        m.set_inflight(r.in_flight())
        m.set_pending_requests(len(r.pending))
        if self.shaper is not None:
            for dst, nbytes in self.shaper.queue_depth().items():
                m.set_shaper_queue(f"to-{dst}", nbytes)


def raise_if_unrecoverable(ledger: Ledger, node_id: int) -> None:
    """A restarted node resumes from its ledger only once state transfer exists."""
    raise LocalError(
        f"node {node_id}: ledger {ledger.path} already holds {ledger.height} blocks; restarting "
        "a node over an existing ledger needs state transfer (not built yet): "
        "move the ledger away or start a fresh cluster directory")


def run_node(config: ClusterConfig, node_id: int, log_level: str = "INFO") -> None:
    """Entry point of `dtnbus node`."""
    logging.basicConfig(level=log_level,
                        format=f"%(asctime)s node-{node_id} %(levelname)s %(message)s")
    Node(config, node_id).run()

