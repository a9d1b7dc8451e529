"""When a node publishes Hello: until the PUB/SUB mesh is known to be complete.

PUB/SUB silently loses what is published before a subscription is up (the slow joiner),
so every node publishes `Hello(replica, heard)` until it has heard every peer, every peer
says it has heard everyone, and its own last Hello said so too. That last condition is
what lets the mesh fall quiet: a node that heard the last peer and found everyone else
already complete used to stop without ever announcing its own full count, and the others
then published Hello forever (measured: 6-10 Hellos a second per node on idle clusters
of 4 and 16, ~100 signature checks a second at every node; at n = 100 the idle nodes
alone wanted more than the machine's two cores).
"""

from __future__ import annotations

HELLO_EVERY = 0.1  # per 10 nodes: n Hellos cost n(n-1) verifications per round
HELLO_CHECK = 1.0  # once complete, look again this often (nothing is sent)
SOON = 0.01  # a peer says it is missing someone: answer this quickly


class Greeting:
    """Who this node has heard, what each peer says it has heard, and when to say Hello.

    Pure bookkeeping (no sockets, no clock): the node calls `on_hello` for each Hello it
    receives and `due` on every loop turn; `due` returns the count to publish, or None."""

    def __init__(self, n: int) -> None:
        self.full = n - 1
        self.every = HELLO_EVERY * max(1.0, n / 10)
        self.heard: set[int] = set()
        self.peer_heard: dict[int, int] = {}  # how many peers each peer has heard
        self.announced = -1  # the count our last Hello carried
        self.next_at = 0.0

    @property
    def ready(self) -> bool:
        """Every peer's PUB reaches our SUB."""
        return len(self.heard) >= self.full

    def complete(self) -> bool:
        """Every subscription in the mesh is up, and every peer knows it of us."""
        return (self.ready and self.announced >= self.full
                and len(self.peer_heard) == self.full
                and min(self.peer_heard.values(), default=self.full) >= self.full)

    def on_hello(self, peer: int, heard: int, now: float) -> None:
        self.heard.add(peer)
        self.peer_heard[peer] = heard
        if heard < self.full:  # a (re)joining peer: tell it we are here, soon
            self.next_at = min(self.next_at, now + SOON)

    def due(self, now: float) -> int | None:
        """The `heard` count to publish now, or None (not yet, or nothing to say)."""
        if now < self.next_at:
            return None
        if self.complete():
            self.next_at = now + HELLO_CHECK
            return None
        self.announced = len(self.heard)
        self.next_at = now + self.every
        return self.announced
