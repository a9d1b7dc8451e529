"""Property-based fuzz of the decoder (issue 11): whatever bytes arrive, `Codec.parse` and
`Codec.authenticate` raise nothing but `PeerError`, and never accept a message whose
authenticator does not hold.

The second property is checked without trusting the codec: every payload a member
legitimately authenticated is recorded when it is made; a frame the decoder accepts must
carry one of those payloads (and so must every nested proof in it), and its signature is
verified again here with libsodium directly, or its MAC tag recomputed from the *sender's*
side of the pair key. Inputs: random bytes, random msgpack, well-typed payloads of every
kind under random signatures or tags, and legitimate frames of every kind mutated by
hypothesis (byte edits, splices) and by `dtnbus.fuzzing.Mutator` (field rewrites, wrong
types, swapped authenticators, re-signed by a member).
"""

from __future__ import annotations

import hashlib

import msgpack
import nacl.signing
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dtnbus.crypto import MAC_BYTES, MacKeys, Signer, Verifier, generate_key, mac
from dtnbus.effects import TransferredBlock
from dtnbus.errors import PeerError
from dtnbus.fuzzing import Corpus, Mutator
from dtnbus.messages import (
    BOOL,
    BYTES,
    BYTES_LIST,
    DIGEST,
    DIGEST_LIST,
    FLOAT,
    INT,
    MESSAGE_TYPES,
    PHASE_LIST,
    STR,
    Commit,
    Reply,
    Request,
    StateReply,
    batch_digest,
    kind_name,
    sender_of,
)
from dtnbus.state_transfer import check_reply_shape, verify_blocks
from dtnbus.wire import Codec, Envelope, payload_of

N = 4
CLIENT = "c"
SETTINGS = settings(max_examples=600, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


class World:
    """Four replicas and a client with real Ed25519 keys; node 0 is the one that decodes."""

    def __init__(self) -> None:
        keys = [generate_key("ed25519") for _ in range(N)]
        client_key = generate_key("ed25519")
        self.replicas = {i: Verifier(k.public_key()) for i, k in enumerate(keys)}
        self.clients = {CLIENT: Verifier(client_key.public_key())}
        self.signers = {i: Signer(k) for i, k in enumerate(keys)}
        self.client_signer = Signer(client_key)
        self.codecs: dict[int | str, Codec] = {
            i: Codec(s, self.replicas, self.clients, me=i) for i, s in self.signers.items()}
        self.codecs[CLIENT] = Codec(self.client_signer, self.replicas, self.clients)
        self.node = self.codecs[0]
        self.legit: set[bytes] = set()  # every payload a member authenticated
        self.corpus = Corpus()
        self._raw = {i: v.raw_key for i, v in self.replicas.items()}
        self._raw[CLIENT] = self.clients[CLIENT].raw_key  # type: ignore[index]

    def keep(self, frame: bytes) -> bytes:
        self.legit.add(msgpack.unpackb(frame)[0])
        return frame

    def build(self) -> None:
        signers: dict[int | str, Codec] = dict(self.codecs)
        self.corpus.complete(signers, N)
        for frames in self.corpus.frames.values():
            for frame in frames:
                self.keep(frame)
                for inner in _nested_frames(frame):
                    self.keep(inner)
        request = Request(CLIENT, 5, 9, (b"tx", b"tx2"))
        frame, _ = self.codecs[CLIENT].encode_request(request, "mac")
        self.corpus.add("request", self.keep(frame), captured=False)
        reply = Reply(0, 1, CLIENT, 5, 9, b"d" * 32, 3, 0, b"h" * 32)
        self.corpus.add("reply", self.keep(self.codecs[1].encode_reply(
            reply, self._raw[0])), captured=False)  # a tag node 0 can check

    def resign(self, payload: bytes) -> bytes:
        """Replica 3 signs whatever it likes (a Byzantine member); recorded as legit."""
        self.legit.add(payload)
        return self.signers[3].sign(hashlib.sha256(payload).digest())

    def authentic(self, env: Envelope) -> bool:
        """Checked here, not by the codec: the payload was made by a member, and its
        signature (libsodium) or its MAC tag (recomputed by the sender's side) holds."""
        outer = msgpack.unpackb(env.frame)
        payload = outer[0]
        if payload not in self.legit:
            return False
        digest = hashlib.sha256(payload).digest()
        sender = sender_of(env.msg)
        if len(outer) == 2:
            try:
                nacl.signing.VerifyKey(self._raw[sender]).verify(digest, outer[1])
            except Exception:
                return False
        else:
            tags = outer[2]
            sender_keys = MacKeys(self.client_signer if sender == CLIENT
                                  else self.signers[sender])  # type: ignore[index]
            mine = tags[:MAC_BYTES] if isinstance(env.msg, Request) else tags
            if mine != mac(sender_keys.key_for(self._raw[0]), digest):
                return False
        return all(self.authentic(inner) for inner in env.nested)


def _nested_frames(frame: bytes) -> list[bytes]:
    try:
        items = msgpack.unpackb(msgpack.unpackb(frame)[0])
    except Exception:
        return []
    cls = MESSAGE_TYPES[items[0]]
    field = getattr(cls, "NESTED", None)
    if field is None:
        return []
    index = [name for name, _ in cls.SCHEMA].index(field) + 1
    out = []
    for inner in items[index]:
        out.append(inner)
        out.extend(_nested_frames(inner))
    return out


@pytest.fixture(scope="module")
def world() -> World:
    w = World()
    w.build()
    return w


def _decode(world: World, frame: bytes) -> Envelope | None:
    """The node's decoder; None when it refuses. Any other exception fails the test."""
    try:
        return world.node.authenticate(world.node.parse(frame))
    except PeerError:
        return None


def _check(world: World, frame: bytes) -> None:
    env = _decode(world, frame)
    if env is not None:
        assert world.authentic(env), f"accepted a frame whose authenticator does not hold: " \
                                     f"{type(env.msg).__name__} {frame[:80]!r}"


# ------------------------------------------------------------ strategies

_FIELD = {
    INT: st.one_of(st.integers(0, 2**63 - 1), st.sampled_from([0, 1, 2**63 - 1, 2**63, -1])),
    STR: st.one_of(st.text(max_size=8), st.just(CLIENT), st.text(min_size=257, max_size=260)),
    BYTES: st.binary(max_size=64),
    BOOL: st.booleans(),
    FLOAT: st.one_of(st.floats(allow_nan=True), st.integers(-5, 5)),
    DIGEST: st.one_of(st.binary(min_size=32, max_size=32), st.binary(max_size=40)),
    BYTES_LIST: st.lists(st.binary(max_size=40), max_size=4),
    DIGEST_LIST: st.lists(st.binary(min_size=31, max_size=33), max_size=4),
    PHASE_LIST: st.lists(st.tuples(st.text(max_size=6), st.integers(-1, 9),
                                   st.floats(allow_nan=True)).map(list), max_size=3),
}


@st.composite
def typed_payloads(draw: st.DrawFn) -> bytes:
    """A payload of a real kind, every field drawn from its type and its edges."""
    cls = draw(st.sampled_from(sorted(MESSAGE_TYPES.values(), key=lambda c: c.KIND)))
    values = [draw(_FIELD[tag]) for _name, tag in cls.SCHEMA]
    if draw(st.booleans()):  # a member's id where the sender goes, so it gets past parse
        for i, (name, _tag) in enumerate(cls.SCHEMA):
            if name == "replica":
                values[i] = draw(st.integers(0, N - 1))
            if name == "client":
                values[i] = CLIENT
    return msgpack.packb([cls.KIND, *values], use_bin_type=True)


msgpack_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(),
              st.binary(max_size=40), st.text(max_size=10)),
    lambda inner: st.lists(inner, max_size=5), max_leaves=12)


# ------------------------------------------------------------ properties

@SETTINGS
@given(st.binary(max_size=3000))
def test_random_bytes(world: World, frame: bytes) -> None:
    _check(world, frame)


@SETTINGS
@given(msgpack_values, st.binary(max_size=70), st.booleans())
def test_random_msgpack(world: World, value: object, tail: bytes, as_frame: bool) -> None:
    packed = msgpack.packb(value, use_bin_type=True)
    _check(world, msgpack.packb([packed, tail], use_bin_type=True) if as_frame else packed)


@SETTINGS
@given(typed_payloads(), st.sampled_from(["sig", "tags", "empty", "legit-sig"]),
       st.binary(min_size=0, max_size=80))
def test_typed_payloads_under_forged_authenticators(world: World, payload: bytes, auth: str,
                                                    junk: bytes) -> None:
    if auth == "sig":
        frame = msgpack.packb([payload, junk], use_bin_type=True)
    elif auth == "tags":
        frame = msgpack.packb([payload, b"", junk], use_bin_type=True)
    elif auth == "empty":
        frame = msgpack.packb([payload, b""], use_bin_type=True)
    else:  # a real signature, over another payload
        other = next(iter(world.corpus.frames["prepare"]))
        frame = msgpack.packb([payload, msgpack.unpackb(other)[1]], use_bin_type=True)
    _check(world, frame)


@SETTINGS
@given(st.sampled_from(sorted(MESSAGE_TYPES)), st.integers(0, 2**32), st.data())
def test_mutated_real_frames_of_every_kind(world: World, kind: int, seed: int,
                                           data: st.DataObject) -> None:
    name = kind_name(kind)
    frames = world.corpus.frames[name]
    frame = data.draw(st.sampled_from(frames))
    edits = data.draw(st.lists(st.tuples(st.integers(0, len(frame) - 1), st.integers(0, 255)),
                               max_size=4))
    edited = bytearray(frame)
    for at, value in edits:
        edited[at] = value
    _check(world, bytes(edited))
    cut = data.draw(st.integers(0, len(frame)))
    _check(world, frame[:cut] + data.draw(st.binary(max_size=16)))
    mutator = Mutator(world.corpus, seed, resign=world.resign, resign_share=0.3)
    for _ in range(8):
        for part in mutator.one().parts:
            _check(world, part)


def test_every_kind_has_a_real_frame_that_decodes(world: World) -> None:
    """The fuzz starts from frames the decoder accepts (else it tests only the refusals)."""
    kinds = {kind_name(k) for k in MESSAGE_TYPES}
    assert kinds <= set(world.corpus.kinds())
    for name in kinds:
        env = _decode(world, world.corpus.frames[name][0])
        if name != "reply":  # replies carry the tag of their client; ours is for node 0
            assert env is not None, name
            assert world.authentic(env), name


# ------------------------------------------------------------ state transfer

@st.composite
def state_blocks(draw: st.DrawFn) -> tuple[list[bytes], list[bytes]]:
    """Blocks and COMMIT proofs as a lagging replica receives them: some real, some not."""
    world = _WORLD
    request, _ = world.codecs[CLIENT].encode_request(Request(CLIENT, 1, 1, (b"t",)),
                                                     "signature")
    digest = hashlib.sha256(msgpack.unpackb(request)[0]).digest()
    blocks, proofs = [], []
    for seq in range(1, draw(st.integers(1, 3)) + 1):
        frames = draw(st.sampled_from([[request], [], [request, request], [b"\x00"]]))
        joined = draw(st.sampled_from([digest, digest * 2, b"", digest[:31]]))
        block = [draw(st.sampled_from([seq, seq + 1, 2**64 - 1, -1])), joined, frames]
        blocks.append(msgpack.packb(draw(st.sampled_from([block, block[:2], [block], b"x"])),
                                    use_bin_type=True))
        for r in range(draw(st.integers(0, N))):
            commit = Commit(draw(st.sampled_from([0, 1])), seq, r,
                            draw(st.sampled_from([batch_digest((digest,)), b"z" * 32])))
            proofs.append(world.codecs[r].encode(commit))
    return blocks, proofs


_WORLD = World()


@SETTINGS
@given(state_blocks())
def test_state_transfer_blocks_raise_only_peer_errors(blocks: tuple[list[bytes],
                                                                    list[bytes]]) -> None:
    raw_blocks, proofs = blocks
    node = _WORLD.codecs[0]
    envs = []
    for frame in proofs:
        envs.append(node.decode(frame))
    reply = StateReply(1, 1, 5, tuple(raw_blocks), tuple(proofs), ())
    if check_reply_shape(reply, 3) is not None:  # the node's admission, before any check
        return
    try:
        got = verify_blocks(raw_blocks, envs, 1, 3, node.decode)
    except PeerError:
        return
    for block in got:  # accepted: the proof it keeps is q COMMITs on exactly this block
        assert isinstance(block, TransferredBlock)
        commits = [node.decode(frame).msg for frame in block.proof]
        assert all(isinstance(c, Commit) and c.seq == block.seq and c.view == block.view
                   and c.digest == batch_digest(block.digests) for c in commits), commits
        assert len({c.replica for c in commits}) >= 3  # type: ignore[union-attr]


def test_a_payload_nobody_signed_is_refused_even_when_well_formed(world: World) -> None:
    """The control for the properties above: a perfectly typed message from a member,
    signed by another member's key, is a bad signature, not a message."""
    msg = Commit(0, 1, 2, b"d" * 32)
    forged = msgpack.packb([payload_of(msg), world.signers[3].sign(
        hashlib.sha256(payload_of(msg)).digest())], use_bin_type=True)
    with pytest.raises(PeerError) as info:
        world.node.decode(forged)
    assert info.value.reason == "bad_signature"
