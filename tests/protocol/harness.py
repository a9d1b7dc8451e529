"""An in-memory network of real replicas with real signatures, for deterministic tests.

Messages go through the real wire codec (encode, sign, decode, verify), so the tests
exercise the same path a node does, minus sockets. Delivery order is under the test's
control: `deliver_all` is FIFO; tests can hold, drop, reorder or duplicate frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dtnbus.crypto import Signer, Verifier, generate_key
from dtnbus.errors import PeerError
from dtnbus.messages import Request
from dtnbus.replica import (
    Broadcast,
    Drop,
    Execute,
    Forward,
    Replica,
    ReplicaConfig,
    Send,
    SendClient,
    ViewEntered,
)
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

    def __post_init__(self) -> None:
        replica_keys = {i: _key(("r", i)) for i in range(self.n)}
        client_keys = {c: _key(("c", c)) for c in self.clients}
        verifiers = {i: Verifier(k.public_key()) for i, k in replica_keys.items()}
        client_verifiers = {c: Verifier(k.public_key()) for c, k in client_keys.items()}
        self.codecs = {i: Codec(Signer(k), verifiers, client_verifiers)
                       for i, k in replica_keys.items()}
        self.client_codecs = {c: Codec(Signer(k), verifiers, client_verifiers)
                              for c, k in client_keys.items()}
        self.replicas = [Replica(ReplicaConfig(i, self.n, **self.config_overrides))
                         for i in range(self.n)]
        self.queue: list[tuple[int, bytes]] = []  # (destination, frame)
        self.replies: list[tuple[str, object]] = []
        self.blocks: dict[int, list[Execute]] = {i: [] for i in range(self.n)}
        self.drops: dict[int, list[str]] = {i: [] for i in range(self.n)}
        self.views: dict[int, list[int]] = {i: [] for i in range(self.n)}
        self.skipped: dict[int, int] = dict.fromkeys(range(self.n), 0)
        self.down: set[int] = set()
        self.now = 0.0
        self._ts = 0

    def request(self, txs: tuple[bytes, ...] = (b"tx",), client: str = "c0",
                to: list[int] | None = None, timestamp: int | None = None) -> bytes:
        if timestamp is None:
            self._ts += 1
            timestamp = self._ts
        frame = self.client_codecs[client].encode(Request(client, timestamp, txs))
        for i in range(self.n) if to is None else to:
            self.queue.append((i, frame))
        return frame

    def inject(self, dest: int, frame: bytes) -> None:
        self.queue.append((dest, frame))

    def deliver(self, dest: int, frame: bytes) -> None:
        if dest in self.down:
            return
        codec, replica = self.codecs[dest], self.replicas[dest]
        try:
            raw = codec.parse(frame)
            if not replica.wants(raw.msg):  # as the node does: skip what is not needed
                self.skipped[dest] += 1
                return
            env = codec.authenticate(raw)
        except PeerError as exc:
            self.drops[dest].append(exc.reason)
            return
        self._apply(dest, replica.step(env, self.now))

    def _apply(self, i: int, effects: list) -> None:
        codec = self.codecs[i]
        replica = self.replicas[i]
        for eff in effects:
            if isinstance(eff, Broadcast | Send):
                frame = self.tamper(i, eff.msg, codec.encode(eff.msg))
                if frame is None:
                    continue
                targets = [j for j in range(self.n) if j != i] if isinstance(eff, Broadcast) \
                    else [eff.to]
                self.queue.extend((j, frame) for j in targets)
                self._apply(i, replica.note_signed(eff.msg, frame, self.now))
            elif isinstance(eff, Forward):
                self.queue.append((eff.to, eff.frame))
            elif isinstance(eff, SendClient):
                self.replies.append((eff.client, eff.msg))
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
        replica has a timer pending, or out of rounds."""
        for _ in range(rounds):
            self.deliver_all()
            self.tick(dt)
            if not self.queue and all(r.next_wakeup() is None
                                      for i, r in enumerate(self.replicas) if i not in self.down):
                return

    def heads(self) -> list[bytes]:
        return [r.head for i, r in enumerate(self.replicas) if i not in self.down]
