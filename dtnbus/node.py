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
from collections import OrderedDict
from typing import Any

import zmq

from dtnbus.config import ClusterConfig
from dtnbus.curve import binding_refusal
from dtnbus.errors import LocalError, PeerError
from dtnbus.messages import (
    Checkpoint,
    Hello,
    Message,
    NewView,
    Reply,
    Request,
    StateReply,
    StateRequest,
    Status,
    StatusQuery,
    commit_quorum,
    kind_name,
    sender_of,
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
from dtnbus.state_transfer import MAX_BLOCKS, encode_blocks, verify_blocks
from dtnbus.storage import Ledger
from dtnbus.transport import FROM_ROUTER, Endpoints, Transport, from_replica
from dtnbus.wire import Codec, Envelope

log = logging.getLogger("dtnbus.node")

HELLO_EVERY = 0.1  # per 10 nodes: n Hellos cost n(n-1) verifications per round
HELLO_CHECK = 1.0
MAX_POLL = 0.05  # also bounds how long a stop signal waits
GAUGE_EVERY = 0.25
MAX_ROUTES = 200_000  # requests awaiting a reply whose connection we remember
MAX_SHAPED_BYTES = 256 * 1024 * 1024  # per emulated link: beyond this, sends are drops


class Node:
    """One validator: its replica, ledger, sockets, shaper and metrics, and the loop."""

    def __init__(self, config: ClusterConfig, node_id: int, serve_metrics: bool = True) -> None:
        spec = config.node(node_id)
        self.config = config
        self.id = node_id
        self.codec = Codec(config.signer(spec.key_file, f"node {node_id}"),
                           config.replica_verifiers(), config.client_verifiers())
        curve = config.curve.node_end(node_id) if config.curve is not None else None
        self.replica = Replica(config.replica_config(node_id))
        self.ledger = Ledger(spec.ledger)
        if self.ledger.height:  # a restart: resume from our ledger, then catch up
            self.replica.restore(self.ledger.height, self.ledger.head,
                                 self.ledger.recent_requests(self.replica.config.reply_cache))
        self.metrics = NodeMetrics(node_id)
        peers = {s.id: Endpoints(s.pub, s.router) for s in config.nodes if s.id != node_id}
        try:
            if serve_metrics and spec.metrics:
                host, _, port = spec.metrics.rpartition(":")
                self.metrics.serve(host, int(port))
            self.transport = Transport(Endpoints(spec.pub, spec.router, node_id), peers,
                                       curve=curve, on_refusal=self.metrics.curve_refused)
        except (OSError, ValueError, zmq.ZMQError) as exc:
            self.ledger.close()
            raise LocalError(f"node {node_id}: cannot listen on {spec.pub} / {spec.router} / "
                             f"{spec.metrics}: {exc}; is another node running there?") from None
        self.shaper = config.shaper(node_id)
        # where replies go: the connection a request came in on (a replayed frame from
        # elsewhere must not redirect another request's reply), per (client, timestamp)
        self.routes: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self.heard: set[int] = set()
        self.peer_heard: dict[int, int] = {}  # how many peers each peer has heard
        self.hello_every = HELLO_EVERY * max(1.0, config.n / 10)
        self.next_hello = 0.0
        self.next_gauges = 0.0
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
        for source, identity, frame, member in self.transport.poll(timeout_ms):
            self._on_frame(source, identity, frame, member)
        now = time.monotonic()
        self._apply(self.replica.tick(now), now)
        if now >= self.next_hello:
            self._hello(now)
        if self.shaper is not None:
            self._release_shaped(now)
        if now >= self.next_gauges:  # a scrape every few seconds needs no fresher gauges
            self.next_gauges = now + GAUGE_EVERY
            self._update_gauges()

    def _stop(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def close(self) -> None:
        self.transport.close()
        self.ledger.close()
        log.info("node %d stopped at seq %d", self.id, self.replica.last_executed)

    # ------------------------------------------------------------ input

    def _on_frame(self, source: int, identity: bytes | None, frame: bytes,
                  member: str | None = None) -> None:
        try:
            raw = self.codec.parse(frame)
            if member is not None and (why := binding_refusal(member, raw.msg)) is not None:
                self.transport.refuse(why, f"{member} delivered {kind_name(raw.msg.KIND)} "
                                           f"from {sender_of(raw.msg)!r}")
                return
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
        if isinstance(msg, Request) and source == FROM_ROUTER and identity \
                and not from_replica(identity):  # a forwarded copy is no route to the client
            self.routes[(msg.client, msg.timestamp)] = identity
            self.routes.move_to_end((msg.client, msg.timestamp))
            while len(self.routes) > MAX_ROUTES:
                self.routes.popitem(last=False)
        if isinstance(msg, Hello):
            self.heard.add(msg.replica)
            self.peer_heard[msg.replica] = msg.heard
            if msg.heard < self.config.n - 1:
                self.next_hello = min(self.next_hello, now + 0.01)  # a (re)joining peer
            return
        if isinstance(msg, StatusQuery):
            if identity:  # control traffic: answered at once, on its own connection
                self.transport.send_routed(identity, self._encode(self._status(msg.nonce)))
            return
        if isinstance(msg, Reply | Status):
            self.metrics.dropped("unknown_sender")  # only clients receive these
            return
        if isinstance(msg, StateRequest):
            self._serve_state(msg, now)
            return
        if isinstance(msg, StateReply):
            self._adopt_state(env, now)
            return
        self._apply(self.replica.step(env, now), now)

    # ------------------------------------------------------------ state transfer

    def _serve_state(self, req: StateRequest, now: float) -> None:
        offer = self.replica.state_for(req.from_seq)
        blocks: list[bytes] = []
        if req.from_seq <= offer.end_seq < req.from_seq + MAX_BLOCKS:
            blocks = encode_blocks(self.ledger, req.from_seq, offer.end_seq)
        elif offer.end_seq >= req.from_seq:
            log.warning("node %d is %d blocks behind: more than one reply carries",
                        req.replica, offer.end_seq - req.from_seq + 1)
        reply = StateReply(self.id, req.from_seq, offer.stable_proof + offer.commit_certs,
                           tuple(blocks), (offer.new_view,) if offer.new_view else ())
        self._send_replica(req.replica, self._encode(reply), now)

    def _adopt_state(self, env: Envelope, now: float) -> None:
        """Blocks a peer proved (CHECKPOINTs, then COMMITs): verify, make durable, jump."""
        reply = env.msg
        assert isinstance(reply, StateReply)
        start = self.ledger.height + 1
        if reply.from_seq != start:
            return  # an answer to an older request
        stable = [e for e in env.nested if isinstance(e.msg, Checkpoint)]
        try:
            blocks = verify_blocks(reply.blocks, start, self.ledger.head,
                                   [e.msg for e in env.nested], commit_quorum(self.config.n))
        except PeerError as exc:
            self.metrics.dropped(exc.reason)
            log.warning("state from node %d refused: %s", reply.replica, exc)
            return
        if blocks:
            log.info("catching up from node %d: blocks %d..%d", reply.replica, start,
                     blocks[-1].seq)
        stable_seq = max((e.msg.seq for e in stable), default=0)  # type: ignore[union-attr]
        proof = tuple(e for e in stable if e.msg.seq == stable_seq)  # type: ignore[union-attr]
        # Execute effects go to the ledger, durable, exactly as for committed batches
        self._apply(self.replica.adopt_state(stable_seq, proof, blocks, now), now)
        for frame in reply.new_view:  # the view the cluster is in, with its proof
            try:
                view_env = self.codec.decode(frame)
            except PeerError as exc:
                self.metrics.dropped(exc.reason)
                continue
            if isinstance(view_env.msg, NewView):
                self._apply(self.replica.step(view_env, now), now)

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
                self.metrics.batch_cut(txs)
                if eff.committed_at:  # 0 for blocks taken by state transfer
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
            if self.shaper.queued_bytes(peer) + len(frame) > MAX_SHAPED_BYTES:
                self.metrics.dropped("send_queue_full")  # the emulated link is that slow
                return
            self.shaper.submit(now, peer, len(frame), frame)
        elif not self.transport.send_to(peer, frame):
            self.metrics.dropped("send_queue_full")

    def _send_client(self, client: str, msg: Reply, now: float) -> None:
        key = (client, msg.timestamp)
        # a tentative reply is followed by the committed one: keep the route until then
        identity = self.routes.get(key) if msg.tentative else self.routes.pop(key, None)
        if identity is None:
            return  # the request did not come to us directly: nowhere to send
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


def run_node(config: ClusterConfig, node_id: int, log_level: str = "INFO") -> None:
    """Entry point of `dtnbus node`."""
    logging.basicConfig(level=log_level,
                        format=f"%(asctime)s node-{node_id} %(levelname)s %(message)s")
    Node(config, node_id).run()

