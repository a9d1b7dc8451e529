"""An in-memory network of real replicas with real signatures, for deterministic tests.

Frames go through the real wire codec (sign, parse, admit, verify) and effects are carried
out as the node does: durable ones into a `MemoryLedger` per replica (which a restart
reads back through `Replica.restore`), state requests served from it, replays answered
from it. Delivery order is under the test's control: `deliver_all` is FIFO; tests can
hold, drop, reorder or duplicate frames (`tamper`, `queue`). Any exception a replica
raises propagates: a test fails on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dtnbus.crypto import Signer, Verifier, generate_key, public_key_text
from dtnbus.effects import (
    DURABLE,
    Broadcast,
    Drop,
    Execute,
    Forward,
    LookupReply,
    Send,
    SendClient,
    ViewEntered,
)
from dtnbus.errors import PeerError
from dtnbus.messages import (
    Outcome,
    Reply,
    Request,
    StateReply,
    StateRequest,
    commit_quorum,
)
from dtnbus.replica import UNNEEDED, Replica, ReplicaConfig
from dtnbus.state_transfer import serve_state, verify_blocks
from dtnbus.storage import MemoryLedger
from dtnbus.wire import Codec

_KEYS: dict[object, object] = {}


def _key(name: object):  # keys are slow to make in bulk; share them across tests
    if name not in _KEYS:
        _KEYS[name] = generate_key("ed25519")
    return _KEYS[name]


@dataclass
class Cluster:
    n: int
    config_overrides: dict = field(default_factory=dict)
    clients: tuple[str, ...] = ("c0",)
    admitted: tuple[str, ...] | None = None  # admission control: these at genesis
    operators: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        replica_keys = {i: _key(("r", i)) for i in range(self.n)}
        client_keys = {c: _key(("c", c)) for c in self.clients}
        self.client_keys = {c: public_key_text(k.public_key()) for c, k in client_keys.items()}
        verifiers = {i: Verifier(k.public_key()) for i, k in replica_keys.items()}
        client_verifiers = {c: Verifier(k.public_key()) for c, k in client_keys.items()}
        self.codecs = {i: Codec(Signer(k), verifiers, client_verifiers, me=i)
                       for i, k in replica_keys.items()}
        self.client_codecs = {c: Codec(Signer(k), verifiers, client_verifiers)
                              for c, k in client_keys.items()}
        self.ledgers = [MemoryLedger() for _ in range(self.n)]
        self.replicas = [self._new_replica(i) for i in range(self.n)]
        self.queue: list[tuple[int, bytes]] = []  # (destination, frame)
        self.replies: list[tuple[str, Reply]] = []
        self.blocks: dict[int, list[Execute]] = {i: [] for i in range(self.n)}
        self.drops: dict[int, list[str]] = {i: [] for i in range(self.n)}
        self.views: dict[int, list[int]] = {i: [] for i in range(self.n)}
        self.sent: dict[int, list[object]] = {i: [] for i in range(self.n)}
        self.skipped: dict[int, int] = dict.fromkeys(range(self.n), 0)
        self.down: set[int] = set()
        self.now = 0.0
        self.sessions = {c: 1 for c in self.clients}
        self._numbers: dict[str, int] = dict.fromkeys(self.clients, 0)

    def _new_replica(self, i: int) -> Replica:
        admitted = None if self.admitted is None else {
            c: self.client_keys[c] for c in self.admitted}
        return Replica(ReplicaConfig(i, self.n, **self.config_overrides), self.codecs[i].encode,
                       admitted, frozenset(self.operators))

    # ------------------------------------------------------------ clients

    def request(self, txs: tuple[bytes, ...] = (b"tx",), client: str = "c0",
                to: list[int] | None = None, number: int | None = None,
                session: int | None = None) -> bytes:
        if number is None:
            self._numbers[client] += 1
            number = self._numbers[client]
        req = Request(client, self.sessions[client] if session is None else session, number,
                      txs)
        frame = self.client_codecs[client].encode(req)
        for i in range(self.n) if to is None else to:
            self.queue.append((i, frame))
        return frame

    def inject(self, dest: int, frame: bytes) -> None:
        self.queue.append((dest, frame))

    # ------------------------------------------------------------ delivery

    def deliver(self, dest: int, frame: bytes) -> None:
        if dest in self.down:
            return
        codec, replica = self.codecs[dest], self.replicas[dest]
        try:
            raw = codec.parse(frame)
            verdict = replica.admit(raw, self.now)
            if verdict is not None:
                if verdict == UNNEEDED:  # as the node does: skip what is not needed
                    self.skipped[dest] += 1
                else:
                    self.drops[dest].append(verdict)
                return
            env = codec.authenticate(raw, nested=False)  # as the node does: who, then how
            verdict = replica.charge(env.msg, self.now)  # much, then the proofs
            if verdict is not None:
                self.drops[dest].append(verdict)
                return
            env = codec.authenticate_nested(raw, env)
        except PeerError as exc:
            self.drops[dest].append(exc.reason)
            return
        msg = env.msg
        if isinstance(msg, StateRequest):
            reply = serve_state(self.ledgers[dest], dest, msg.from_seq, commit_quorum(self.n),
                                replica.new_view_frame)
            self.queue.append((msg.replica, codec.encode(reply)))
            return
        if isinstance(msg, StateReply):
            try:
                blocks = verify_blocks(msg.blocks, env.nested, msg.from_seq,
                                       commit_quorum(self.n), codec.decode)
            except PeerError as exc:
                self.drops[dest].append(exc.reason)
                blocks = []
            self._apply(dest, replica.adopt_state(msg.replica, msg.height, blocks, self.now))
            for nv in msg.new_view:
                self.deliver(dest, nv)
            return
        self._apply(dest, replica.step(env, self.now))

    def _apply(self, i: int, effects: list) -> None:
        self.ledgers[i].write([e for e in effects if isinstance(e, DURABLE)])
        for eff in effects:
            if isinstance(eff, Broadcast | Send):
                self.sent[i].append(eff.msg)
                frame = self.tamper(i, eff.msg, eff.frame)
                if frame is None:
                    continue
                targets = [j for j in range(self.n) if j != i] if isinstance(eff, Broadcast) \
                    else [eff.to]
                self.queue.extend((j, frame) for j in targets)
            elif isinstance(eff, Forward):  # a frame passed on unchanged: same network
                frame = self.tamper(i, self.codecs[i].parse(eff.frame).msg, eff.frame)
                if frame is not None:
                    self.queue.append((eff.to, frame))
            elif isinstance(eff, SendClient):
                self.replies.append((eff.client, eff.msg))
            elif isinstance(eff, LookupReply):
                found = self.ledgers[i].lookup(eff.client, eff.session, eff.number)
                if found is None:
                    reply = Reply(eff.view, i, eff.client, eff.session, eff.number, eff.digest,
                                  0, 0, b"", Outcome.STALE)
                else:
                    reply = Reply(eff.view, i, eff.client, eff.session, eff.number, eff.digest,
                                  found.seq, found.position, found.block_hash,
                                  Outcome.EXECUTED if found.digest == eff.digest
                                  else Outcome.CONFLICT)
                self.replies.append((eff.client, reply))
            elif isinstance(eff, Execute):
                self.blocks[i].append(eff)
            elif isinstance(eff, Drop):
                self.drops[i].append(eff.reason)
            elif isinstance(eff, ViewEntered):
                self.views[i].append(eff.view)

    def tamper(self, sender: int, msg: object, frame: bytes) -> bytes | None:
        """What the network does to a frame on its way out: tests override (None = lost)."""
        return frame

    def deliver_all(self, limit: int = 100_000) -> int:
        count = 0
        while self.queue and count < limit:
            dest, frame = self.queue.pop(0)
            self.deliver(dest, frame)
            count += 1
        return count

    def tick(self, dt: float) -> None:
        self.now += dt
        for i, replica in enumerate(self.replicas):
            if i not in self.down:
                self._apply(i, replica.tick(self.now))

    def run(self, rounds: int = 50, dt: float = 0.01) -> None:
        """Deliver everything, let time pass, repeat: until nothing is queued and no
        replica has protocol work pending (status heartbeats aside), or out of rounds."""
        for _ in range(rounds):
            self.deliver_all()
            self.tick(dt)
            if not self.queue and all(r.next_wakeup(heartbeat=False) is None
                                      for i, r in enumerate(self.replicas) if i not in self.down):
                return

    # ------------------------------------------------------------ faults

    def restart(self, i: int) -> Replica:
        """Replica i crashes and comes back from what it made durable (its ledger and its
        protocol records), exactly as a node process does."""
        replica = self._new_replica(i)
        replica.restore(self.ledgers[i].durable_state())
        self.replicas[i] = replica
        self.queue = [(d, f) for d, f in self.queue if d != i]  # lost with the process
        return replica

    # ------------------------------------------------------------ observations

    def heads(self) -> list[bytes]:
        return [r.head for i, r in enumerate(self.replicas) if i not in self.down]

    def answers(self, client: str = "c0") -> list[Reply]:
        """Each replica's answer to each of the client's requests: its committed reply, or
        its tentative one when that is all it sent (the default: a client with q matching
        tentative replies is done, and asks again otherwise)."""
        best: dict[tuple[int, int, int], Reply] = {}
        for c, m in self.replies:
            key = (m.replica, m.session, m.number)
            if c == client and (key not in best or best[key].tentative):
                best[key] = m
        return list(best.values())
