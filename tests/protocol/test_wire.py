"""The wire codec: everything malformed, oversized or forged is refused with a reason."""

from __future__ import annotations

import msgpack
import pytest

from dtnbus.crypto import Signer, Verifier, generate_key
from dtnbus.errors import PeerError
from dtnbus.messages import Commit, PrePrepare, Reply, Request, Status
from dtnbus.wire import Codec, bundle, unbundle


@pytest.fixture(scope="module", params=["ed25519", "rsa2048"])
def codecs(request: pytest.FixtureRequest) -> tuple[Codec, Codec]:
    k0, k1, kc = (generate_key(request.param) for _ in range(3))
    replicas = {0: Verifier(k0.public_key()), 1: Verifier(k1.public_key())}
    clients = {"c": Verifier(kc.public_key())}
    return (Codec(Signer(k0), replicas, clients, max_frame=4096),
            Codec(Signer(kc), replicas, clients, max_frame=4096))


def _reason(codec: Codec, frame: bytes) -> str:
    with pytest.raises(PeerError) as info:
        codec.decode(frame)
    return info.value.reason


def test_round_trip_of_every_shape(codecs: tuple[Codec, Codec]) -> None:
    replica, client = codecs
    for msg, codec in [
        (PrePrepare(3, 7, 0, (b"a" * 32, b"b" * 32)), replica),
        (Commit(0, 1, 0, b"d" * 32), replica),
        (Request("c", 12, 3, (b"tx1", b"")), client),
        (Status(0, 1, 0, 5, b"h" * 32, 0, True, 0, 10, (("p", 2, 0.5),)), replica),
    ]:
        assert replica.decode(codec.encode(msg)).msg == msg


def test_garbage_is_malformed(codecs: tuple[Codec, Codec]) -> None:
    replica, _ = codecs
    for frame in [b"", b"\xc1", b"\x92\xc4\x01", msgpack.packb([1, 2]), msgpack.packb({"a": 1}),
                  msgpack.packb([b"x", b"y", b"z"])]:
        assert _reason(replica, frame) == "malformed"


def test_wrong_field_types_are_malformed(codecs: tuple[Codec, Codec]) -> None:
    replica, _ = codecs
    sig = b"\x00" * 64
    for payload in [[3, "0", 1, 0, b"d"], [3, 0, 1, 0], [3, 0, -1, 0, b"d"], [99, 1],
                    [2, 0, 1, 0, [b"a", 5]], [3, True, 1, 0, b"d"], [3, 0, 2**64 - 1, 0, b"d"]]:
        frame = msgpack.packb([msgpack.packb(payload), sig])
        assert _reason(replica, frame) == "malformed", payload


def test_oversized_frame_is_refused_before_parsing(codecs: tuple[Codec, Codec]) -> None:
    replica, client = codecs
    frame = client.encode(Request("c", 1, 1, (b"x" * 5000,)))
    assert _reason(replica, frame) == "oversized"


def test_forged_signature_is_refused(codecs: tuple[Codec, Codec]) -> None:
    replica, client = codecs
    frame = client.encode(Request("c", 1, 1, (b"pay me",)))
    payload, sig = msgpack.unpackb(frame)
    tampered = msgpack.packb([payload.replace(b"pay me", b"pay us"), sig])
    assert _reason(replica, tampered) == "bad_signature"
    flipped = msgpack.packb([payload, bytes([sig[0] ^ 1]) + sig[1:]])
    assert _reason(replica, flipped) == "bad_signature"
    assert _reason(replica, msgpack.packb([payload, sig[:10]])) == "bad_signature"


def test_sender_must_be_a_member_of_the_right_kind(codecs: tuple[Codec, Codec]) -> None:
    replica, client = codecs
    assert _reason(replica, replica.encode(Commit(0, 1, 7, b"d" * 32))) == "unknown_sender"
    assert _reason(replica, client.encode(Request("eve", 1, 1, ()))) == "unknown_sender"
    # a client cannot vote: a Commit claiming replica 1, signed with the client's key
    assert _reason(replica, client.encode(Commit(0, 1, 1, b"d" * 32))) == "bad_signature"


def test_a_mac_authenticated_request_convinces_each_replica_of_its_own_tag() -> None:
    keys = [generate_key() for _ in range(4)]
    client_key = generate_key()
    replicas = {i: Verifier(k.public_key()) for i, k in enumerate(keys)}
    clients = {"c": Verifier(client_key.public_key())}
    codecs = [Codec(Signer(k), replicas, clients, me=i) for i, k in enumerate(keys)]
    client = Codec(Signer(client_key), replicas, {})
    frame, digest = client.encode_request(Request("c", 1, 1, (b"pay",)))
    assert len(msgpack.unpackb(frame)) == 3  # [payload, b"", tags]: no signature at all
    for codec in codecs:
        assert codec.decode(frame).digest == digest
    payload, _, tags = msgpack.unpackb(frame)
    for i, codec in enumerate(codecs):  # break one replica's tag: only it refuses
        broken = tags[:16 * i] + bytes(16) + tags[16 * (i + 1):]
        bad = msgpack.packb([payload, b"", broken])
        with pytest.raises(PeerError) as info:
            codec.decode(bad)
        assert info.value.reason == "bad_signature"
        assert all(other.decode(bad) for j, other in enumerate(codecs) if j != i)


def test_only_requests_and_replies_may_travel_under_a_mac() -> None:
    key, client_key = generate_key(), generate_key()
    replicas = {0: Verifier(key.public_key())}
    codec = Codec(Signer(key), replicas, {"c": Verifier(client_key.public_key())}, me=0)
    signed = codec.encode(Commit(0, 1, 0, b"d" * 32))
    payload, _signature = msgpack.unpackb(signed)
    posing = msgpack.packb([payload, b"", bytes(16)])  # a vote may never skip its signature
    with pytest.raises(PeerError) as info:
        codec.decode(posing)
    assert info.value.reason == "malformed"


def test_a_reply_tag_convinces_its_client_only() -> None:
    key, client_key, other_key = generate_key(), generate_key(), generate_key()
    replicas = {0: Verifier(key.public_key())}
    node = Codec(Signer(key), replicas, {}, me=0)
    reply = Reply(0, 0, "c", 1, 1, b"r" * 32, 1, 0, b"h" * 32)
    frame = node.encode_reply(reply, Verifier(client_key.public_key()).raw_key)
    assert Codec(Signer(client_key), replicas, {}).decode(frame).msg == reply
    with pytest.raises(PeerError):
        Codec(Signer(other_key), replicas, {}).decode(frame)


def test_a_bundle_opens_into_its_frames_and_nothing_else_opens(codecs: tuple[Codec, Codec]
                                                                ) -> None:
    """Replies (and a load generator's requests) travel as one bundle per connection and
    loop; any frame that is not a bundle passes whole, and a bad bundle passes whole to
    be dropped as malformed by the decoder."""
    a, b = codecs
    frames = [a.encode(Commit(0, seq, 0, bytes(32))) for seq in range(1, 4)]
    assert unbundle(bundle(frames)) == frames
    for frame in frames:  # a signed frame ([payload, signature]) is never taken for one
        assert unbundle(frame) == [frame]
    tagged = msgpack.packb([b"payload", b"", b"t" * 16])  # nor a MAC-authenticated one
    assert unbundle(tagged) == [tagged]
    for bad in (b"\x92\x00\xc1", msgpack.packb([0, [b"x", 5]]), msgpack.packb([0, b"x"]),
                msgpack.packb([0, [b"x"], 1])):
        assert unbundle(bad) == [bad]
        with pytest.raises(PeerError) as err:
            b.parse(bad)
        assert err.value.reason == "malformed"
    assert [b.decode(f).msg.seq for f in unbundle(bundle(frames))] == [1, 2, 3]
