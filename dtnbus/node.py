"""One validator process: the event loop that wires the rings around the replica.

    sockets -> wire (parse) -> replica.admit -> wire (verify) -> replica.step / tick
    effects -> ledger (every durable effect of the iteration, one transaction)
            -> the messages, in order -> shaper -> sockets

Single-threaded and synchronous (zmq.Poller): the poll timeout is the earliest of the
replica's next timer, the shaper's next departure and the readiness heartbeat. The
only other thread is prometheus-client's HTTP server. SIGTERM/SIGINT stop the loop;
sockets and the ledger are then closed.

Group commit: effects are collected over one iteration (one poll's frames and a tick);
then everything durable among them (blocks, the votes and view state the replica must
never contradict) is written in one SQLite transaction, and only then does anything
leave. A crash therefore never loses what a peer or a client was told.

The boundary: an exception while handling one peer's frame drops that frame, is counted
as `internal_error` with its traceback logged, and the node goes on.

A test feature (`dtnbus node --byzantine MODE`): a `dtnbus.byzantine.Behaviour` rewrites
the messages among each iteration's effects before they leave (answers to state requests
included, which is why those go out as `Send` effects too) and may refuse input; the
replica, the ledger and the loop are the same as in a correct node.
"""

from __future__ import annotations

import gc
import logging
import random
import signal
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import zmq

from dtnbus.budget import PeerBudget
from dtnbus.byzantine import Behaviour, Context, ModeSpec, make_behaviour
from dtnbus.config import ClusterConfig
from dtnbus.crypto import Verifier, load_public_key_text
from dtnbus.curve import NODE_PREFIX, binding_refusal, client_member
from dtnbus.effects import (
    DURABLE,
    Broadcast,
    CheckpointStable,
    Drop,
    Effect,
    Execute,
    Forward,
    LookupReply,
    Observe,
    Send,
    SendClient,
    ViewChangeStarted,
    ViewEntered,
)
from dtnbus.errors import LocalError, PeerError
from dtnbus.hello import Greeting
from dtnbus.messages import (
    Hello,
    Message,
    NewView,
    Outcome,
    Reply,
    Request,
    StateReply,
    StateRequest,
    Status,
    StatusQuery,
    kind_name,
    sender_of,
)
from dtnbus.metrics import NodeMetrics
from dtnbus.nodeproc import NodeLock
from dtnbus.replica import UNNEEDED, Replica
from dtnbus.state_transfer import ServeGate, serve_state, verify_blocks
from dtnbus.storage import Ledger
from dtnbus.transport import FROM_ROUTER, Endpoints, Transport, from_replica
from dtnbus.wire import Codec, Envelope, Unverified, UnvouchedRequest

log = logging.getLogger("dtnbus.node")

MAX_POLL = 0.05  # also bounds how long a stop signal waits
GAUGE_EVERY = 0.25
BACKLOG_WINDOW = 0.05  # seconds over which the loop's idle time is measured,
BACKLOG_BUSY = 0.5  # ...and the loop is CPU-bound when it waited in poll less than half of it
MAX_ROUTES = 200_000  # requests awaiting a reply whose connection we remember
MAX_SHAPED_BYTES = 256 * 1024 * 1024  # per emulated link: beyond this, sends are drops
GC_THRESHOLDS = (2_000, 20, 1_000)
MAX_BUNDLE = 1024  # replies to one connection sent as one bundle (wire.bundle)


class LoopLoad:
    """Whether a node's loop is CPU-bound: over each window of `BACKLOG_WINDOW` seconds,
    did it wait in poll for less than half the time? A node that never waits has work
    queued behind work (its own, or other processes' on the same cores); fewer, larger
    batches are then faster than batches cut on a timer."""

    def __init__(self, now: float) -> None:
        self.start, self.waited = now, 0.0

    def update(self, now: float, waited: float) -> bool | None:
        """`waited`: the loop's total seconds blocked in poll so far. Returns the verdict
        at the end of each window, None within one."""
        elapsed = now - self.start
        if elapsed < BACKLOG_WINDOW:
            return None
        idle = waited - self.waited
        self.start, self.waited = now, waited
        return idle < elapsed * (1.0 - BACKLOG_BUSY)


class Node:
    """One validator: its replica, ledger, sockets, shaper and metrics, and the loop."""

    def __init__(self, config: ClusterConfig, node_id: int, serve_metrics: bool = True,
                 byzantine: ModeSpec | None = None) -> None:
        spec = config.node(node_id)
        self.config = config
        self.id = node_id
        self.codec = Codec(config.node_signer(node_id), config.replica_verifiers(),
                           config.client_verifiers(), open_clients=config.open_admission,
                           me=node_id)
        curve = config.curve.node_end(node_id) if config.curve is not None else None
        self.ledger = Ledger(spec.ledger, config.sqlite_synchronous)
        self.replica = Replica(config.replica_config(node_id), self.codec.encode,
                               config.admitted_at_genesis(), config.operators(),
                               config.open_admission)
        saved = self.ledger.durable_state()
        if saved.height or saved.records:  # a restart: resume exactly where we were
            self.replica.restore(saved)
            log.info("node %d resumes at seq %d in view %d", node_id, saved.height,
                     self.replica.view)
        self.behaviour: Behaviour | None = None  # a test feature: faulty on purpose
        if byzantine is not None:
            hop = float(config.shaping.get("latency_ms", 0) or 0) / 1000
            self.behaviour = make_behaviour(byzantine, Context(
                self.replica, self.codec.encode, tuple(c.id for c in config.clients),
                random.Random(node_id), base_delay=max(0.01, hop)))
            log.warning("node %d is BYZANTINE (%s): a test feature; it misbehaves on purpose",
                        node_id, byzantine)
        self.metrics = NodeMetrics(node_id)
        peers = {s.id: Endpoints(s.pub, s.router) for s in config.nodes if s.id != node_id}
        try:
            if serve_metrics and spec.metrics:
                host, _, port = spec.metrics.rpartition(":")
                self.metrics.serve(host, int(port))
            self.transport = Transport(Endpoints(spec.bind_pub, spec.bind_router, node_id), peers,
                                       curve=curve, on_refusal=self.metrics.curve_refused,
                                       recv_hwm=4 * self.replica.config.window)
        except (OSError, ValueError, zmq.ZMQError) as exc:
            self.ledger.close()
            hint = ("is another node running there?" if "in use" in str(exc) else
                    "behind NAT or on a cloud host, set bind = \"0.0.0.0\" for this node "
                    "in the cluster file (pub/router stay the advertised addresses)")
            raise LocalError(f"node {node_id}: cannot listen on {spec.bind_pub} / "
                             f"{spec.bind_router} / {spec.metrics}: {exc}; {hint}") from None
        # clients the order admitted before a restart: their keys, and their CURVE keys now
        # that the sockets (and the ZAP table) exist
        self._admit((c, k, ck) for c, (k, ck) in saved.admitted.items())
        self.shaper = config.shaper(node_id)
        # where replies go: the connection a request came in on (a replayed frame from
        # elsewhere must not redirect another request's reply), per request identity
        # (client, session, number) -> (connection, digest of the request that came on it)
        self.routes: OrderedDict[tuple[str, int, int], tuple[bytes, bytes]] = OrderedDict()
        self.outbox: list[Effect] = []  # this iteration's effects, carried out by _flush
        # this iteration's replies, per client connection: one bundle each (`wire.bundle`;
        # clients open it with `transport.waiting_frames`): one send, one wake-up of
        # ZeroMQ's I/O thread per connection instead of per reply
        self.bundles: dict[bytes, list[bytes]] = {}
        self.refusals = PeerBudget({"refuse": (5.0, 20.0)})  # per client connection
        self.state_gate = ServeGate()
        self.ledger_txs = self.replica.executed_txs  # as durable as the ledger's height
        self.greeting = Greeting(config.n)
        self.load = LoopLoad(time.monotonic())
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
        wake = [now + MAX_POLL, self.greeting.next_at]
        replica_wake = self.replica.next_wakeup()
        if replica_wake is not None:
            wake.append(replica_wake)
        if self.behaviour is not None and (due := self.behaviour.next_wakeup()) is not None:
            wake.append(due)
        if self.shaper is not None:
            due = self.shaper.next_due()
            if due is not None:
                wake.append(due)
        timeout_ms = max(0, int((min(wake) - now) * 1000 + 0.999))
        for source, identity, frame, member in self.transport.poll(timeout_ms):
            self._on_frame(source, identity, frame, member)
        now = time.monotonic()
        self._measure_backlog(now)
        try:
            self.outbox.extend(self.replica.tick(now))
        except Exception:  # a bug; never a reason to stop a validator
            log.exception("node %d: tick failed", self.id)
            self.metrics.dropped("internal_error")
        self._flush(now)
        heard = self.greeting.due(now)
        if heard is not None:
            self.transport.publish(self._encode(Hello(self.id, heard)))
        if self.shaper is not None:
            self._release_shaped(now)
        if now >= self.next_gauges:  # a scrape every few seconds needs no fresher gauges
            self.next_gauges = now + GAUGE_EVERY
            self._update_gauges()

    def _measure_backlog(self, now: float) -> None:
        """Tell the replica whether this loop had idle time lately (`LoopLoad`)."""
        busy = self.load.update(now, self.transport.waited)
        if busy is not None:
            self.replica.backlogged = busy

    def _stop(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def close(self) -> None:
        self.metrics.flush()
        self.transport.close()
        self.ledger.close()
        log.info("node %d stopped at seq %d", self.id, self.replica.last_executed)

    # ------------------------------------------------------------ input

    def _on_frame(self, source: int, identity: bytes | None, frame: bytes,
                  member: str | None = None) -> None:
        now = time.monotonic()
        sender: int | str | None = None
        try:
            raw = self.codec.parse(frame)
            sender = sender_of(raw.msg)
            if member is not None and (why := binding_refusal(member, raw.msg)) is not None:
                self.transport.refuse(why, f"{member} delivered {kind_name(raw.msg.KIND)} "
                                           f"from {sender!r}")
                return
            verdict = self.replica.admit(raw, now)
            if verdict is not None:
                if verdict == UNNEEDED:  # a vote its slot no longer needs: not worth a check
                    self.metrics.message_received(kind_name(raw.msg.KIND), len(frame))
                else:
                    self.metrics.dropped(verdict, sender)
                return
            env = self.intake(raw, now)
            if env is None:
                return
        except UnvouchedRequest as exc:  # counted as dropped; the order may still need it
            self.metrics.dropped(exc.reason, sender)
            # from the client itself only when CURVE says so: without it anyone can send
            # a spoiled copy in a client's name (a replica's forward proves nothing either)
            self._unvouched(exc.envelope, now,
                            member is not None and not member.startswith(NODE_PREFIX))
            return
        except PeerError as exc:
            if sender is None and exc.msg is not None:
                sender = sender_of(exc.msg)  # who it claims to be: a name for the culprit
            self.metrics.dropped(exc.reason, sender)
            log.debug("dropped frame: %s", exc)
            if exc.reason == "unknown_sender" and source == FROM_ROUTER and identity \
                    and not from_replica(identity) and self.refusals.allow(identity, "refuse",
                                                                           now):
                if isinstance(exc.msg, Request):  # say why, instead of silence
                    self._refuse(identity, exc.msg, exc.digest)
                elif isinstance(exc.msg, StatusQuery):  # control traffic: no secret in it
                    self.transport.send_routed(identity,
                                               self._encode(self._status(exc.msg.nonce)))
            return
        except Exception:  # a bug in parsing: drop the frame, count it, go on
            log.exception("node %d: parsing a frame failed", self.id)
            self.metrics.dropped("internal_error", sender)
            return
        self.metrics.message_received(kind_name(env.msg.KIND), len(frame))
        try:
            self._handle(env, source, identity, now)
        except PeerError as exc:
            self.metrics.dropped(exc.reason, sender)
            log.warning("node %d: %s from %s refused: %s", self.id, type(env.msg).__name__,
                        sender, exc)
        except Exception:
            log.exception("node %d: handling %s from %s failed", self.id,
                          type(env.msg).__name__, sender)
            self.metrics.dropped("internal_error", sender)

    def _unvouched(self, env: Envelope, now: float, from_client: bool) -> None:
        try:
            self.outbox.extend(self.replica.unvouched(env, now, from_client))
        except Exception:
            log.exception("node %d: holding an unvouched request failed", self.id)
            self.metrics.dropped("internal_error", sender_of(env.msg))

    def intake(self, raw: Unverified, now: float) -> Envelope | None:
        """Signatures in the order that keeps a flood cheap: the sender's own signature,
        then its budget (charged to whom it proved to be, never to whom it claims to be),
        then its nested proofs. None: over budget (counted)."""
        env = self.codec.authenticate(raw, nested=False)
        verdict = self.replica.charge(env.msg, now)
        if verdict is not None:
            self.metrics.dropped(verdict, sender_of(env.msg))
            return None
        return self.codec.authenticate_nested(raw, env)

    def _handle(self, env: Envelope, source: int, identity: bytes | None, now: float) -> None:
        msg = env.msg
        if type(msg) is Request:  # the common case first
            if source == FROM_ROUTER and identity and not from_replica(identity):
                key = (msg.client, msg.session, msg.number)  # (a forwarded copy is no
                routes = self.routes  # route to the client)
                if key in routes:
                    routes.move_to_end(key)
                routes[key] = (identity, env.digest)
                if len(routes) > MAX_ROUTES:
                    routes.popitem(last=False)
            if self.behaviour is not None and not self.behaviour.incoming(msg, env.frame):
                return  # a faulty node refuses it (censorship)
            self.outbox.extend(self.replica.step(env, now))
            return
        if isinstance(msg, Hello):
            self.greeting.on_hello(msg.replica, msg.heard, now)
            return
        if isinstance(msg, StatusQuery):
            if identity:  # control traffic: answered at once, on its own connection
                self.transport.send_routed(identity, self._encode(self._status(msg.nonce)))
            return
        if isinstance(msg, Reply | Status):
            self.metrics.dropped("unknown_sender", msg.replica)  # only clients receive these
            return
        if self.behaviour is not None and not self.behaviour.incoming(msg, env.frame):
            return  # a faulty node refuses it (censorship)
        if isinstance(msg, StateRequest):  # an effect like any other (a faulty node may lie)
            if not self.state_gate.allow(msg.replica, msg.from_seq, now):
                self.metrics.dropped("rate_limited", msg.replica)  # it has not read the last
                return
            reply = serve_state(self.ledger, self.id, msg.from_seq, self.replica.q,
                                self.replica.new_view_frame)
            self.state_gate.served(msg.replica, reply, now)
            self.outbox.append(Send(msg.replica, reply, self.codec.encode(reply)))
            return
        if isinstance(msg, StateReply):
            self._adopt_state(env, now)
            return
        self.outbox.extend(self.replica.step(env, now))

    # ------------------------------------------------------------ state transfer

    def _adopt_state(self, env: Envelope, now: float) -> None:
        """Blocks a peer proved, each by its commit certificate: verify, execute, jump."""
        reply = env.msg
        assert isinstance(reply, StateReply)
        try:
            blocks = verify_blocks(reply.blocks, env.nested, reply.from_seq, self.replica.q,
                                   self.codec.decode)
        except PeerError as exc:
            self.metrics.dropped(exc.reason, reply.replica)
            log.warning("node %d: state from node %d refused: %s", self.id, reply.replica, exc)
            blocks = []
        if blocks:
            log.info("node %d catching up from node %d: blocks %d..%d", self.id, reply.replica,
                     blocks[0].seq, blocks[-1].seq)
        self.outbox.extend(self.replica.adopt_state(reply.replica, reply.height, blocks, now))
        for frame in reply.new_view:  # the view the cluster is in, with its proof
            try:
                raw = self.codec.parse(frame)
                if not isinstance(raw.msg, NewView) or self.replica.admit(raw, now) is not None:
                    continue
                view_env = self.intake(raw, now)
                if view_env is None:
                    continue
            except PeerError as exc:
                self.metrics.dropped(exc.reason, reply.replica)
                continue
            self.outbox.extend(self.replica.step(view_env, now))

    def _refuse(self, identity: bytes, req: Request, digest: bytes) -> None:
        """Tell a client this cluster does not admit its key (the caller limits this to a
        few times a second per connection: an answer must not become an amplifier)."""
        reply = Reply(self.replica.view, self.id, req.client, req.session, req.number, digest,
                      0, 0, b"", Outcome.REFUSED)
        self.transport.send_routed(identity, self._encode(reply))

    def _status(self, nonce: int) -> Status:
        r = self.replica
        phases = tuple((name, count, total)
                       for name, (count, total) in self.metrics.phase_summary().items())
        # what is durable, not what this iteration has executed but not yet written
        return Status(self.id, nonce, r.view, self.ledger.height, self.ledger.head,
                      r.stable_checkpoint, self.ready, r.pending, self.ledger_txs, phases)

    @property
    def ready(self) -> bool:
        return self.greeting.ready

    # ------------------------------------------------------------ effects

    def _flush(self, now: float) -> None:
        """Make this iteration's durable effects durable (one transaction), then carry out
        everything in order. A write that fails stops the node before anything leaves:
        a vote we could not persist must never be seen."""
        effects, self.outbox = self.outbox, []
        if self.behaviour is not None:  # a test feature: what a faulty node makes of them
            effects = self.behaviour.outgoing(effects, now) + self.behaviour.tick(now)
        if not effects:
            return
        durable = [e for e in effects if isinstance(e, DURABLE)]
        if durable:
            self.ledger.write(durable)  # type: ignore[arg-type]
            self.ledger_txs = self.replica.executed_txs
        for eff in effects:
            if type(eff) is SendClient:  # the most frequent: one per request
                self._send_client(eff.client, eff.msg, now)
            elif isinstance(eff, Broadcast):
                self._broadcast(eff.msg, eff.frame, now)
            elif isinstance(eff, Send):
                self.metrics.message_sent(kind_name(eff.msg.KIND), len(eff.frame))
                self._send_replica(eff.to, eff.frame, now)
            elif isinstance(eff, Forward):
                self._send_replica(eff.to, eff.frame, now)
            elif isinstance(eff, SendClient):
                self._send_client(eff.client, eff.msg, now)
            elif isinstance(eff, LookupReply):
                self._answer_from_ledger(eff, now)
            elif isinstance(eff, Execute):
                if eff.clients.admitted:
                    self._admit(eff.clients.admitted)
                txs = eff.executed_txs  # a sum over the block: once
                self.metrics.executed(1, txs)
                self.metrics.batch_cut(txs)
                if eff.committed_at:  # 0 for blocks taken by state transfer
                    self.metrics.observe_phase("committed_to_executed",
                                               time.monotonic() - eff.committed_at)
            elif isinstance(eff, Observe):
                self.metrics.observe_phase(eff.phase, max(0.0, eff.seconds))
            elif isinstance(eff, Drop):
                self.metrics.dropped(eff.reason, eff.sender)
            elif isinstance(eff, CheckpointStable):
                self.metrics.checkpoint_stable(eff.seq)
            elif isinstance(eff, ViewEntered):
                self.metrics.view_changed(eff.view)
                log.info("node %d entered view %d (primary %d): %s", self.id, eff.view,
                         self.replica.primary, eff.reason)
            elif isinstance(eff, ViewChangeStarted):
                log.info("node %d left view %d for view %d: %s", self.id, eff.view - 1,
                         eff.view, eff.reason)
        if self.bundles:
            self._send_bundles()

    def _send_bundles(self) -> None:
        """Each connection's replies of this iteration, as one bundle."""
        bundles, self.bundles = self.bundles, {}
        for identity, frames in bundles.items():
            for start in range(0, len(frames), MAX_BUNDLE):
                part = frames[start:start + MAX_BUNDLE]
                if not self.transport.send_routed_many(identity, part):
                    for _ in part:
                        self.metrics.dropped("send_queue_full")

    def _admit(self, changes: Iterable[tuple[str, str, str]]) -> None:
        """The order admitted or removed clients: their requests verify, or no longer, and
        under CURVE their connections are let in, or no longer."""
        for client, key_text, curve_key in changes:
            guard = getattr(getattr(self, "transport", None), "guard", None)
            if guard is not None:
                member = client_member(client)
                for key in [k for k, m in guard.admitted.items() if m == member]:
                    del guard.admitted[key]
                if key_text and curve_key:
                    guard.admitted[curve_key.encode()] = member
            if not key_text:
                self.codec.clients.pop(client, None)
                log.info("node %d: client %s removed", self.id, client)
                continue
            try:
                verifier = Verifier(load_public_key_text(key_text))
            except LocalError as exc:
                log.error("node %d: client %s admitted with an unusable key: %s", self.id,
                          client, exc)
                continue
            if verifier.raw_key in {v.raw_key for v in self.codec.replicas.values()}:
                log.error("node %d: client %s admitted with a node's key: refused", self.id,
                          client)
                continue
            self.codec.clients[client] = verifier
            log.info("node %d: client %s admitted", self.id, client)

    def _answer_from_ledger(self, eff: LookupReply, now: float) -> None:
        """A request decided before: its one true answer is in the ledger."""
        found = self.ledger.lookup(eff.client, eff.session, eff.number)
        if found is None:  # never executed (its session moved on): it never will be
            reply = Reply(eff.view, self.id, eff.client, eff.session, eff.number, eff.digest,
                          0, 0, b"", Outcome.STALE)
        else:
            outcome = Outcome.EXECUTED if found.digest == eff.digest else Outcome.CONFLICT
            reply = Reply(eff.view, self.id, eff.client, eff.session, eff.number, eff.digest,
                          found.seq, found.position, found.block_hash, outcome)
        self._send_client(eff.client, reply, now)

    def _encode(self, msg: Message) -> bytes:
        frame = self.codec.encode(msg)
        self.metrics.message_sent(kind_name(msg.KIND), len(frame))
        return frame

    def _broadcast(self, msg: Message, frame: bytes, now: float) -> None:
        self.metrics.message_sent(kind_name(msg.KIND), len(frame))
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
        key = (client, msg.session, msg.number)
        route = self.routes.get(key)
        if route is None:
            return  # the request did not come to us directly: nowhere to send
        identity, digest = route
        # a speculative reply is followed by the tentative (or committed) one; a tentative
        # reply by the committed one only when the cluster says so; and a late answer to
        # a request never takes the connection of another one under the same identity
        # (a CONFLICT to come, or a retry)
        if digest == msg.request and not (
                msg.speculative or (msg.tentative and self.replica.config.reply_after_tentative)):
            del self.routes[key]
        verifier = self.codec.client_verifier(client)  # a MAC for it, when it can take one
        frame = self.codec.encode_reply(msg, verifier.raw_key if verifier else None)
        self.metrics.message_sent("reply", len(frame))
        if self.shaper is not None and not self.shaper.is_unshaped(client):
            self.shaper.submit(now, client, len(frame), (identity, frame))
        else:  # sent at the end of this flush, with the connection's other replies
            bundle = self.bundles.get(identity)
            if bundle is None:
                self.bundles[identity] = [frame]
            else:
                bundle.append(frame)

    def _release_shaped(self, now: float) -> None:
        assert self.shaper is not None
        for dst, item in self.shaper.pop_due(now):
            if isinstance(dst, int):
                ok = self.transport.send_to(dst, item)
            else:
                ok = self.transport.send_routed(*item)
            if not ok:
                self.metrics.dropped("send_queue_full")

    def _update_gauges(self) -> None:
        r = self.replica
        m = self.metrics
        m.flush()
        m.set_view(r.view)
        m.set_last_executed(r.last_executed)
        m.set_inflight(r.in_flight())
        m.set_pending_requests(r.pending)
        m.set_distrusted_clients(r.distrusted_clients(time.monotonic()))
        if self.shaper is not None:
            for dst, nbytes in self.shaper.queue_depth().items():
                m.set_shaper_queue(f"to-{dst}", nbytes)


def run_node(config: ClusterConfig, node_id: int, log_level: str = "INFO",
             byzantine: ModeSpec | None = None) -> None:
    """Entry point of `dtnbus node` (`byzantine`: a test feature, see dtnbus.byzantine)."""
    logging.basicConfig(level=log_level,
                        format=f"%(asctime)s node-{node_id} %(levelname)s %(message)s")
    with NodeLock(config.node(node_id).ledger, node_id):  # one node per ledger, findable
        node = Node(config, node_id, byzantine=byzantine)
        # The loop makes few reference cycles but holds many long-lived objects (the pool,
        # the reply cache): what startup built is exempt from collection, and collections
        # run less often (at the defaults they cost 3-4% of a node's CPU under load).
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        node.run()

