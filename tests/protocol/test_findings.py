"""Violations the simulator found in the core, each reduced to a directed scenario.

Each test is named after its finding (docs/faults.md keeps the list) and marked
`xfail(strict=True)` until the root is fixed (then it passes, and the mark goes). Nothing
here papers over a finding: the tests assert what PBFT promises.
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


def test_sim_3_a_legitimate_new_view_always_fits_the_proof_budget() -> None:
    """n = 7 (q = 5), checkpoints every 8, window 16: the `proofs` budget holds at most
    q * (1 + window) * 2 = 170 frames. Seven batches execute (no checkpoint yet, so every
    VIEW-CHANGE carries 7 prepared certificates of 5 frames); the primary crashes. The new
    primary's NEW-VIEW carries 5 VIEW-CHANGEs, 180 proof frames: more than any bucket can
    ever hold, so every replica drops it as rate_limited, each retransmission too, and
    the next views fail the same way. One crash (f = 2) stops the bus."""
    c = Cluster(7, config_overrides={**FAST, "checkpoint_interval": 8, "window": 16})
    for i in range(7):
        c.request((b"r%d" % i,))
        c.run()
    assert all(r.last_executed == 7 for r in c.replicas)
    c.down = {0}
    c.request((b"after",))
    c.run(rounds=120, dt=0.25)  # 30 s: five views tried
    assert all(c.replicas[i].last_executed == 8 for i in range(1, 7)), \
        ([(r.view, r.active, r.last_executed) for r in c.replicas[1:]],
         [c.drops[i].count("rate_limited") for i in range(1, 7)])


def test_sim_4_a_voter_that_moved_on_still_counts_for_the_view_it_left() -> None:
    """n = 4, replica 1 (the primary of view 1) crashed for good. 2 and 3 vote for view 1;
    3 restarts (its backoff starts again: 0.5 s against the others' 1.0 s); 0 joins. All
    three hold a quorum for view 1, so their timers run; 3's expires first and it votes
    for view 2. That VIEW-CHANGE replaces 3's vote for view 1 at 0 and 2, who now count
    2 < q votes for view 1 and stop their timers (4a21dfb's rule), while 3 waits alone in
    view 2: nobody moves again, nothing executes."""
    c = Cluster(4, config_overrides=FAST)
    c.down = {0, 1}  # 1 is gone for good; 0 is slow for now
    c.request((b"x",))
    c.deliver_all()
    c.tick(0.6)  # 2 and 3 suspect primary 0 and vote for view 1
    c.deliver_all()
    assert [(r.view, r.active) for r in c.replicas[2:]] == [(1, False), (1, False)]
    c.restart(3)
    c.down = {1}
    for _ in range(2000):  # 100 s of a perfect network
        c.deliver_all()
        c.tick(0.05)
    assert all(c.replicas[i].last_executed == 1 for i in (0, 2, 3)), \
        [(r.view, r.active, sorted((k, v.new_view) for k, v in r.view_changes.items()))
         for r in c.replicas]


def test_sim_5_a_restarted_replica_with_a_prepared_slot_and_no_body_does_not_raise() -> None:
    """n = 4. Seq 1 executes everywhere; seq 2 prepares everywhere but its COMMITs are
    lost. Replica 3 restarts: its prepared certificate for seq 2 comes back from disk, its
    request pool does not (the body is missing until a client or a peer sends it again).
    Two peers repeat their COMMITs for seq 1, which makes 3 look at seq 2 in order:
    `_reply_tentatively` reads the missing body and an AssertionError escapes `step` (a
    node counts it as internal_error and drops the message, again at every such message)."""
    c = Cluster(4, config_overrides=FAST)
    assert c.replicas[0].config.tentative
    c.request((b"a",))
    c.run()
    seq1 = c.replicas[3].slots[1].digest
    c.tamper = lambda sender, msg, frame: None if isinstance(msg, Commit) else frame
    c.request((b"b",))
    c.deliver_all()
    assert all(r.slots[2].prepared and r.last_executed == 1 for r in c.replicas)
    r3 = c.restart(3)
    c.tamper = lambda sender, msg, frame: frame
    assert r3.slots[2].prepared and r3.slots[2].missing
    for sender in (0, 1):  # peers repeat their COMMITs for seq 1 to the restarted replica
        c.deliver(3, c.codecs[sender].encode(Commit(0, 1, sender, seq1)))
    c.run(rounds=50, dt=0.1)
    assert r3.last_executed == 2
