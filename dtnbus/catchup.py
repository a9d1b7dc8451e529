"""Knowing when this replica is behind, and whom to ask, until nobody is ahead of it.

Evidence that we are behind comes from the status exchange (a peer in a higher active
view, a stable checkpoint above what we executed, a peer ahead of us for a whole
retransmission period while we do not move), from CHECKPOINTs a window ahead of f+1
replicas, from f+1 replicas voting in a view we never entered, and from a NEW-VIEW that
starts above us. We then ask the peer that claims to be furthest ahead; an answer with
blocks makes us ask again while that peer has more; an empty, refused or missing answer
makes us ask the next such peer; when the peers we heard from say nobody is ahead, we
are done. While we are asking, we never accuse the primary: we cannot execute because
*we* are behind, which says nothing about it. Pure: time is an argument.
"""

from __future__ import annotations

from dtnbus.messages import PeerStatus


class CatchUp:
    def __init__(self, me: int, f: int, quorum: int, retransmit_after: float) -> None:
        self.me = me
        self.f = f
        self.quorum = quorum
        self.retransmit_after = retransmit_after
        self.peers: dict[int, PeerStatus] = {}  # what each peer last said of itself
        self.since: float | None = None  # behind since (None: not behind)
        self.weak_mark = -1  # behind only a little, at this height: if we move, we are not
        self.asked = -1  # the peer we are waiting for (-1: none)
        self.until = 0.0  # ... until then
        self.exhausted: set[int] = set()  # peers that had nothing newer for us
        self.view_ahead: dict[int, int] = {}  # replica -> a view above ours it voted in
        self.ahead: dict[int, int] = {}  # replica -> checkpoint seq beyond our window

    @property
    def asking(self) -> bool:
        """A state request is out: the primary must not be blamed for our lag."""
        return self.since is not None and self.asked >= 0

    def wakeup(self) -> float | None:
        return None if self.since is None else max(self.until, self.since)

    def behind(self, now: float) -> None:
        """Strong evidence that others executed what we did not: ask at the next tick,
        even if we were waiting to hear from more peers (not if an answer is due)."""
        self.weak_mark = -1
        if self.since is None or self.since > now:
            self.since = now
        if self.asked < 0:
            self.until = min(self.until, now)

    def restarted(self) -> None:
        """After a restart we surely missed something: find out at the first tick."""
        self.since = -1.0

    def clock_starts(self, now: float) -> None:
        if self.since is not None and self.since < 0:
            self.since = now

    def on_status(self, ps: PeerStatus, view: int, last_executed: int, pipeline: int,
                  now: float) -> None:
        self.peers[ps.replica] = ps
        if (ps.view > view and ps.active) or ps.stable_seq > last_executed or \
                ps.last_executed > last_executed + pipeline:
            self.behind(now)
        elif ps.last_executed > last_executed and self.since is None:
            # a little ahead is normal while batches are in flight; still behind after a
            # retransmission period, without having moved, is not
            self.since = now + self.retransmit_after
            self.weak_mark = last_executed

    def voted_in(self, sender: int, view: int, now: float) -> None:
        """`sender` voted in `view`, above ours: with f+1 of them, we missed a view."""
        self.view_ahead[sender] = view
        if len(self.view_ahead) > self.f:
            self.behind(now)

    def checkpoint_beyond(self, sender: int, seq: int, now: float) -> None:
        """`sender` checkpointed past our window: with f+1 of them, we are far behind."""
        self.ahead[sender] = max(seq, self.ahead.get(sender, 0))
        if len(self.ahead) > self.f:
            self.behind(now)

    def entered_view(self, view: int) -> None:
        self.view_ahead = {r: v for r, v in self.view_ahead.items() if v > view}

    def next_peer(self, view: int, last_executed: int, now: float) -> int | None:
        """Whom to ask now (None: nobody, for now). Call when `wakeup` is due."""
        if self.since is None or now < self.since or now < self.until:
            return None
        if 0 <= self.weak_mark < last_executed and self.asked < 0:
            self.since = None  # we moved on our own: we were only in flight
            self.weak_mark = -1
            return None
        if self.asked >= 0:
            self.exhausted.add(self.asked)  # it did not answer in time
            self.asked = -1
        ahead = sorted(((ps.last_executed, r) for r, ps in self.peers.items()
                        if r not in self.exhausted and r != self.me
                        and (ps.last_executed > last_executed
                             or (ps.view > view and ps.active))), reverse=True)
        if ahead:
            return self.ask(ahead[0][1], now)
        if len(self.peers) >= self.quorum - 1 or now >= self.since + 10 * self.retransmit_after:
            # the peers we heard say nobody is ahead of us (or nobody answers): done
            self.since = None
            self.exhausted.clear()
        else:
            self.until = now + self.retransmit_after  # wait for their status
        return None

    def ask(self, peer: int, now: float) -> int:
        self.asked = peer
        self.until = now + 2 * self.retransmit_after
        return peer

    def nothing_from(self, peer: int, now: float) -> None:
        """An empty or refused answer: the next peer, at the next tick."""
        if peer == self.asked:
            self.exhausted.add(peer)
            self.until = now

    def took_blocks(self, peer: int, height: int, last_executed: int, high: int,
                    now: float) -> int | None:
        """Blocks from `peer` executed: ask it again if it has more (returns it)."""
        self.ahead = {r: s for r, s in self.ahead.items() if s > high}
        self.exhausted.clear()
        if height > last_executed:
            return self.ask(peer, now)
        self.since = None
        self.asked = -1
        return None
