"""Each built-in Byzantine behaviour does what it says, and correct replicas refuse what
it sends for the reason they should, without an exception (dtnbus.byzantine)."""

from __future__ import annotations

import random

import pytest

from dtnbus.byzantine import (
    Context,
    ModeSpec,
    make_behaviour,
    parse_assignment,
    parse_mode,
)
from dtnbus.effects import (
    Broadcast,
    Drop,
    Execute,
    Forward,
    Persist,
    Send,
    SendClient,
)
from dtnbus.errors import PeerError
from dtnbus.messages import (
    Commit,
    NewView,
    PeerStatus,
    PrePrepare,
    Request,
    StateReply,
    ViewChange,
    batch_digest,
)
from dtnbus.replica import ReplicaConfig
from dtnbus.simulation.auth import make_members
from dtnbus.simulation.engine import SHORT_TIMERS
from dtnbus.simulation.host import Packet, ReplicaHost
from dtnbus.state_transfer import serve_state, verify_blocks

MAX_FRAME = 1 << 20
MESSAGES = (Broadcast, Send, Forward, SendClient)


class Net:
    """Four hosts (cheap authenticator), one of them Byzantine, and a client."""

    def __init__(self, mode: str = "", who: int = 0, n: int = 4) -> None:
        self.members = make_members(n, ("alice", "bob"))
        self.codecs = {i: self.members.codec(i, MAX_FRAME) for i in range(n)}
        self.hosts = []
        for i in range(n):
            behaviour = None
            if mode and i == who:
                behaviour = make_behaviour(parse_mode(mode), Context(
                    None, self.codecs[i].encode, ("alice", "bob"), random.Random(i),
                    max_frame=MAX_FRAME, base_delay=0.01))
            self.hosts.append(ReplicaHost(ReplicaConfig(i, n, **SHORT_TIMERS), self.codecs[i],
                                          behaviour))
        self.clients = {c: self.members.codec(c, MAX_FRAME) for c in ("alice", "bob")}

    def request(self, client: str = "alice", number: int = 1) -> bytes:
        return self.clients[client].encode(Request(client, 1, number, (b"tx-%d" % number,)))

    def offer(self, to: int, frame: bytes, now: float = 0.1) -> list:
        return self.hosts[to].receive(Packet(frame), now)


def _frames(effects: list) -> list[bytes]:
    return [e.frame for e in effects if isinstance(e, Broadcast | Send | Forward)]


def _refusal(effects: list) -> str | None:
    return next((e.reason for e in effects if isinstance(e, Drop)), None)


# ----------------------------------------------------------------- the command line


def test_modes_and_assignments_parse_and_bad_ones_say_why() -> None:
    assert parse_mode("slow:5") == ModeSpec("slow", "5")
    assert parse_mode("censor:bob") == ModeSpec("censor", "bob")
    assert str(parse_mode("proof-bomb")) == "proof-bomb"
    assert parse_assignment("3=equivocate,2=silent", 4) == (
        {3: ModeSpec("equivocate"), 2: ModeSpec("silent")}, [])
    assert parse_assignment("forge,1=replay", 4) == ({1: ModeSpec("replay")},
                                                     [ModeSpec("forge")])
    for bad, why in (("bogus", "unknown Byzantine mode"), ("silent:1", "takes no argument"),
                     ("slow:0.5", "factor"), ("slow:x", "factor")):
        with pytest.raises(ValueError, match=why):
            parse_mode(bad)
    for bad, why in (("4=silent", "not in 0..3"), ("1=silent,1=forge", "two Byzantine"),
                     ("x=silent", "replica id")):
        with pytest.raises(ValueError, match=why):
            parse_assignment(bad, 4)


# ----------------------------------------------------------------- each mode


def test_silent_sends_nothing_but_keeps_its_disk() -> None:
    net = Net("silent", who=0)
    effects = net.offer(0, net.request())  # the primary orders it
    assert not [e for e in effects if isinstance(e, MESSAGES)]
    assert any(isinstance(e, Persist) and e.kind == "preprepare" for e in effects)


def test_slow_holds_every_message_for_f_minus_one_hops_in_order() -> None:
    net = Net("slow:5", who=0)
    effects = net.offer(0, net.request(), now=1.0)
    behaviour = net.hosts[0].behaviour
    assert not [e for e in effects if isinstance(e, MESSAGES)]
    assert behaviour.next_wakeup() == pytest.approx(1.04)  # (5 - 1) x 10 ms
    assert behaviour.tick(1.039) == []
    released = behaviour.tick(1.04)
    # its PRE-PREPARE, and its speculative reply to the client (the fast path)
    assert sorted(type(e.msg).__name__ for e in released) == ["PrePrepare", "Reply"]


def test_equivocate_as_primary_tells_two_halves_two_batches_and_repeats_itself() -> None:
    net = Net("equivocate", who=0)
    effects = net.offer(0, net.request("alice", 1), now=0.0)  # ordered at once: seq 1
    sends = [e for e in effects if isinstance(e, Send)]
    told = {e.to: e.msg.digests for e in sends if isinstance(e.msg, PrePrepare)}
    assert set(told) == {1, 2, 3} and len(set(told.values())) == 2  # two batches at seq 1
    fooled = {to for to, d in told.items() if d == ()}
    assert fooled == {2}  # the same replicas for every equivocator: id + view + seq odd
    commits = {e.to: e.msg.digest for e in sends if isinstance(e.msg, Commit)}
    assert commits == {to: batch_digest(d) for to, d in told.items()}  # both sides, at once
    slot = net.hosts[0].replica.slots[1]
    again = net.hosts[0].behaviour.outgoing([Broadcast(slot.preprepare, slot.pp_frame)], 1.0)
    assert {(e.to, e.frame) for e in again if isinstance(e.msg, PrePrepare)} == {
        (e.to, e.frame) for e in sends if isinstance(e.msg, PrePrepare)}  # the same lie
    for to in (1, 2, 3):  # each backup takes the batch it was told, signed by the primary
        frame = next(e.frame for e in sends if e.to == to and isinstance(e.msg, PrePrepare))
        assert _refusal(net.offer(to, frame, now=0.01)) is None


def test_censor_never_lets_its_victim_in() -> None:
    net = Net("censor", who=0)  # the first client, alice, when none is named
    assert net.offer(0, net.request("alice")) == []
    assert not net.hosts[0].replica.pool.bodies
    net.offer(0, net.request("bob"))
    assert len(net.hosts[0].replica.pool.bodies) == 1
    named = Net("censor:bob", who=0)
    assert named.offer(0, named.request("bob")) == []


def test_forge_every_frame_it_sends_fails_authentication_somewhere() -> None:
    net = Net("forge", who=0)
    effects = net.offer(0, net.request())
    effects += net.hosts[0].behaviour.tick(1.0)  # forged client requests
    frames = _frames(effects)
    assert len(frames) >= 4
    reasons = set()
    for frame in frames:
        reason = _refusal(net.offer(1, frame))
        assert reason in ("bad_signature", "unknown_sender"), reason
        reasons.add(reason)
    assert reasons == {"bad_signature", "unknown_sender"}
    lies = [e.msg for e in effects if isinstance(e, SendClient)]
    assert all(r.result != net.hosts[1].replica.head for r in lies)


def test_replay_sends_old_frames_again() -> None:
    net = Net("replay", who=1)
    old = net.request("alice", 1)
    net.offer(1, old)
    again = _frames(net.hosts[1].behaviour.tick(1.0))
    assert again and set(again) == {old}
    assert _refusal(net.offer(2, old)) is None and net.offer(2, old)[0].reason == "duplicate"


def test_garbage_is_refused_with_a_reason_and_never_raises() -> None:
    net = Net("garbage", who=1)
    behaviour = net.hosts[1].behaviour
    junk = [f for k in range(40) for f in _frames(behaviour.tick(k * 0.1))]
    assert len(junk) >= 100 and any(len(f) > MAX_FRAME for f in junk)
    reasons = {_refusal(net.offer(2, f)) for f in junk}
    assert {"oversized", "malformed"} <= reasons <= {"oversized", "malformed", "bad_signature",
                                                    "unknown_sender"}


def test_proof_bombs_are_refused_before_they_cost_anything() -> None:
    net = Net("proof-bomb", who=3)
    behaviour = net.hosts[3].behaviour
    bombs = [f for k in range(6) for f in _frames(behaviour.tick(k * 0.3))]
    vc = ViewChange(1, 3, 0, ())
    bombs += _frames(behaviour.outgoing([Broadcast(vc, net.codecs[3].encode(vc))], 2.0))[1:]
    kinds = {type(net.codecs[0].parse(f).msg) for f in bombs if len(f) <= MAX_FRAME}
    assert {ViewChange, NewView, StateReply} <= kinds
    for frame in bombs:
        reason = _refusal(net.offer(0, frame, now=3.0))
        assert reason in ("malformed", "bad_signature", "unsolicited", "rate_limited"), reason
    assert net.hosts[0].replica.view == 0 and not net.hosts[0].replica.view_changes.get(3)


def test_lying_state_boasts_and_every_lie_is_caught() -> None:
    net = Net("lying-state", who=3)
    for number in range(1, 4):  # a little history to lie about
        frame = net.request("alice", number)
        for i in range(4):
            net.offer(i, frame)
    _settle(net)
    host = net.hosts[3]
    boast = host.behaviour.outgoing([Broadcast(PeerStatus(3, 0, True, 3, 0), b"")], 1.0)[0]
    assert boast.msg.last_executed > 3
    honest = serve_state(host.ledger, 3, 1, host.q, b"")
    assert honest.blocks
    for _ in range(5):
        lie = host.behaviour.outgoing([Send(0, honest, b"")], 1.0)[0].msg
        proof = []
        try:
            proof = [net.codecs[0].decode(f) for f in lie.proof]
            blocks = verify_blocks(lie.blocks, proof, 1, host.q, net.codecs[0].decode)
        except PeerError:
            continue
        assert blocks == []  # the only lie that verifies carries nothing


def test_view_storm_sends_ever_higher_views_and_a_correct_replica_keeps_one() -> None:
    net = Net("view-storm", who=2)
    behaviour = net.hosts[2].behaviour
    views = []
    drops = []
    for k in range(60):
        for frame in _frames(behaviour.tick(k * 0.05)):
            msg = net.codecs[0].parse(frame).msg
            if isinstance(msg, ViewChange):
                views.append(msg.new_view)
            drops.append(_refusal(net.offer(0, frame, now=k * 0.05)))
    assert views == sorted(views) and len(set(views)) == len(views) >= 50
    assert "rate_limited" in drops
    replica = net.hosts[0].replica
    assert set(replica.view_changes) <= {2} and replica.view == 0 and replica.active


def test_a_faulty_node_hook_leaves_durable_effects_in_order() -> None:
    """Whatever a behaviour does to messages, what the replica persists stays in place."""
    net = Net()
    effects = net.offer(0, net.request())
    durable = [e for e in effects if isinstance(e, Persist | Execute)]
    for mode in ("silent", "slow:3", "equivocate", "forge", "replay", "garbage",
                 "proof-bomb", "lying-state", "view-storm", "censor"):
        behaviour = make_behaviour(parse_mode(mode), Context(
            net.hosts[0].replica, net.codecs[0].encode, ("alice",), random.Random(0),
            max_frame=MAX_FRAME))
        out = behaviour.outgoing(list(effects), 0.0)
        assert [e for e in out if isinstance(e, Persist | Execute)] == durable, mode


def _settle(net: Net) -> None:
    """Deliver everything the hosts say to each other until they are quiet (no faults)."""
    queue: list[tuple[int, bytes]] = []
    now = 0.2
    for _ in range(50):
        for i, host in enumerate(net.hosts):
            for e in host.tick(now):
                queue += _targets(i, e, len(net.hosts))
        while queue:
            to, frame = queue.pop(0)
            for e in net.offer(to, frame, now):
                queue += _targets(to, e, len(net.hosts))
        now += 0.05


def _targets(src: int, effect: object, n: int) -> list[tuple[int, bytes]]:
    if isinstance(effect, Broadcast):
        return [(j, effect.frame) for j in range(n) if j != src]
    if isinstance(effect, Send | Forward):
        return [(effect.to, effect.frame)]
    return []
