"""Violations the simulator found in the core, each reduced to a directed scenario.

Each test is named after its finding (docs/faults.md keeps the list); it was marked
`xfail(strict=True)` until the root was fixed. Nothing here papers over a finding: the
tests assert what PBFT promises.
"""

from __future__ import annotations

from harness import Cluster

from dtnbus.messages import Commit, NewView, Prepare, Suspect

FAST = {"view_change_timeout": 0.5, "retransmit_after": 0.3}


def test_sim_1_a_replica_one_view_ahead_is_met_by_the_others() -> None:
    """n = 4, replica 0 crashed for good (f = 1). Replica 3 alone hears one SUSPECT and
    leaves view 0; it restarts (its backoff starts again) and, while everything it says is
    lost, moves on to view 2. Then the network is perfect. Replicas 1 and 2 reach view 1
    just after 3 left it for view 2, and with equal timeouts the three correct replicas
    never again stand in one view: nothing executes, for ever. Castro-Liskov start the
    timer for view v+1 only once 2f other VIEW-CHANGEs for v+1 are in."""
    c = Cluster(4, config_overrides=FAST)
    c.down = {0}
    c.request((b"x",))
    c.deliver_all()
    c.tick(0.6)  # 1, 2 and 3 suspect the primary
    c.queue = [(d, f) for d, f in c.queue if d == 3 and isinstance(m := c.codecs[1].parse(f).msg,
                                                                   Suspect) and m.replica == 2]
    c.deliver_all()
    assert [(r.view, r.active) for r in c.replicas[1:]] == [(0, True), (0, True), (1, False)]
    c.restart(3)
    for _ in range(200):  # everything is lost for 10 s: 3 must not run ahead alone
        c.queue.clear()
        c.tick(0.05)
    assert c.replicas[3].view == 1  # (before the fix it moved on to view 2, 3, ...)
    for _ in range(2000):  # 100 s of a perfect network
        c.deliver_all()
        c.tick(0.05)
    assert all(c.replicas[i].last_executed == 1 for i in (1, 2, 3)), \
        [(r.view, r.active, r.last_executed) for r in c.replicas]


def test_sim_2_no_votes_in_a_view_after_leaving_it() -> None:
    """n = 4, every replica correct. The primary orders request x at seq 1; replicas 2 and
    3 lack x's body. Replicas 1, 2, 3 move to view 1 with VIEW-CHANGEs that hold no
    certificate for seq 1 (nobody prepared it). Then x's body reaches 2 and 3: they
    PREPARE and COMMIT seq 1 in view 0 anyway, and replica 0 (slow, still in view 0)
    commits x at seq 1 with a valid certificate of 0, 2 and 3. View 1 orders another
    batch at seq 1. Two correct ledgers differ at seq 1: safety is lost with no
    Byzantine replica at all, only a slow replica and a reordering network."""
    c = Cluster(4, config_overrides=FAST, clients=("c0", "c1"))
    c.request((b"other",), client="c1", to=[1, 2])  # never reaches the primary
    x = c.request((b"x",), client="c0", to=[0, 1])  # 2 and 3 lack its body
    c.deliver_all()  # 0 orders x at seq 1; 1 prepares; 2 and 3 wait for the body
    c.down = {0}  # replica 0 is slow: no timer fires there, it hears nothing yet
    c.tick(0.6)  # 1 and 2 suspect the primary; 1, 2 and 3 vote for view 1
    to_zero: list[bytes] = []
    new_views: list[tuple[int, bytes]] = []

    def pump() -> None:
        while c.queue:
            dest, frame = c.queue.pop(0)
            if dest == 0:
                to_zero.append(frame)
            elif isinstance(c.codecs[0].parse(frame).msg, NewView):
                new_views.append((dest, frame))  # late: 2 and 3 are still changing views
            else:
                c.deliver(dest, frame)

    pump()
    assert [(r.view, r.active) for r in c.replicas[2:]] == [(1, False), (1, False)]
    assert all(1 not in v.certs for v in c.replicas[1].view_changes.values())
    for dest in (2, 3):  # the client's retransmission reaches 2 and 3
        c.inject(dest, x)
    pump()
    c.down = set()
    votes = [f for f in to_zero if isinstance(c.codecs[0].parse(f).msg, Prepare | Commit)]
    for frame in votes:  # the network delivers the view-0 votes to 0 first
        c.deliver(0, frame)
    c.down = {0}  # 1, 2 and 3 go on in view 1 without 0
    c.queue.extend(new_views)
    c.run(rounds=40, dt=0.1)
    c.down = set()
    c.queue.extend((0, f) for f in to_zero if f not in votes)
    c.run(rounds=100, dt=0.1)
    heads = {i: c.blocks[i][0].hash.hex()[:12] for i in range(4) if c.blocks[i]}
    assert len(set(heads.values())) == 1, f"seq 1 differs: {heads}"
