"""The Hello exchange falls quiet once the PUB/SUB mesh is complete, and wakes again
for a peer that (re)joins. Each node's `Greeting` is driven by hand here: who receives
which Hello, and when, is under the test's control."""

from __future__ import annotations

from dtnbus.hello import HELLO_CHECK, Greeting


def _exchange(nodes: dict[int, Greeting], now: float, deliver_to=None) -> int:
    """One loop turn at every node: each publishes what is due; subscribers receive it."""
    sent = 0
    for me, g in nodes.items():
        heard = g.due(now)
        if heard is None:
            continue
        sent += 1
        for other, h in nodes.items():
            if other != me and (deliver_to is None or other in deliver_to(me)):
                h.on_hello(me, heard, now)
    return sent


def test_the_last_node_to_hear_everyone_announces_it_before_falling_quiet() -> None:
    # node 3's subscriptions come up last: the others have heard each other (and say
    # so); 3 hears them all in one turn and finds everyone else already complete
    nodes = {i: Greeting(4) for i in range(4)}
    late = {0, 1, 2}
    _exchange(nodes, 0.0, deliver_to=lambda me: late - {me} if me != 3 else late)
    _exchange(nodes, 1.0, deliver_to=lambda me: late - {me} if me != 3 else late)
    assert nodes[3].peer_heard == {} and nodes[0].ready
    # now 3's subscriptions are up: it hears everyone's full count in one turn
    for me in (0, 1, 2):
        nodes[3].on_hello(me, 3, 2.0)
    assert nodes[3].ready and min(nodes[3].peer_heard.values()) == 3
    t = 2.0
    for _ in range(50):
        t += 0.2
        _exchange(nodes, t)
    assert all(g.complete() for g in nodes.values())
    quiet = sum(_exchange(nodes, t + k * HELLO_CHECK) for k in range(1, 5))
    assert quiet == 0  # nothing more is published by anyone


def test_a_restarted_peer_wakes_the_others_and_they_fall_quiet_again() -> None:
    nodes = {i: Greeting(4) for i in range(4)}
    t = 0.0
    for _ in range(30):
        t += 0.2
        _exchange(nodes, t)
    assert all(g.complete() for g in nodes.values())
    nodes[2] = Greeting(4)  # restarted: has heard nobody
    for _ in range(30):
        t += 0.2
        _exchange(nodes, t)
    assert all(g.complete() for g in nodes.values())
    assert sum(_exchange(nodes, t + k * HELLO_CHECK) for k in range(1, 5)) == 0
