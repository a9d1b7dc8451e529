"""Frames for fuzzing: a corpus of real frames of every kind, and mutations of them.

A `Corpus` holds real signed frames by message kind: captured off a running cluster
(what the nodes broadcast, what a client sends and receives, the StateReply a node
serves) and, for kinds the capture window did not produce, built and signed with the
members' real keys (`complete`). `Mutator` turns them into hostile input: bit flips,
byte overwrites with msgpack type markers, truncation, extension, chunk insertion and
deletion, splices of two frames, field-level rewrites of the decoded payload (wrong
types, huge and negative integers, wrong lengths, extra or missing fields, other kinds)
kept under the old signature, multipart frames, and plain random bytes and random
msgpack. With a `resign` signer, field-level rewrites are also signed again with a
member's real key: what a Byzantine member, not only a stranger, can send.

Frames are `[payload, signature]` or, for requests and replies, PBFT's MAC authenticator
`[payload, b"", tags]` (`wire`); mutations keep, break or swap either form.
`classify` says what a node's decoder must do with a frame (the reason it drops it at
parse time, or that it parses), with the same `Codec` the node uses. Pure: no sockets.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import msgpack

from dtnbus.errors import PeerError
from dtnbus.messages import (
    MESSAGE_TYPES,
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
    Request,
    StateReply,
    StateRequest,
    Status,
    StatusQuery,
    Suspect,
    ViewChange,
    batch_digest,
    kind_name,
)
from dtnbus.wire import Codec

INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xC0, 0xC1, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6,
                     0xCA, 0xCB, 0xCC, 0xCF, 0xD0, 0xD3, 0xD9, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF,
                     0x90, 0x92, 0x9F, 0xA0, 0xBF, 0xFF)
INTERESTING_VALUES: tuple[object, ...] = (
    0, -1, 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), b"", b"\x00" * 31,
    b"\x00" * 33, b"\xff" * 32, "", "x" * 257, [], [b"\x00" * 32] * 3, [[1, 2, 3]], None, True,
    False, 1.5, float("nan"), float("inf"), {"a": 1}, [b"x"] * 1025)
MUTATIONS = ("bitflip", "bytes", "truncate", "extend", "insert", "delete", "splice",
             "field", "kind", "arity", "signature", "random_bytes", "random_msgpack")


@dataclass
class Corpus:
    """Real frames by kind name (`messages.kind_name`)."""

    frames: dict[str, list[bytes]] = field(default_factory=dict)
    captured: set[str] = field(default_factory=set)  # kinds taken off the wire

    def add(self, kind: str, frame: bytes, captured: bool = True, limit: int = 64) -> None:
        held = self.frames.setdefault(kind, [])
        if len(held) < limit and frame not in held:
            held.append(frame)
            if captured:
                self.captured.add(kind)

    def kinds(self) -> list[str]:
        return sorted(k for k, v in self.frames.items() if v)

    def all_frames(self) -> list[bytes]:
        return [f for k in self.kinds() for f in self.frames[k]]

    def complete(self, signers: dict[int | str, Codec], n: int, view: int = 0,
                 seq: int = 1) -> list[str]:
        """Build and sign, with real member keys, a frame of every kind not captured;
        returns the kinds built. `signers` maps replica ids and client ids to codecs
        that sign as them."""
        replicas = sorted(k for k in signers if isinstance(k, int))
        client = next((k for k in signers if isinstance(k, str)), None)
        r0 = replicas[0]
        digest = hashlib.sha256(b"fuzz").digest()
        built: list[str] = []

        def put(msg: Message, signer: int | str) -> None:
            name = kind_name(msg.KIND)
            if name not in self.frames:
                self.add(name, signers[signer].encode(msg), captured=False)
                built.append(name)

        request = None
        if client is not None:
            request = Request(client, 1, 1, (b"fuzz transaction",))
            put(request, client)
            put(StatusQuery(client, 1), client)
        put(PrePrepare(view, seq, view % n, (digest,)), view % n)
        put(Prepare(view, seq, r0, batch_digest((digest,))), r0)
        put(Commit(view, seq, r0, batch_digest((digest,))), r0)
        put(Reply(view, r0, client or "client", 1, 1, digest, seq, 0, digest), r0)
        put(Checkpoint(r0, seq, digest), r0)
        put(Fetch(r0, (digest,)), r0)
        put(Hello(r0, n - 1), r0)
        put(Status(r0, 1, view, seq, digest, 0, True, 0, 0, (("prepared", 1, 0.5),)), r0)
        checkpoints = tuple(signers[r].encode(Checkpoint(r, 16, digest)) for r in replicas)
        vcs = tuple(signers[r].encode(ViewChange(view + 1, r, 16, checkpoints))
                    for r in replicas)
        put(ViewChange(view + 1, r0, 16, checkpoints), r0)
        leader = (view + 1) % n
        if leader in signers:
            put(NewView(view + 1, leader, vcs), leader)
        put(StateRequest(r0, 1), r0)
        commits = tuple(signers[r].encode(Commit(view, 1, r, batch_digest((digest,))))
                        for r in replicas)
        block = msgpack.packb([1, digest, [signers[client].encode(request)]
                               if client is not None and request is not None else []],
                              use_bin_type=True)
        put(StateReply(r0, 1, 1, (block,), commits, ()), r0)
        put(PeerStatus(r0, view, True, seq, 0), r0)
        put(Suspect(r0, view), r0)
        return built


@dataclass(frozen=True, slots=True)
class Fuzzed:
    """One hostile frame (or multipart message) and how it was made."""

    parts: tuple[bytes, ...]  # one part normally; more for a multipart message
    mutation: str
    origin: str  # the kind it was mutated from ("" for random input)

    @property
    def frame(self) -> bytes:
        return self.parts[0] if len(self.parts) == 1 else b""

    @property
    def frames(self) -> tuple[bytes, ...]:
        """What a node reads: a ROUTER takes each part of a multipart message (a client's
        bundle) as one frame."""
        return self.parts


class Mutator:
    """Hostile frames from a corpus, reproducible from `seed`."""

    def __init__(self, corpus: Corpus, seed: int = 0,
                 resign: Callable[[bytes], bytes] | None = None,
                 resign_share: float = 0.0, multipart_share: float = 0.002) -> None:
        if not corpus.kinds():
            raise ValueError("an empty corpus has nothing to mutate")
        self.corpus = corpus
        self.rng = random.Random(seed)
        self.resign = resign  # signs a payload as a member: frame = [payload, sign(...)]
        self.resign_share = resign_share
        self.multipart_share = multipart_share
        self.kinds = corpus.kinds()
        self._originals = set(corpus.all_frames())

    def frames(self, count: int) -> Iterator[Fuzzed]:
        made = 0
        while made < count:
            item = self.one()
            if item.parts[0] in self._originals and len(item.parts) == 1:
                continue  # a replay of an untouched frame is not fuzz
            made += 1
            yield item

    def one(self) -> Fuzzed:
        rng = self.rng
        if rng.random() < self.multipart_share:
            # a node takes each part as one frame (a client's bundle): hostile parts, never
            # an untouched original, whose replay would set honest traffic going
            a, b = self._hostile_part(), self._hostile_part()
            return Fuzzed((a, b) + ((b"",) if rng.random() < 0.5 else ()), "multipart", "")
        return self._one_frame()

    def _hostile_part(self) -> bytes:
        while True:
            part = self._one_frame().parts[0]
            if part not in self._originals:
                return part

    def _one_frame(self) -> Fuzzed:
        rng = self.rng
        kind, frame = self._pick()
        mutation = rng.choice(MUTATIONS)
        out = getattr(self, f"_{mutation}")(frame)
        if mutation in ("field", "kind", "arity") and self.resign is not None and \
                rng.random() < self.resign_share:
            out = self._signed_again(out)
            mutation += "+resigned"
        return Fuzzed((out,), mutation, "" if mutation.startswith("random") else kind)

    def _pick(self) -> tuple[str, bytes]:
        kind = self.rng.choice(self.kinds)
        return kind, self.rng.choice(self.corpus.frames[kind])

    # ------------------------------------------------------------ byte-level

    def _bitflip(self, frame: bytes) -> bytes:
        data = bytearray(frame)
        for _ in range(self.rng.randint(1, 8)):
            i = self.rng.randrange(len(data) * 8)
            data[i // 8] ^= 1 << (i % 8)
        return bytes(data)

    def _bytes(self, frame: bytes) -> bytes:
        data = bytearray(frame)
        for _ in range(self.rng.randint(1, 4)):
            i = self.rng.randrange(len(data))
            data[i] = self.rng.choice(INTERESTING_BYTES) if self.rng.random() < 0.7 \
                else self.rng.randrange(256)
        return bytes(data)

    def _truncate(self, frame: bytes) -> bytes:
        return frame[: self.rng.randrange(len(frame))]

    def _extend(self, frame: bytes) -> bytes:
        return frame + self.rng.randbytes(self.rng.randint(1, 64))

    def _insert(self, frame: bytes) -> bytes:
        i = self.rng.randrange(len(frame) + 1)
        return frame[:i] + self.rng.randbytes(self.rng.randint(1, 32)) + frame[i:]

    def _delete(self, frame: bytes) -> bytes:
        i = self.rng.randrange(len(frame))
        return frame[:i] + frame[i + self.rng.randint(1, 32):]

    def _splice(self, frame: bytes) -> bytes:
        other = self._pick()[1]
        return frame[: self.rng.randrange(len(frame) + 1)] + \
            other[self.rng.randrange(len(other) + 1):]

    def _random_bytes(self, frame: bytes) -> bytes:
        return self.rng.randbytes(self.rng.choice((0, 1, 2, 8, 64, 300, 2000)))

    def _random_msgpack(self, frame: bytes) -> bytes:
        payload = msgpack.packb([self.rng.choice(list(MESSAGE_TYPES)),
                                 *(self._value() for _ in range(self.rng.randint(0, 12)))],
                                use_bin_type=True)
        return msgpack.packb([payload, self.rng.randbytes(64)], use_bin_type=True)

    # ------------------------------------------------------------ field-level

    def _decoded(self, frame: bytes) -> tuple[list, list[bytes]] | None:
        """(payload items, what follows the payload: [signature] or [b"", MAC tags])."""
        try:
            outer = msgpack.unpackb(frame, raw=False)
            items = msgpack.unpackb(outer[0], raw=False, strict_map_key=False)
        except Exception:
            return None
        if not (isinstance(outer, list) and len(outer) in (2, 3) and isinstance(items, list)
                and items):
            return None
        return items, list(outer[1:])

    def _repack(self, items: list, rest: list[bytes]) -> bytes:
        payload = msgpack.packb(items, use_bin_type=True)
        return msgpack.packb([payload, *rest], use_bin_type=True)

    def _field(self, frame: bytes) -> bytes:
        decoded = self._decoded(frame)
        if decoded is None or len(decoded[0]) < 2:
            return self._bitflip(frame)
        items, signature = decoded
        i = self.rng.randrange(1, len(items))
        items[i] = self._value() if self.rng.random() < 0.8 else self._nudge(items[i])
        return self._repack(items, signature)

    def _kind(self, frame: bytes) -> bytes:
        decoded = self._decoded(frame)
        if decoded is None:
            return self._bitflip(frame)
        items, signature = decoded
        items[0] = self.rng.choice([*MESSAGE_TYPES, 0, 17, 255, -1, 2**40, "1", None])
        return self._repack(items, signature)

    def _arity(self, frame: bytes) -> bytes:
        decoded = self._decoded(frame)
        if decoded is None:
            return self._bitflip(frame)
        items, signature = decoded
        if self.rng.random() < 0.5 and len(items) > 1:
            del items[self.rng.randrange(1, len(items))]
        else:
            items.insert(self.rng.randrange(1, len(items) + 1), self._value())
        return self._repack(items, signature)

    def _signature(self, frame: bytes) -> bytes:
        """Change the signature (or a MAC tag), or swap one authenticator for the other."""
        decoded = self._decoded(frame)
        if decoded is None:
            return self._bitflip(frame)
        items, rest = decoded
        auth = rest[-1]
        choice = self.rng.randrange(6)
        if choice == 4:  # a signed frame passed off as MAC-tagged, or the reverse
            rest = [b"", auth] if len(rest) == 1 else [auth]
        elif choice == 5:
            rest = [self.rng.randbytes(16), *rest] if len(rest) == 1 else [auth, b""]
        else:
            rest = [*rest[:-1], (auth[:-1], auth + b"\x00", bytes(len(auth)),
                                 self.rng.randbytes(len(auth)))[choice]]
        return self._repack(items, rest)

    def _signed_again(self, frame: bytes) -> bytes:
        try:
            payload = msgpack.unpackb(frame, raw=False)[0]
        except Exception:
            return frame
        if not isinstance(payload, bytes) or self.resign is None:
            return frame
        return msgpack.packb([payload, self.resign(payload)], use_bin_type=True)

    def _value(self) -> object:
        rng = self.rng
        pick = rng.random()
        if pick < 0.5:
            return rng.choice(INTERESTING_VALUES)
        if pick < 0.7:
            return rng.randrange(-(2**63), 2**64)
        if pick < 0.85:
            return rng.randbytes(rng.choice((0, 1, 31, 32, 33, 64)))
        return [rng.randbytes(32) for _ in range(rng.randint(0, 4))]

    def _nudge(self, value: object) -> object:
        if isinstance(value, bool):
            return not value
        if isinstance(value, int):
            return value + self.rng.choice((-1, 1, 2**32, -(2**62)))
        if isinstance(value, bytes) and value:
            return value[:-1] if self.rng.random() < 0.5 else value + b"\x00"
        if isinstance(value, list) and value:
            return value + value if self.rng.random() < 0.5 else value[:-1]
        return self._value()


def classify(codec: Codec, frame: bytes) -> str:
    """What a node's decoder does with `frame` before the replica sees it: the drop
    reason of `Codec.parse`, or "parsed" (the replica's `admit`, the signature check and
    the nested proofs decide the rest)."""
    try:
        codec.parse(frame)
    except PeerError as exc:
        return exc.reason
    return "parsed"


def decode_fully(codec: Codec, frame: bytes) -> str:
    """Parse, every nested proof, and every signature: "valid" or the PeerError reason."""
    try:
        codec.authenticate(codec.parse(frame))
    except PeerError as exc:
        return exc.reason
    return "valid"
