"""Liveness findings of the real-process fault runs (`dtnbus chaos`, floods), reduced to
directed in-memory scenarios where that is possible. Each was `xfail(strict=True)` while
its finding was open; the roots are fixed (0c02675; docs/faults.md, "What the
real-process runs found"), so each now guards against its return. Nothing here papers
over a finding: the tests assert what issue 9 asks for."""

from __future__ import annotations

from harness import Cluster

from dtnbus.messages import NewView, StateReply

FAST = {"view_change_timeout": 0.5, "retransmit_after": 0.3}


def test_chaos_1_a_replica_alone_in_a_later_view_rejoins_within_seconds() -> None:
    """n = 4. Replica 1 (the primary of view 1) is down when 0, 2 and 3 change to view 1.
    It comes back and sends the NEW-VIEW; it reaches 2 and 3, but every copy on its way to
    0 is lost for the next second, and 0's timer moves it on to view 2 alone. From then on
    the network is perfect and clients keep sending: 1, 2 and 3 commit in view 1 (a
    quorum); 0 waits in view 2 for a NEW-VIEW nobody will send. It keeps up by state
    transfer but never votes: the cluster has no fault left to tolerate. Issue 9: "a
    replica that is behind or in a lone view learns it and catches up within seconds,
    idle or not". Seen with real processes in `dtnbus chaos` (seed 13, kill 9: node 0
    alone in view 7 for the last 60 s of the run)."""
    c = Cluster(4, config_overrides=FAST)
    c.request((b"warm",))
    c.run(rounds=20, dt=0.05)
    c.down = {1}
    x = c.request((b"x",), to=[2, 3])  # primary 0 never gets it: 2 and 3 suspect it
    for _ in range(40):
        c.deliver_all()
        c.tick(0.05)
        if all(c.replicas[i].view == 1 and not c.replicas[i].active for i in (0, 2, 3)):
            break
    assert all((c.replicas[i].view, c.replicas[i].active) == (1, False) for i in (0, 2, 3))
    c.down = set()
    c.restart(1)
    c.inject(1, x)  # the client's retransmission: the new primary holds what waits
    lost: list[bytes] = []
    for _ in range(100):  # 1 joins and sends the NEW-VIEW; every copy to 0 is lost (the
        while c.queue:  # broadcast, the ones forwarded to it, the state replies carrying it)
            dest, frame = c.queue.pop(0)
            if dest == 0 and isinstance(c.codecs[0].parse(frame).msg, NewView | StateReply):
                lost.append(frame)
                continue
            c.deliver(dest, frame)
        c.tick(0.05)
        if c.replicas[0].view >= 2:
            break
    assert lost and c.replicas[0].view == 2 and not c.replicas[0].active
    assert all((c.replicas[i].view, c.replicas[i].active) == (1, True) for i in (1, 2, 3))
    for second in range(20):  # 20 s of a perfect network and a steady client
        c.request((f"tx-{second}".encode(),))
        for _ in range(20):
            c.deliver_all()
            c.tick(0.05)
    views = [(r.view, r.active, r.last_executed) for r in c.replicas]
    assert len({(v, a) for v, a, _ in views}) == 1 and views[0][1], views
