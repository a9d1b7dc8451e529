"""The CURVE layer without sockets: keys in the cluster file, the ZAP answers, who may
deliver what, and that a replica's key never passes for a client's."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest
import tomli_w
import zmq
from zmq.utils import z85

from dtnbus.config import generate_cluster, load_cluster
from dtnbus.crypto import Signer, Verifier, generate_key
from dtnbus.curve import (
    DOMAIN_MEMBERS,
    DOMAIN_REPLICAS,
    binding_refusal,
    client_member,
    node_member,
)
from dtnbus.errors import LocalError, PeerError
from dtnbus.messages import Commit, Prepare, Reply, Request, StatusQuery
from dtnbus.wire import Codec
from dtnbus.zap import ZAP_VERSION, RateLimitedWarnings, ZapGuard

# ---------------------------------------------------------------- the cluster file


@pytest.fixture
def curve_cluster(tmp_path: Path) -> Path:
    return generate_cluster(tmp_path / "c", 4, base_port=7100, curve=True)


def test_keygen_round_trip_keys_match_their_files(curve_cluster: Path) -> None:
    config = load_cluster(curve_cluster)
    assert config.curve is not None
    assert sorted(config.curve.nodes) == [0, 1, 2, 3]
    assert sorted(config.curve.clients) == ["client"]
    for node_id, member in config.curve.nodes.items():
        assert member.key_file is not None
        assert member.key_file.stat().st_mode & 0o777 == 0o600
        end = config.curve.node_end(node_id)
        assert zmq.curve_public(end.secret_key) == end.public_key
        assert end.admitted[end.public_key] == node_member(node_id)
    end = config.curve.client_end("client")
    assert zmq.curve_public(end.secret_key) == end.public_key
    assert end.admitted == {}  # a client serves nobody
    assert set(end.servers) == {0, 1, 2, 3}


def test_secret_keys_never_in_the_cluster_file_nor_printed(curve_cluster: Path) -> None:
    config = load_cluster(curve_cluster)
    text = curve_cluster.read_text()
    for node_id in range(4):
        end = config.curve.node_end(node_id)  # type: ignore[union-attr]
        assert end.secret_key.decode() not in text
        assert end.secret_key.decode() not in repr(end)
        assert end.secret_key.decode() not in repr(config)


def test_without_curve_there_are_no_curve_keys(tmp_path: Path) -> None:
    config = load_cluster(generate_cluster(tmp_path, 4, base_port=7200))
    assert config.curve is None
    assert "curve" not in (tmp_path / "cluster.toml").read_text()


def _rewrite(path: Path, change: object) -> None:
    doc = tomllib.loads(path.read_text())
    change(doc)  # type: ignore[operator]
    path.write_text(tomli_w.dumps(doc))


def _one_line_error(path: Path, pattern: str, node: int | None = 0,
                    client: str | None = None) -> None:
    with pytest.raises(LocalError) as info:
        config = load_cluster(path)
        if node is not None:
            config.curve.node_end(node)  # type: ignore[union-attr]
        if client is not None:
            config.curve.client_end(client)  # type: ignore[union-attr]
    message = str(info.value)
    assert "\n" not in message and re.search(pattern, message), message


@pytest.mark.parametrize("bad", ["not-a-key", "x" * 41, "#" * 40, 12])
def test_malformed_curve_public_key_is_one_line(curve_cluster: Path, bad: object) -> None:
    _rewrite(curve_cluster, lambda d: d["nodes"][2].update(curve_public_key=bad))
    _one_line_error(curve_cluster, r"nodes\[2\]: curve_public_key is not a z85 CURVE key")


def test_missing_node_curve_key_is_one_line(curve_cluster: Path) -> None:
    _rewrite(curve_cluster, lambda d: d["nodes"][1].pop("curve_public_key"))
    _one_line_error(curve_cluster, r"nodes\[1\]: curve = true but no curve_public_key")


def test_client_without_curve_key_cannot_connect(curve_cluster: Path) -> None:
    _rewrite(curve_cluster, lambda d: d["clients"][0].pop("curve_public_key"))
    _one_line_error(curve_cluster, r"no curve_public_key for client 'client'", node=None,
                    client="client")


def test_curve_flag_must_be_a_boolean(curve_cluster: Path) -> None:
    _rewrite(curve_cluster, lambda d: d.update(curve="yes"))
    _one_line_error(curve_cluster, r"'curve' must be true or false")


def test_key_file_of_another_key_is_one_line(curve_cluster: Path) -> None:
    other = zmq.curve_keypair()[0].decode()
    _rewrite(curve_cluster, lambda d: d["nodes"][0].update(curve_public_key=other))
    _one_line_error(curve_cluster, r"does not match its curve_public_key")


def test_missing_or_garbled_key_file_is_one_line(curve_cluster: Path) -> None:
    key_file = curve_cluster.parent / "keys" / "node-0.curve.key"
    key_file.write_text("garbage\n")
    _one_line_error(curve_cluster, r"does not hold a z85 secret key")
    key_file.unlink()
    _one_line_error(curve_cluster, r"cannot read CURVE key file .*node-0.curve.key")


def test_a_curve_key_shared_by_two_members_is_refused(curve_cluster: Path) -> None:
    def share(doc: dict) -> None:
        doc["clients"][0]["curve_public_key"] = doc["nodes"][3]["curve_public_key"]
    _rewrite(curve_cluster, share)
    _one_line_error(curve_cluster, r"clients\[0\]: curve_public_key is also node:3's")


def test_a_client_with_a_replicas_signing_key_is_refused(curve_cluster: Path) -> None:
    def share(doc: dict) -> None:
        doc["clients"][0]["public_key"] = doc["nodes"][1]["public_key"]
    _rewrite(curve_cluster, share)
    _one_line_error(curve_cluster, r"client 'client' has node 1's public key")


# ---------------------------------------------------------------- the wire decoder


@pytest.fixture(scope="module")
def keys() -> dict[str, object]:
    return {name: generate_key("ed25519") for name in ("r0", "r1", "c", "d")}


def _codec(keys: dict, signer: str) -> Codec:
    replicas = {0: Verifier(keys["r0"].public_key()), 1: Verifier(keys["r1"].public_key())}
    clients = {"c": Verifier(keys["c"].public_key()), "d": Verifier(keys["d"].public_key())}
    return Codec(Signer(keys[signer]), replicas, clients)


def _reason(codec: Codec, frame: bytes) -> str:
    with pytest.raises(PeerError) as info:
        codec.decode(frame)
    return info.value.reason


def test_replica_signed_request_is_refused(keys: dict) -> None:
    """A replica's key never signs a request that the bus accepts as a client's."""
    node = _codec(keys, "r0")
    verifier = _codec(keys, "r1")
    assert _reason(verifier, node.encode(Request("c", 1, 1, (b"tx",)))) == "bad_signature"
    assert _reason(verifier, node.encode(StatusQuery("c", 1))) == "bad_signature"
    # nor does it MAC one: its tags are keyed with its own key, not the client's
    frame, _digest = node.encode_request(Request("c", 1, 2, (b"tx",)), "mac")
    assert _reason(verifier, frame) == "bad_signature"
    # a client id spelled like a replica's is no replica, and no admitted client either
    assert _reason(verifier, node.encode(Request("0", 1, 1, (b"tx",)))) == "unknown_sender"


def test_client_signed_replica_message_is_refused(keys: dict) -> None:
    client = _codec(keys, "c")
    verifier = _codec(keys, "r1")
    assert _reason(verifier, client.encode(Prepare(0, 1, 0, b"d" * 32))) == "bad_signature"
    assert _reason(verifier, client.encode(Reply(0, 0, "c", 1, 1, b"r" * 32, 1, 0, b"h" * 32))) \
        == "bad_signature"
    # the right client's own request still passes
    assert verifier.decode(client.encode(Request("c", 1, 1, (b"tx",)))).msg.client == "c"


# ---------------------------------------------------------------- who may deliver what


def test_client_connection_carries_only_its_own_client_messages() -> None:
    me = client_member("c")
    assert binding_refusal(me, Request("c", 1, 1, (b"t",))) is None
    assert binding_refusal(me, StatusQuery("c", 1)) is None
    assert binding_refusal(me, Request("d", 1, 1, (b"t",))) == "member_mismatch"
    assert binding_refusal(me, Prepare(0, 1, 0, b"d" * 32)) == "member_mismatch"
    assert binding_refusal(me, Commit(0, 1, 2, b"d" * 32)) == "member_mismatch"


def test_replica_connection_carries_votes_relays_and_forwarded_requests() -> None:
    me = node_member(1)
    assert binding_refusal(me, Prepare(0, 1, 1, b"d" * 32)) is None
    assert binding_refusal(me, Prepare(0, 1, 2, b"d" * 32)) is None  # a relayed proof
    assert binding_refusal(me, Request("c", 1, 1, (b"t",))) is None  # a forwarded body
    assert binding_refusal(me, StatusQuery("c", 1)) == "member_mismatch"


# ---------------------------------------------------------------- ZAP answers


@pytest.fixture
def guard(curve_cluster: Path) -> tuple[ZapGuard, list[str], dict[str, bytes]]:
    config = load_cluster(curve_cluster)
    refusals: list[str] = []
    ctx = zmq.Context.instance()
    end = config.curve.node_end(0)  # type: ignore[union-attr]
    keys = {m: k for k, m in end.admitted.items()}
    return ZapGuard(ctx, end, refusals.append), refusals, keys


def _zap(domain: str, key: bytes, mechanism: bytes = b"CURVE") -> list[bytes]:
    raw = z85.decode(key) if mechanism == b"CURVE" else b""
    creds = [raw] if mechanism == b"CURVE" else []
    return [ZAP_VERSION, b"7", domain.encode(), b"10.0.0.9", b"", mechanism, *creds]


def test_zap_names_the_member_of_an_admitted_key(guard: tuple) -> None:
    zap, refusals, keys = guard
    reply = zap.answer(_zap(DOMAIN_REPLICAS, keys["node:2"]))
    assert reply[:5] == [ZAP_VERSION, b"7", b"200", b"OK", b"node:2"]
    reply = zap.answer(_zap(DOMAIN_MEMBERS, keys["client:client"]))
    assert reply[2] == b"200" and reply[4] == b"client:client"
    assert refusals == []


def test_zap_refuses_unknown_keys_and_clients_on_the_pub(guard: tuple) -> None:
    zap, refusals, keys = guard
    stranger = zmq.curve_keypair()[0]
    assert zap.answer(_zap(DOMAIN_MEMBERS, stranger))[2:5] == [b"400", b"unknown key", b""]
    assert zap.answer(_zap(DOMAIN_REPLICAS, keys["client:client"]))[2] == b"400"
    assert zap.answer(_zap(DOMAIN_MEMBERS, b"", mechanism=b"NULL"))[2] == b"400"
    assert zap.answer(_zap("elsewhere", keys["node:1"]))[2] == b"400"
    assert zap.answer([ZAP_VERSION])[2] == b"400"
    assert refusals == ["unknown_key", "not_a_replica", "no_curve", "bad_handshake",
                        "bad_handshake"]


def test_refusal_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    warnings = RateLimitedWarnings(every=10.0, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="dtnbus.zap"):
        assert warnings.warn("unknown_key", "a")
        for _ in range(50):
            assert not warnings.warn("unknown_key", "b")
        assert warnings.warn("no_curve", "c")  # another reason has its own allowance
        now[0] = 10.5
        assert warnings.warn("unknown_key", "d")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert "50 more since the last such warning" in lines[2]


def test_key_files_are_not_readable_by_others(curve_cluster: Path) -> None:
    for key_file in (curve_cluster.parent / "keys").glob("*.curve.key"):
        assert os.stat(key_file).st_mode & 0o077 == 0
