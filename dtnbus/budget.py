"""Per-peer budgets for work a peer can make us do (pure: time is an argument).

A correct replica sends a VIEW-CHANGE once per timeout, a StateRequest once per reply it
got, a Fetch once per stalled slot. A Byzantine one can send them as fast as the network
carries them, and each may cost signature checks, disk reads or a large reply. A token
bucket per (peer, kind) admits what a correct peer needs and drops the rest, counted as
`rate_limited` with the culprit named.
"""

from __future__ import annotations

from collections import OrderedDict


class PeerBudget:
    """Token buckets keyed by (peer, kind): `rate` per second, at most `burst` saved up.
    At most `max_keys` buckets are kept (least recently used first out): a forgotten
    peer starts again with a full bucket, which is what an idle peer has anyway."""

    def __init__(self, limits: dict[str, tuple[float, float]], max_keys: int = 100_000) -> None:
        self.limits = limits  # kind -> (rate per second, burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[tuple[object, str], tuple[float, float]] = OrderedDict()

    def allow(self, peer: object, kind: str, now: float, cost: float = 1.0) -> bool:
        limit = self.limits.get(kind)
        if limit is None:
            return True
        rate, burst = limit
        tokens, at = self._buckets.get((peer, kind), (burst, now))
        tokens = min(burst, tokens + max(0.0, now - at) * rate)
        allowed = tokens >= cost
        self._buckets[(peer, kind)] = (tokens - cost if allowed else tokens, now)
        self._buckets.move_to_end((peer, kind))
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed
