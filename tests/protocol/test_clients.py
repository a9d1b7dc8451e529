"""Issue 10, the client contract on the replica: exactly once, replies that prove what
they answer, identities, and admission as ordered state."""

from __future__ import annotations

import pytest
from harness import Cluster

from dtnbus import admission
from dtnbus.clients import ClientTable
from dtnbus.crypto import Signer, Verifier, generate_key
from dtnbus.errors import PeerError
from dtnbus.messages import Outcome, Request
from dtnbus.wire import Codec


def _outcomes(c: Cluster, client: str, replica: int = 1) -> list[int]:
    return [r.outcome for b in c.blocks[replica] for r in b.requests if r.client == client]


def test_every_reply_names_the_request_it_answers_and_its_position() -> None:
    c = Cluster(4, config_overrides={"batch_max_requests": 8})
    frames = [c.request((b"p%d" % i,)) for i in range(3)]
    c.run()
    digests = {c.codecs[1].decode(f).digest for f in frames}
    replies = c.answers()
    assert len(replies) == 12 and {m.request for m in replies} == digests
    for m in replies:
        block = c.blocks[m.replica][m.seq - 1]
        assert block.digests[m.position] == m.request and m.result == block.hash


def test_one_request_sent_many_times_executes_once_and_each_copy_gets_its_result() -> None:
    c = Cluster(4)
    frame = c.request((b"once",))
    c.run()
    for _ in range(3):
        for i in range(4):
            c.inject(i, frame)
        c.run()
    assert all(r.executed_txs == 1 for r in c.replicas)
    assert {(m.seq, m.result, m.outcome) for m in c.answers()} == \
        {(1, c.blocks[0][0].hash, Outcome.EXECUTED)}


def test_two_sessions_of_one_client_key_never_collide() -> None:
    c = Cluster(4)
    c.request((b"from session 1",), number=1, session=1)
    c.request((b"from session 2",), number=1, session=2)
    c.run()
    assert all(r.executed_txs == 2 for r in c.replicas)
    assert {m.outcome for m in c.answers()} == {Outcome.EXECUTED}


def test_a_request_from_a_client_not_admitted_at_its_point_in_the_order_is_refused() -> None:
    c = Cluster(4, clients=("op", "newbie"), admitted=("op",), operators=("op",))
    c.request((b"too early",), client="newbie")
    c.run()
    assert _outcomes(c, "newbie") == [Outcome.REFUSED]
    assert {m.outcome for m in c.answers("newbie")} == {Outcome.REFUSED}
    c.request((admission.encode(admission.AdmissionChange("add", "newbie",
                                                          c.client_keys["newbie"])),),
              client="op")
    c.run()
    c.request((b"welcome",), client="newbie")
    c.run()
    assert _outcomes(c, "newbie") == [Outcome.REFUSED, Outcome.EXECUTED]
    c.request((admission.encode(admission.AdmissionChange("remove", "newbie", "")),),
              client="op")
    c.run()
    c.request((b"gone",), client="newbie")
    c.run()
    assert _outcomes(c, "newbie") == [Outcome.REFUSED, Outcome.EXECUTED, Outcome.REFUSED]
    assert len({r.head for r in c.replicas}) == 1  # every replica decided the same


def test_admission_applies_at_the_same_point_inside_one_batch() -> None:
    table = ClientTable(admitted={"op": "k"}, operators=frozenset({"op"}))
    add = admission.encode(admission.AdmissionChange("add", "x", "kx"))
    batch = [("x", 1, 1, b"\x01" * 32, (b"before",)),
             ("op", 1, 1, b"\x02" * 32, (add,)),
             ("x", 1, 2, b"\x03" * 32, (b"after",))]
    assert table.preview(batch) == bytes([Outcome.REFUSED, Outcome.EXECUTED, Outcome.EXECUTED])
    expected = table.preview(batch)
    assert table.execute_batch(batch) == expected
    assert table.admits("x") and table.drain().admitted == (("x", "kx", ""),)


def test_only_an_operator_can_admit() -> None:
    c = Cluster(4, clients=("op", "plain", "newbie"), admitted=("op", "plain"),
                operators=("op",))
    c.request((admission.encode(admission.AdmissionChange("add", "newbie",
                                                          c.client_keys["newbie"])),),
              client="plain")  # just bytes, from anyone else
    c.run()
    c.request((b"hello",), client="newbie")
    c.run()
    assert _outcomes(c, "plain") == [Outcome.EXECUTED]
    assert _outcomes(c, "newbie") == [Outcome.REFUSED]


def test_admission_survives_a_restart_exactly() -> None:
    c = Cluster(4, clients=("op", "newbie"), admitted=("op",), operators=("op",))
    c.request((admission.encode(admission.AdmissionChange("add", "newbie",
                                                          c.client_keys["newbie"])),),
              client="op")
    c.run()
    for i in range(4):
        c.restart(i)
    c.request((b"after restart",), client="newbie")
    c.run()
    assert _outcomes(c, "newbie") == [Outcome.EXECUTED]


def test_open_admission_names_a_client_by_its_key_and_refuses_a_replica_key() -> None:
    client_key, replica_key = generate_key(), generate_key()
    replicas = {0: Verifier(replica_key.public_key())}
    codec = Codec(Signer(replica_key), replicas, {}, open_clients=True)
    raw = Verifier(client_key.public_key()).raw_key
    me = admission.open_id(raw)
    frame = Codec(Signer(client_key), replicas, {}).encode(Request(me, 1, 1, (b"x",)))
    assert codec.decode(frame).msg.client == me
    impostor = admission.open_id(replicas[0].raw_key)  # a replica's key posing as a client
    forged = Codec(Signer(replica_key), replicas, {}).encode(Request(impostor, 1, 1, (b"x",)))
    with pytest.raises(PeerError) as info:
        codec.decode(forged)
    assert info.value.reason == "unknown_sender"
    closed = Codec(Signer(replica_key), replicas, {})
    with pytest.raises(PeerError):
        closed.decode(frame)  # without open admission, an unlisted key is nobody


def test_an_unknown_client_gets_its_request_back_as_the_reason() -> None:
    stranger = Codec(Signer(generate_key()), {}, {})
    c = Cluster(4)
    frame = stranger.encode(Request("mallory", 1, 1, (b"hi",)))
    with pytest.raises(PeerError) as info:
        c.codecs[0].parse(frame)
    assert info.value.reason == "unknown_sender"
    assert isinstance(info.value.msg, Request) and len(info.value.digest) == 32
