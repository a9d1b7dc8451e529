"""Byzantine behaviours, built in (a test feature): a correct replica made faulty by
transforming what it does, never by changing the replica.

A `Behaviour` sits between a replica and the network, in a node (`dtnbus node
--byzantine MODE`) and in the simulator alike:

- `outgoing(effects, now)` rewrites the effects one `step`/`tick` returned: only the
  messages (what the replica persists stays its own, honest, business), and answers to
  state requests, which a node hands out as `Send` effects too;
- `incoming(msg, frame)` may refuse an authenticated message before the replica sees it;
- `tick(now)` adds what a faulty replica sends unprompted (storms, replays, bombs) and
  releases what it held back; `next_wakeup()` says when that is due.

Control traffic a node needs to start and be inspected (Hello, `cluster status`) stays
honest. The modes (`MODES`):

    silent          sends nothing (crash-like, but keeps its state and disk)
    slow:F          every message leaves F times later than a normal hop would take it
    equivocate      as primary, different PRE-PREPAREs to different halves of the
                    replicas; as backup, conflicting PREPAREs, COMMITs and CHECKPOINTs
    censor[:CLIENT] refuses one client's requests (the first client when none is named),
                    so as primary it never orders them
    forge           every message leaves with a broken signature or in another member's
                    name; client requests forged; lying replies to clients
    replay          old frames (its own and others', client requests included) again
    garbage         random, mutated and oversized frames besides its honest messages
    proof-bomb      VIEW-CHANGE / NEW-VIEW / state replies with oversized, duplicated or
                    fabricated proofs
    lying-state     claims to be far ahead, then answers state transfer with forged,
                    reordered or out-of-range blocks
    view-storm      VIEW-CHANGEs for ever higher views (and SUSPECTs), 20 per second
    impersonate     as primary, orders requests it made up in the clients' names, with MAC
                    tags no other replica can check (5 per second)
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import msgpack

from dtnbus.crypto import MAC_BYTES
from dtnbus.effects import Broadcast, Effect, Forward, LookupReply, Send, SendClient
from dtnbus.messages import (
    Checkpoint,
    Commit,
    Message,
    NewView,
    PeerStatus,
    Prepare,
    PrePrepare,
    Reply,
    Request,
    StateReply,
    Suspect,
    ViewChange,
    batch_digest,
    commit_quorum,
    prepare_quorum,
    primary_of,
)
from dtnbus.wire import DEFAULT_MAX_FRAME, Envelope, payload_of

MESSAGE_EFFECTS = (Broadcast, Send, Forward, SendClient, LookupReply)
Signer = Callable[[Message], bytes]


@dataclass(frozen=True, slots=True)
class ModeSpec:
    """One behaviour with its argument: `slow:5`, `censor:alice`, `equivocate`."""

    name: str
    arg: str = ""

    def __str__(self) -> str:
        return f"{self.name}:{self.arg}" if self.arg else self.name


@dataclass
class Context:
    """What a behaviour may use: its replica (read only), its own key, the clients' names,
    its own randomness, the frame limit, and how long one normal hop takes."""

    replica: object  # dtnbus.replica.Replica; replaced by the caller after a restart
    sign: Signer
    clients: tuple[str, ...] = ()
    rng: random.Random = dataclasses.field(default_factory=random.Random)
    max_frame: int = DEFAULT_MAX_FRAME
    base_delay: float = 0.01
    collusion: dict | None = None  # shared by the Byzantine replicas of one simulation


class Behaviour:
    """A correct replica: everything passes unchanged. Modes override what they change."""

    name = "correct"

    def __init__(self, ctx: Context, arg: str = "") -> None:
        self.ctx = ctx
        self.rng = ctx.rng
        self.arg = arg

    # the hooks -------------------------------------------------------------------

    def outgoing(self, effects: list[Effect], now: float) -> list[Effect]:
        return effects

    def incoming(self, msg: Message, frame: bytes) -> bool:
        return True

    def tick(self, now: float) -> list[Effect]:
        return []

    def next_wakeup(self) -> float | None:
        return None

    def crashed(self) -> None:
        """The process died: whatever the behaviour held back dies with it."""

    # helpers ---------------------------------------------------------------------

    @property
    def me(self) -> int:
        return self.ctx.replica.id  # type: ignore[attr-defined]

    @property
    def n(self) -> int:
        return self.ctx.replica.n  # type: ignore[attr-defined]

    def peers(self) -> list[int]:
        return [i for i in range(self.n) if i != self.me]

    def sign(self, msg: Message) -> bytes:
        return self.ctx.sign(msg)

    def someone_else(self) -> int:
        peers = self.peers()
        return self.rng.choice(peers) if peers else self.me


class _Periodic(Behaviour):
    """A behaviour that also acts on its own every `interval` seconds (`act`)."""

    interval = 0.1

    def __init__(self, ctx: Context, arg: str = "") -> None:
        super().__init__(ctx, arg)
        self.next_at = 0.0

    def tick(self, now: float) -> list[Effect]:
        if now < self.next_at:
            return []
        self.next_at = now + self.interval
        return self.act(now)

    def act(self, now: float) -> list[Effect]:
        return []

    def next_wakeup(self) -> float | None:
        return self.next_at


def with_signature(msg: Message, signature: bytes) -> bytes:
    """The frame of `msg` with any signature we like (forged, zeroed, someone else's)."""
    return msgpack.packb([payload_of(msg), signature], use_bin_type=True)


def _resigned(frame: bytes) -> bytes:
    """`frame` with its signature (or its MAC tags) corrupted, the payload intact so that
    it parses."""
    try:
        parts = msgpack.unpackb(frame, raw=False)
    except Exception:
        return frame + b"\x00"
    if not (isinstance(parts, list) and parts and all(isinstance(p, bytes) for p in parts)):
        return frame + b"\x00"
    at = len(parts) - 1  # the signature, or the tags of a MAC authenticator
    mark = parts[at]
    parts[at] = bytes([mark[0] ^ 0x01]) + mark[1:] if mark else b"\x00" * 64
    return msgpack.packb(parts, use_bin_type=True)


def _fake_digest(*parts: object) -> bytes:
    return hashlib.sha256(repr(parts).encode()).digest()


# ------------------------------------------------------------------------- modes


class Silent(Behaviour):
    name = "silent"

    def outgoing(self, effects: list[Effect], now: float) -> list[Effect]:
        return [e for e in effects if not isinstance(e, MESSAGE_EFFECTS)]


class Slow(Behaviour):
    """Everything it sends leaves (F - 1) normal hops late, in order."""

    name = "slow"

    def __init__(self, ctx: Context, arg: str = "") -> None:
        super().__init__(ctx, arg)
        try:
            factor = float(arg or "10")
        except ValueError:
            raise ValueError(f"slow:{arg}: the factor must be a number >= 1") from None
        if not factor >= 1 or factor != factor or factor == float("inf"):
            raise ValueError(f"slow:{arg}: the factor must be a number >= 1")
        self.hold = (factor - 1) * ctx.base_delay
        self.held: deque[tuple[float, Effect]] = deque()

    def outgoing(self, effects: list[Effect], now: float) -> list[Effect]:
        if self.hold <= 0:
            return effects
        out = []
        for eff in effects:
            if isinstance(eff, MESSAGE_EFFECTS):
                self.held.append((now + self.hold, eff))
            else:
                out.append(eff)
        return out

    def tick(self, now: float) -> list[Effect]:
        out = []
        while self.held and self.held[0][0] <= now:
            out.append(self.held.popleft()[1])
        return out

    def next_wakeup(self) -> float | None:
        return self.held[0][0] if self.held else None

    def crashed(self) -> None:
        self.held.clear()


class Equivocate(Behaviour):
    """Says one thing to some replicas and another to the rest, consistently (a
    retransmission repeats the same lie to the same replica) and in collusion: every
    equivocating replica tells the same lie to the same replicas, backups vote for the
    batch the primary lied about, and each COMMITs both sides at once without waiting to
    be prepared. More than f of them fork the ledger (the simulator shows it); f of them
    are the strongest equivocation PBFT must survive."""

    name = "equivocate"
    MEMORY = 4096

    def __init__(self, ctx: Context, arg: str = "") -> None:
        super().__init__(ctx, arg)
        # (kind, view, seq) -> (replicas told the lie, the lie, its frame)
        self.lies: OrderedDict[tuple, tuple[frozenset[int], Message, bytes]] = OrderedDict()
        self.by_frame: dict[bytes, tuple] = {}  # our honest frame -> its lie's key

    @staticmethod
    def other_batch(view: int, seq: int, digests: tuple[bytes, ...]) -> tuple[bytes, ...]:
        """The batch every equivocator claims instead of `digests` (a function of them)."""
        if len(digests) >= 2:
            return tuple(reversed(digests))
        if digests:
            return ()
        return (_fake_digest("equivocate", view, seq),)

    def _fooled(self, view: int, seq: int) -> frozenset[int]:
        """Who hears the lie: the same replicas for every equivocator, about half."""
        return frozenset(p for p in self.peers() if (p + view + seq) % 2)

    def _lie(self, msg: Message) -> Message | None:
        told = self.ctx.collusion if self.ctx.collusion is not None else {}
        if isinstance(msg, PrePrepare):
            other = self.other_batch(msg.view, msg.seq, msg.digests)
            told[(msg.view, msg.seq)] = (batch_digest(msg.digests), batch_digest(other))
            return PrePrepare(msg.view, msg.seq, msg.replica, other)
        if isinstance(msg, Prepare | Commit):
            pair = told.get((msg.view, msg.seq))  # what the lying primary said, both ways
            slot = self.ctx.replica.slots.get(msg.seq)  # type: ignore[attr-defined]
            pp = getattr(slot, "preprepare", None)
            if pair is not None and msg.digest in pair:
                other = pair[1] if msg.digest == pair[0] else pair[0]
            elif pp is not None and batch_digest(pp.digests) == msg.digest:
                other = batch_digest(self.other_batch(msg.view, msg.seq, pp.digests))
            else:
                other = _fake_digest("vote", msg.view, msg.seq, msg.digest)
            return type(msg)(msg.view, msg.seq, msg.replica, other)
        if isinstance(msg, Checkpoint):
            return Checkpoint(msg.replica, msg.seq, _fake_digest("state", msg.seq, msg.state))
        return None

    def _split(self, eff: Broadcast) -> list[Effect] | None:
        msg = eff.msg
        if getattr(msg, "replica", None) != self.me:
            return None
        view, seq = getattr(msg, "view", 0), getattr(msg, "seq", 0)
        key = (type(msg).__name__, view, seq)
        held = self.lies.get(key)
        if held is None:
            lie = self._lie(msg)
            if lie is None:
                return None
            held = (self._fooled(view, seq), lie, self.sign(lie))
            self.lies[key] = held
            self.by_frame[eff.frame] = key
            while len(self.lies) > self.MEMORY:
                old, _ = self.lies.popitem(last=False)
                self.by_frame = {f: k for f, k in self.by_frame.items() if k != old}
        fooled, lie, lie_frame = held
        out: list[Effect] = [Send(p, lie, lie_frame) if p in fooled else Send(p, msg, eff.frame)
                             for p in self.peers()]
        if isinstance(msg, PrePrepare | Prepare):  # vote for both sides at once, unprepared
            digest = batch_digest(msg.digests) if isinstance(msg, PrePrepare) else msg.digest
            out += self._split(Broadcast(*self._signed(Commit(view, seq, self.me, digest)))) \
                or []
        return out

    def _signed(self, msg: Message) -> tuple[Message, bytes]:
        return msg, self.sign(msg)

    def outgoing(self, effects: list[Effect], now: float) -> list[Effect]:
        out: list[Effect] = []
        for eff in effects:
            if isinstance(eff, Broadcast):
                split = self._split(eff)
                out.extend(split if split is not None else [eff])
            elif isinstance(eff, Forward | Send) and eff.frame in self.by_frame:
                fooled, lie, lie_frame = self.lies[self.by_frame[eff.frame]]
                out.append(Send(eff.to, lie, lie_frame) if eff.to in fooled else eff)
            else:
                out.append(eff)
        return out


class Censor(Behaviour):
    """Never lets one client's requests in: as primary it never orders them."""

    name = "censor"

    def __init__(self, ctx: Context, arg: str = "") -> None:
        super().__init__(ctx, arg)
        self.victim = arg or (ctx.clients[0] if ctx.clients else "")

    def incoming(self, msg: Message, frame: bytes) -> bool:
        return not (isinstance(msg, Request) and msg.client == self.victim)


class Forge(_Periodic):
    """Nothing it sends is what it claims: broken signatures, other members' names,
    requests in a client's name, and replies to clients with a false result."""

    name = "forge"
    interval = 0.2

    def _forgeries(self, msg: Message, frame: bytes) -> list[tuple[Message, bytes]]:
        out = [(msg, _resigned(frame))]
        if hasattr(msg, "replica") and not isinstance(msg, Reply):
            other = self.someone_else()
            changes: dict[str, object] = {"replica": other}
            if isinstance(msg, Prepare | Commit):
                changes["digest"] = _fake_digest("forged", msg.seq, other)
            claimed = dataclasses.replace(msg, **changes)  # type: ignore[type-var]
            out.append((claimed, self.sign(claimed)))  # our key, their name
        return out

    def outgoing(self, effects: list[Effect], now: float) -> list[Effect]:
        out: list[Effect] = []
        for eff in effects:
            if isinstance(eff, Broadcast):
                out.extend(Broadcast(m, f) for m, f in self._forgeries(eff.msg, eff.frame))
            elif isinstance(eff, Send):
                out.extend(Send(eff.to, m, f) for m, f in self._forgeries(eff.msg, eff.frame))
            elif isinstance(eff, Forward):
                out.append(Forward(eff.to, _resigned(eff.frame)))
            elif isinstance(eff, SendClient):
                r = eff.msg
                out.append(SendClient(eff.client, dataclasses.replace(
                    r, result=_fake_digest("lie", r.seq, r.result))))
            elif not isinstance(eff, LookupReply):
                out.append(eff)
        return out

    def act(self, now: float) -> list[Effect]:
        clients = self.ctx.clients or ("client",)
        number = int(now * 1000) + 1
        forged = Request(self.rng.choice(clients), 1, number, (b"forged",))
        stranger = Request("mallory", 1, number, (b"unknown client",))
        return [Forward(p, self.sign(m)) for p in self.peers() for m in (forged, stranger)]


class Impersonate(_Periodic):
    """As primary, feeds its own replica requests no client sent, in the clients' names,
    MAC-tagged (its host takes them as if its tag held; a faulty node's host could), so
    the replica orders them. Each backup's tag fails: the request can never be vouched
    for, the slot waits for a view change, and the backups stop trusting those clients'
    tags for a while (`Replica._distrust`). What that costs the correct clients (they
    sign) is what this mode measures."""

    name = "impersonate"
    interval = 0.2

    def __init__(self, ctx: Context, arg: str = "") -> None:
        super().__init__(ctx, arg)
        self.made = 0

    def act(self, now: float) -> list[Effect]:
        replica = self.ctx.replica
        if not (replica.is_primary and replica.active):  # type: ignore[attr-defined]
            return []
        self.made += 1
        request = Request(self.rng.choice(self.ctx.clients or ("client",)), 1,
                          2**40 + self.made, (b"impersonated",))
        payload = payload_of(request)
        tags = self.rng.randbytes(MAC_BYTES * self.n)
        frame = msgpack.packb([payload, b"", tags], use_bin_type=True)
        envelope = Envelope(request, hashlib.sha256(payload).digest(), frame, (), True)
        return replica.step(envelope, now)  # type: ignore[attr-defined]


class Replay(_Periodic):
    """Sends what it has seen again: old votes, old view changes, old client requests."""

    name = "replay"
    interval = 0.1
    KEEP = 512

    def __init__(self, ctx: Context, arg: str = "") -> None:
        super().__init__(ctx, arg)
        self.seen: list[tuple[Message, bytes]] = []
        self.count = 0

    def _remember(self, msg: Message, frame: bytes) -> None:
        self.count += 1
        if len(self.seen) < self.KEEP:
            self.seen.append((msg, frame))
        else:  # a uniform sample of everything seen (reservoir sampling)
            k = self.rng.randrange(self.count)
            if k < self.KEEP:
                self.seen[k] = (msg, frame)

    def incoming(self, msg: Message, frame: bytes) -> bool:
        self._remember(msg, frame)
        return True

    def _old(self, count: int) -> list[Effect]:
        if not self.seen:
            return []
        out: list[Effect] = []
        for _ in range(count):
            msg, frame = self.rng.choice(self.seen)
            out.append(Send(self.someone_else(), msg, frame))
        return out

    def outgoing(self, effects: list[Effect], now: float) -> list[Effect]:
        for eff in effects:
            if isinstance(eff, Broadcast | Send):
                self._remember(eff.msg, eff.frame)
        return effects + self._old(1 if self.rng.random() < 0.5 else 0)

    def act(self, now: float) -> list[Effect]:
        return self._old(4)


_OVERSIZED: dict[int, bytes] = {}


class Garbage(_Periodic):
    """Besides its honest messages: random bytes, mutated copies of real frames, frames
    of a valid shape with values out of range, and now and then one over the size limit."""

    name = "garbage"
    interval = 0.1
    OVERSIZE_EVERY = 2.0

    def __init__(self, ctx: Context, arg: str = "") -> None:
        super().__init__(ctx, arg)
        self.recent: deque[bytes] = deque(maxlen=64)
        self.next_oversize = 0.0

    def _mutated(self, frame: bytes) -> bytes:
        rng = self.rng
        kind = rng.randrange(5)
        if kind == 0:
            return rng.randbytes(rng.randrange(1, 300))
        if kind == 1 and frame:
            data = bytearray(frame)
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            return bytes(data)
        if kind == 2 and len(frame) > 1:
            return frame[: rng.randrange(1, len(frame))]
        if kind == 3:
            return frame + rng.randbytes(rng.randrange(1, 64))
        # the right outer shape, nonsense inside: huge, negative or mistyped fields
        inner = rng.choice([[2, -1, 2**64 - 1, self.me, []], [3, 0, 1, self.me, b"short"],
                            [99, 1], [11, 1, self.me, 0, [b"x" * 10] * 3], "text", [None]])
        return msgpack.packb([msgpack.packb(inner), rng.randbytes(64)])

    def _oversized(self) -> bytes:
        size = self.ctx.max_frame + 1
        if size not in _OVERSIZED:
            _OVERSIZED.clear()
            _OVERSIZED[size] = bytes(size)
        return _OVERSIZED[size]

    def _junk(self, now: float, frame: bytes) -> Effect:
        if now >= self.next_oversize:
            self.next_oversize = now + self.OVERSIZE_EVERY
            return Forward(self.someone_else(), self._oversized())
        return Forward(self.someone_else(), self._mutated(frame))

    def outgoing(self, effects: list[Effect], now: float) -> list[Effect]:
        out = list(effects)
        for eff in effects:
            if isinstance(eff, Broadcast | Send | Forward):
                self.recent.append(eff.frame)
                if self.rng.random() < 0.5:
                    out.append(self._junk(now, eff.frame))
        return out

    def act(self, now: float) -> list[Effect]:
        frame = self.rng.choice(self.recent) if self.recent else b""
        return [self._junk(now, frame) for _ in range(3)]


class ProofBomb(_Periodic):
    """Messages that carry proofs, stuffed: duplicated, too many, or fabricated (in other
    members' names, so only a signature check could tell, if the shape let it get that
    far). Its honest messages still go out."""

    name = "proof-bomb"
    interval = 0.25

    def __init__(self, ctx: Context, arg: str = "") -> None:
        super().__init__(ctx, arg)
        self.round = 0
        self.built: OrderedDict[tuple, list[tuple[Message, bytes]]] = OrderedDict()

    def _cached(self, key: tuple, build: Callable[[], list[Message]]
                ) -> list[tuple[Message, bytes]]:
        """Bombs are costly to sign and the same ones serve again: build each once."""
        bombs = self.built.get(key)
        if bombs is None:
            bombs = self.built[key] = [(b, self.sign(b)) for b in build()]
            while len(self.built) > 64:
                self.built.popitem(last=False)
        return bombs

    @property
    def q(self) -> int:
        return commit_quorum(self.n)

    def _window(self) -> int:
        return self.ctx.replica.config.window  # type: ignore[attr-defined]

    def _certificate(self, view: int, seq: int) -> list[bytes]:
        """A prepared certificate in other members' names: right shape, wrong signatures."""
        digests = (_fake_digest("bomb", view, seq),)
        pp = PrePrepare(view, seq, primary_of(view, self.n), digests)
        voters = [r for r in range(self.n) if r != pp.replica][: prepare_quorum(self.n)]
        frames = [self.sign(pp)]
        frames += [self.sign(Prepare(view, seq, r, batch_digest(digests))) for r in voters]
        return frames

    def _view_changes(self, new_view: int, stable: int, proofs: tuple[bytes, ...]
                      ) -> list[ViewChange]:
        me, q = self.me, self.q
        window = self._window()
        bombs = []
        if proofs:
            bombs.append(ViewChange(new_view, me, stable, proofs + proofs[:1]))  # repeated
        fake_cps = tuple(self.sign(Checkpoint(r, stable or 1, _fake_digest("cp", r)))
                         for r in range(min(self.n, q + 2)))
        bombs.append(ViewChange(new_view, me, stable or 1, fake_cps))  # fabricated checkpoint
        many = tuple(self.sign(Prepare(max(0, new_view - 1), stable + 1 + i, me,
                                       _fake_digest(i))) for i in range(q + window * q + 1))
        bombs.append(ViewChange(new_view, me, stable, many))  # more proofs than can be
        certs: list[bytes] = []
        for seq in range(stable + 1, stable + 1 + min(window, 16)):
            certs += self._certificate(max(0, new_view - 1), seq)
        bombs.append(ViewChange(new_view, me, stable, tuple(certs)))  # fabricated certs
        return bombs

    def _new_view(self, view: int, stable: int) -> NewView:
        votes = []
        for r in range(self.n):
            certs: list[bytes] = []
            for seq in range(stable + 1, stable + 3):
                certs += self._certificate(max(0, view - 1), seq)
            votes.append(self.sign(ViewChange(view, r, stable, tuple(certs))))
        return NewView(view, self.me, tuple(votes))

    def _state_bombs(self, reply: StateReply) -> list[StateReply]:
        q = self.q
        fake_commits = tuple(self.sign(Commit(0, reply.from_seq + i // q, i % q,
                                              _fake_digest("c", i))) for i in range(q * 4))
        out = [dataclasses.replace(reply, proof=reply.proof + reply.proof[:1])]  # repeated
        out.append(dataclasses.replace(reply, proof=fake_commits))  # fabricated
        out.append(dataclasses.replace(reply, blocks=reply.blocks * 8,
                                       proof=fake_commits * 2))  # too much
        return out

    def outgoing(self, effects: list[Effect], now: float) -> list[Effect]:
        out: list[Effect] = []
        for eff in effects:
            out.append(eff)
            msg = getattr(eff, "msg", None)
            if isinstance(eff, Broadcast) and isinstance(msg, ViewChange):
                out.extend(Broadcast(b, f) for b, f in self._cached(
                    ("vc", msg.new_view, msg.stable_seq, len(msg.proofs)),
                    lambda m=msg: self._view_changes(m.new_view, m.stable_seq, m.proofs)))
            elif isinstance(eff, Send) and isinstance(msg, StateReply):
                out.extend(Send(eff.to, b, self.sign(b)) for b in self._state_bombs(msg))
        return out

    def act(self, now: float) -> list[Effect]:
        replica = self.ctx.replica
        view = replica.view  # type: ignore[attr-defined]
        stable = replica.checkpoints.stable  # type: ignore[attr-defined]
        self.round += 1
        kind = self.round % 3
        if kind == 0:
            bomb, frame = self.rng.choice(self._cached(
                ("vc", view + 1, stable.seq, len(stable.proof)),
                lambda: self._view_changes(view + 1, stable.seq, stable.proof)))
            return [Broadcast(bomb, frame)]
        if kind == 1:  # a NEW-VIEW for the next view we would lead, from fabricated votes
            nv_view = view + 1 + (self.me - view - 1) % self.n
            return [Broadcast(b, f) for b, f in self._cached(
                ("nv", nv_view, stable.seq), lambda: [self._new_view(nv_view, stable.seq)])]
        reply = StateReply(self.me, replica.last_executed + 1,  # type: ignore[attr-defined]
                           2**62, (), (), ())
        return [Send(p, b, self.sign(b)) for p in self.peers()
                for b in self._state_bombs(reply)[1:2]]


class LyingState(Behaviour):
    """Claims in its status to be far ahead, so that replicas that believe it ask it for
    state, and answers with blocks that are forged, reordered or out of range."""

    name = "lying-state"

    def __init__(self, ctx: Context, arg: str = "") -> None:
        super().__init__(ctx, arg)
        self.round = 0

    def _boast(self, ps: PeerStatus) -> PeerStatus:
        window = self.ctx.replica.config.window  # type: ignore[attr-defined]
        return PeerStatus(ps.replica, ps.view, True, ps.last_executed + 3 * window,
                          ps.stable_seq + 2 * window)

    def _lie(self, reply: StateReply) -> StateReply:
        self.round += 1
        kind = self.round % 5
        blocks = [msgpack.unpackb(b, raw=False) for b in reply.blocks]
        if kind == 0 and len(blocks) >= 2:  # reordered
            blocks.reverse()
        elif kind == 1 and blocks:  # forged requests: the clients never signed these
            for block in blocks:
                block[2] = [with_signature(Request("client", 1, i + 1, (b"forged",)),
                                           bytes(64)) for i in range(len(block[2]))]
        elif kind == 2:  # out of range
            blocks = [[2**63 - 1 - i, b"\x00" * 32, []] for i in range(max(1, len(blocks)))]
            return dataclasses.replace(reply, height=2**63 - 1, blocks=tuple(
                msgpack.packb(b, use_bin_type=True) for b in blocks))
        elif kind == 3:  # a chain of its own, "certified" in others' names
            q = commit_quorum(self.n)
            digest = _fake_digest("lie", reply.from_seq)
            fake = [msgpack.packb([reply.from_seq, digest, []], use_bin_type=True)]
            proof = tuple(self.sign(Commit(0, reply.from_seq, r, batch_digest((digest,))))
                          for r in range(q))
            return dataclasses.replace(reply, blocks=tuple(fake), proof=proof,
                                       height=reply.from_seq + 10_000)
        else:  # nothing at all, while claiming much more
            return dataclasses.replace(reply, blocks=(), proof=(), height=2**62)
        return dataclasses.replace(reply, blocks=tuple(
            msgpack.packb(b, use_bin_type=True) for b in blocks))

    def outgoing(self, effects: list[Effect], now: float) -> list[Effect]:
        out: list[Effect] = []
        for eff in effects:
            msg = getattr(eff, "msg", None)
            if isinstance(eff, Broadcast) and isinstance(msg, PeerStatus):
                boast = self._boast(msg)
                out.append(Broadcast(boast, self.sign(boast)))
            elif isinstance(eff, Send) and isinstance(msg, StateReply):
                lie = self._lie(msg)
                out.append(Send(eff.to, lie, self.sign(lie)))
            else:
                out.append(eff)
        return out


class ViewStorm(_Periodic):
    """VIEW-CHANGEs for ever higher views, each well formed and validly signed, and a
    SUSPECT of every primary, far faster than any correct replica would send them."""

    name = "view-storm"
    interval = 0.05

    def __init__(self, ctx: Context, arg: str = "") -> None:
        super().__init__(ctx, arg)
        self.next_view = 1

    def act(self, now: float) -> list[Effect]:
        replica = self.ctx.replica
        stable = replica.checkpoints.stable  # type: ignore[attr-defined]
        view = replica.view  # type: ignore[attr-defined]
        self.next_view = max(self.next_view, view + 1)
        vc = ViewChange(self.next_view, self.me, stable.seq, stable.proof)
        self.next_view += 1
        suspect = Suspect(self.me, view)
        return [Broadcast(vc, self.sign(vc)), Broadcast(suspect, self.sign(suspect))]


MODES: dict[str, type[Behaviour]] = {cls.name: cls for cls in (
    Silent, Slow, Equivocate, Censor, Forge, Replay, Garbage, ProofBomb, LyingState,
    ViewStorm, Impersonate)}
MODE_HELP = ("silent, slow:F, equivocate, censor[:CLIENT], forge, replay, garbage, "
             "proof-bomb, lying-state, view-storm, impersonate")


def parse_mode(text: str) -> ModeSpec:
    """`slow:5` -> ModeSpec('slow', '5'); ValueError with the list of modes if unknown."""
    name, _, arg = text.strip().partition(":")
    if name not in MODES:
        raise ValueError(f"unknown Byzantine mode {text.strip()!r}; modes: {MODE_HELP}")
    if arg and name not in ("slow", "censor"):
        raise ValueError(f"Byzantine mode {name!r} takes no argument (got {text.strip()!r})")
    if name == "slow":
        Slow(Context(replica=None, sign=lambda m: b""), arg)  # validates the factor
    return ModeSpec(name, arg)


def parse_assignment(text: str, n: int | None = None) -> tuple[dict[int, ModeSpec],
                                                               list[ModeSpec]]:
    """`3=equivocate,2=silent` -> {3: equivocate, 2: silent}. An entry without `ID=` is a
    mode for a replica the caller picks (the simulator: a different one per seed)."""
    fixed: dict[int, ModeSpec] = {}
    unplaced: list[ModeSpec] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        ident, sep, mode = part.partition("=")
        if not sep:
            unplaced.append(parse_mode(part))
            continue
        try:
            replica = int(ident)
        except ValueError:
            raise ValueError(f"{part!r}: expected ID=MODE with a replica id, e.g. "
                             "3=equivocate") from None
        if replica < 0 or (n is not None and replica >= n):
            raise ValueError(f"{part!r}: replica {replica} is not in 0..{(n or 1) - 1}")
        if replica in fixed:
            raise ValueError(f"replica {replica} is given two Byzantine modes")
        fixed[replica] = parse_mode(mode)
    return fixed, unplaced


def make_behaviour(spec: ModeSpec | None, ctx: Context) -> Behaviour:
    """The behaviour for `spec` (None: correct)."""
    if spec is None:
        return Behaviour(ctx)
    return MODES[spec.name](ctx, spec.arg)
