"""One replica as the network sees it, without sockets: its codec, its disk (a
`MemoryLedger`), its behaviour (correct or Byzantine), and the receive path of a node.

    frame -> wire.parse -> Replica.admit -> the sender's signature -> Replica.charge
          -> the nested proofs' signatures -> behaviour.incoming
          -> Replica.step (or: serve state from the ledger / verify and adopt state)
    effects -> behaviour.outgoing -> durable ones into the ledger -> the caller sends

The simulator and the in-memory test harness both drive replicas through this one class,
so they exercise the replica exactly as `dtnbus.node` does, Byzantine hook included. A
`Packet` carries one frame to any number of receivers and is parsed and authenticated
at most once: every member checks frames against the same keys, so the answer is the
same for all of them (this is what lets 1,000 replicas run in one process).

Exceptions are not caught here: a node counts them as `internal_error`, the simulator
reports them as violations, a test fails on them.
"""

from __future__ import annotations

from dtnbus.byzantine import Behaviour
from dtnbus.effects import DURABLE, Drop, Effect, LookupReply, Send, SendClient
from dtnbus.errors import PeerError
from dtnbus.messages import (
    NewView,
    Outcome,
    Reply,
    StateReply,
    StateRequest,
    commit_quorum,
    sender_of,
)
from dtnbus.replica import UNNEEDED, Replica, ReplicaConfig
from dtnbus.state_transfer import ServeGate, serve_state, verify_blocks
from dtnbus.storage import MemoryLedger
from dtnbus.wire import Codec, Envelope, Unverified, UnvouchedRequest


class Packet:
    """A frame in flight, with what parsing and authenticating it found (computed once)."""

    __slots__ = ("auth_error", "env", "frame", "outer", "parse_error", "raw", "src")

    def __init__(self, frame: bytes, src: int | str | None = None) -> None:
        self.frame = frame
        self.src = src  # who put it on the wire (for traces)
        self.raw: Unverified | None = None
        self.outer: Envelope | None = None  # its own signature checked, not its proofs
        self.env: Envelope | None = None  # its proofs' too
        self.parse_error: str | None = None
        self.auth_error: str | None = None


class ReplicaHost:
    """A replica, its codec, its ledger and its behaviour; survives the replica's restarts."""

    def __init__(self, config: ReplicaConfig, codec: Codec,
                 behaviour: Behaviour | None = None, admitted: dict[str, str] | None = None,
                 operators: frozenset[str] = frozenset(), gate_state: bool = True,
                 epoch: float = 0.0, curve: bool = True) -> None:
        """`admitted`/`operators`: client admission at genesis, as `Replica` takes it. The
        codec's clients stay as given (admission commands are not mirrored into it).
        `gate_state`: serve a peer's StateRequest only as a node does (`ServeGate`).
        `epoch`: what the replica's clock reads at the caller's time 0. A node's clock is
        `time.monotonic()`, hours after boot; a timer anchored at 0.0 instead of at a
        reading of that clock is due at once there, and only a clock far from 0 shows it.
        `curve`: a client's frames are known to come from it (a node under CurveZMQ)."""
        self.id = config.replica_id
        self.config = config
        self.codec = codec
        self.q = commit_quorum(config.n)
        self.ledger = MemoryLedger()
        self._genesis = (admitted, operators)
        self.replica = self._new_replica()
        self.behaviour = behaviour
        if behaviour is not None:
            behaviour.ctx.replica = self.replica
        self.skipped = 0  # votes admit said no slot needs: not verified, not stepped
        self.state_gate = ServeGate() if gate_state else None
        self.epoch = epoch
        self.curve = curve

    def _new_replica(self) -> Replica:
        return Replica(self.config, self.codec.encode, *self._genesis)

    def restart(self) -> Replica:
        """The process died and comes back from its disk, as a node does."""
        self.replica = self._new_replica()
        self.replica.restore(self.ledger.durable_state())
        if self.behaviour is not None:
            self.behaviour.ctx.replica = self.replica
            self.behaviour.crashed()
        return self.replica

    # ------------------------------------------------------------ input

    def receive(self, packet: Packet, now: float) -> list[Effect]:
        """One frame from the network; the effects to carry out (durable ones written)."""
        now += self.epoch
        raw = packet.raw
        if raw is None:
            if packet.parse_error is not None:
                return [Drop(packet.parse_error)]
            try:
                raw = packet.raw = self.codec.parse(packet.frame)
            except PeerError as exc:
                packet.parse_error = exc.reason
                return [Drop(exc.reason)]
        try:
            verdict = self.replica.admit(raw, now)  # may parse nested proofs: PeerError
        except PeerError as exc:
            return [Drop(exc.reason, sender_of(raw.msg))]
        if verdict is not None:
            if verdict == UNNEEDED:  # as the node does: skip it, uncounted
                self.skipped += 1
                return []
            return [Drop(verdict, sender_of(raw.msg))]
        # as the node does (Node.intake): the sender's own signature, then its budget,
        # charged to whom it proved to be, then its nested proofs
        if packet.auth_error is not None:
            return [Drop(packet.auth_error, sender_of(raw.msg))]
        shared = not raw.tags  # a MAC authenticator holds one tag per receiver: not shared
        outer = packet.outer if shared else None
        try:
            if outer is None:
                outer = self.codec.authenticate(raw, nested=False)
                if shared:
                    packet.outer = outer
            verdict = self.replica.charge(outer.msg, now)
            if verdict is not None:
                return [Drop(verdict, sender_of(raw.msg))]
            env = packet.env if shared else None
            if env is None:
                env = self.codec.authenticate_nested(raw, outer)
                if shared:
                    packet.env = env
        except UnvouchedRequest as exc:  # (never shared: a tag per receiver)
            return [Drop(exc.reason, sender_of(raw.msg)),
                    *self._finish(self.replica.unvouched(
                        exc.envelope, now, self.curve and isinstance(packet.src, str)), now)]
        except PeerError as exc:
            if shared:
                packet.auth_error = exc.reason
            return [Drop(exc.reason, sender_of(raw.msg))]
        return self.handle(env, now)

    def handle(self, env: Envelope, now: float) -> list[Effect]:
        """An authenticated message: the behaviour may refuse it, then the replica (or the
        ledger, for state transfer) handles it."""
        msg = env.msg
        if self.behaviour is not None and not self.behaviour.incoming(msg, env.frame):
            return []
        replica = self.replica
        if isinstance(msg, StateRequest):
            if self.state_gate is not None and \
                    not self.state_gate.allow(msg.replica, msg.from_seq, now):
                return [Drop("rate_limited", msg.replica)]  # it has not read the last one
            reply = serve_state(self.ledger, self.id, msg.from_seq, self.q,
                                replica.new_view_frame)
            if self.state_gate is not None:
                self.state_gate.served(msg.replica, reply, now)
            return self._finish([Send(msg.replica, reply, self.codec.encode(reply))], now)
        if isinstance(msg, StateReply):
            out: list[Effect] = []
            try:
                blocks = verify_blocks(msg.blocks, env.nested, msg.from_seq, self.q,
                                       self.codec.decode)
            except PeerError as exc:
                out.append(Drop(exc.reason, msg.replica))
                blocks = []
            out += replica.adopt_state(msg.replica, msg.height, blocks, now)
            for frame in msg.new_view:  # the view the cluster is in, with its proof
                try:
                    raw = self.codec.parse(frame)
                    if not isinstance(raw.msg, NewView) or replica.admit(raw, now) is not None:
                        continue
                    outer = self.codec.authenticate(raw, nested=False)
                    if replica.charge(outer.msg, now) is not None:
                        continue
                    view_env = self.codec.authenticate_nested(raw, outer)
                except PeerError as exc:
                    out.append(Drop(exc.reason, msg.replica))
                    continue
                out += replica.step(view_env, now)
            return self._finish(out, now)
        effects = replica.step(env, now)
        return self._finish(effects, now) if effects or self.behaviour else effects

    def tick(self, now: float) -> list[Effect]:
        now += self.epoch
        effects = self.replica.tick(now)
        if self.behaviour is None:
            return self._commit(effects)
        return self._commit(self.behaviour.outgoing(effects, now) + self.behaviour.tick(now))

    def next_wakeup(self, heartbeat: bool = True) -> float | None:
        wake = self.replica.next_wakeup(heartbeat)
        if self.behaviour is not None:
            extra = self.behaviour.next_wakeup()
            if extra is not None and (wake is None or extra < wake):
                wake = extra
        return None if wake is None else wake - self.epoch

    # ------------------------------------------------------------ output

    def _finish(self, effects: list[Effect], now: float) -> list[Effect]:
        if self.behaviour is not None:
            effects = self.behaviour.outgoing(effects, now)
        return self._commit(effects)

    def _commit(self, effects: list[Effect]) -> list[Effect]:
        """Durable effects into the ledger before anything is sent (the node's group
        commit); a replay is answered from the ledger, which holds its one true result."""
        if not effects:  # most votes change nothing visible
            return effects
        durable = [e for e in effects if isinstance(e, DURABLE)]
        if durable:
            self.ledger.write(durable)  # type: ignore[arg-type]
        if any(type(e) is LookupReply for e in effects):
            effects = [self._lookup(e) if type(e) is LookupReply else e  # type: ignore[arg-type]
                       for e in effects]
        return effects

    def _lookup(self, eff: LookupReply) -> SendClient:
        found = self.ledger.lookup(eff.client, eff.session, eff.number)
        if found is None:  # never executed (its session moved on): it never will be
            reply = Reply(eff.view, self.id, eff.client, eff.session, eff.number, eff.digest,
                          0, 0, b"", Outcome.STALE)
        else:
            reply = Reply(eff.view, self.id, eff.client, eff.session, eff.number, eff.digest,
                          found.seq, found.position, found.block_hash,
                          Outcome.EXECUTED if found.digest == eff.digest else Outcome.CONFLICT)
        return SendClient(eff.client, reply)
