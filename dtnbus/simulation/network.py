"""The simulated network: every directed link is a `shaping.LinkProfile` (latency,
bandwidth, burst, latency distribution, jitter) carried by the same `Shaper` a node uses,
plus the faults a schedule injects until the network heals: loss, reordering,
duplication and partitions.

A partition separates groups of replicas from `start` to `end` (virtual seconds); what
crosses it is lost, as PUB/SUB loses it, and the protocol must recover by its own
retransmissions once it heals. Clients sit outside every partition.

With constant latency and no bandwidth limit (the common case, and the one that lets
1,000 replicas run) a message is due exactly `latency` later on every link: the network
then hands out one delivery for all receivers of a broadcast instead of one per link,
with the same result a `Shaper` would compute.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from dtnbus.shaping import LinkProfile, Shaper

MIN_HOP = 0.0001  # seconds: even an unshaped hop takes time, so one instant never loops


@dataclass(frozen=True, slots=True)
class Partition:
    """Groups of replicas that cannot reach each other from `start` until `end`."""

    groups: tuple[frozenset[int], ...]
    start: float
    end: float

    def separates(self, a: int, b: int, now: float) -> bool:
        if not self.start <= now < self.end:
            return False
        for group in self.groups:
            if a in group:
                return b not in group
        return b in self._listed()

    def _listed(self) -> frozenset[int]:
        return frozenset().union(*self.groups)

    def __str__(self) -> str:
        groups = "|".join(",".join(str(i) for i in sorted(g)) for g in self.groups)
        return f"{groups}@{self.start:g}-{self.end:g}"


def parse_partitions(spec: str, n: int, heal_at: float,
                     rng: random.Random | None = None) -> list[Partition]:
    """`0,1|2,3@0.5-2` (groups, and optionally when; default: the whole fault phase);
    several separated by `;`; `random`: one random split during part of the fault
    phase (a different one per seed). Replicas a split does not list are one more group."""
    out: list[Partition] = []
    for part in (p.strip() for p in spec.split(";")):
        if not part:
            continue
        if part == "random":
            if rng is None:
                continue
            ids = list(range(n))
            rng.shuffle(ids)
            cut = rng.randrange(1, n)
            start = rng.uniform(0, heal_at * 0.7)
            end = min(heal_at, start + rng.uniform(0.2, max(0.3, heal_at - start)))
            out.append(Partition((frozenset(ids[:cut]), frozenset(ids[cut:])), start, end))
            continue
        groups_text, _, when = part.partition("@")
        start, end = 0.0, heal_at
        if when:
            first, sep, last = when.partition("-")
            try:
                start, end = float(first), float(last) if sep else heal_at
            except ValueError:
                raise ValueError(f"partition {part!r}: expected START-END in seconds after "
                                 "@, e.g. 0,1|2,3@0.5-2") from None
            if not 0 <= start < end:
                raise ValueError(f"partition {part!r}: needs 0 <= START < END")
        groups = []
        seen: set[int] = set()
        for group in groups_text.split("|"):
            try:
                members = frozenset(int(x) for x in group.split(",") if x.strip())
            except ValueError:
                raise ValueError(f"partition {part!r}: groups are comma lists of replica "
                                 "ids separated by |, e.g. 0,1|2,3") from None
            if not members or members & seen or any(not 0 <= i < n for i in members):
                raise ValueError(f"partition {part!r}: each group needs replica ids in "
                                 f"0..{n - 1}, each id in one group only")
            seen |= members
            groups.append(members)
        if len(groups) < 2 and seen == set(range(n)):
            raise ValueError(f"partition {part!r} separates nobody: give at least two groups")
        out.append(Partition(tuple(groups), start, min(end, heal_at)))
    return out


@dataclass
class Faults:
    """What the network does wrong until `heal_at`."""

    drop: float = 0.0
    reorder: bool = False
    duplicate: float = 0.0
    partitions: tuple[Partition, ...] = ()
    heal_at: float = 0.0


class Network:
    """Delivery times of messages between replicas (ints) and clients (strings)."""

    def __init__(self, profile: LinkProfile, faults: Faults,
                 streams: Callable[[str], random.Random]) -> None:
        self.profile = profile
        self.faults = faults
        # one random stream per fault: leaving one out does not change the others' draws
        self.loss_rng, self.reorder_rng, self.dup_rng = (
            streams("loss"), streams("reorder"), streams("duplicate"))
        self.shaper_seed = streams("shaper").randrange(2**31)
        self.fast = (profile.bandwidth_mbps == 0 and profile.jitter_ms == 0
                     and profile.min_latency_fraction == 1.0)
        self.latency = max(MIN_HOP, profile.latency_ms / 1000.0)
        self.spread = max(3 * self.latency, 0.02)  # how far reordering may move a message
        self.shapers: dict[object, Shaper] = {}
        self.lost = 0
        self.duplicated = 0

    def hop(self) -> float:
        """One normal hop, for behaviours that measure delay in hops (slow:F)."""
        return self.latency

    def _arrival(self, src: object, dst: object, nbytes: int, now: float) -> float:
        if self.fast:
            return now + self.latency
        shaper = self.shapers.get(src)
        if shaper is None:
            seed = self.shaper_seed + zlib.crc32(str(src).encode())
            shaper = self.shapers[src] = Shaper(self.profile, seed=seed)
        at = shaper.submit(now, dst, nbytes, None)
        shaper.pop_due(at)  # we keep the time, not the queue
        return max(at, now + MIN_HOP)

    def route(self, src: object, dsts: list, nbytes: int, now: float
              ) -> list[tuple[float, list]]:
        """(time, receivers) for each group of receivers due at one time; lost ones are
        left out (and counted)."""
        faults = self.faults
        if now >= faults.heal_at or not (faults.drop or faults.reorder or faults.duplicate
                                         or faults.partitions):
            if self.fast:
                return [(now + self.latency, dsts)]
            return [(self._arrival(src, d, nbytes, now), [d]) for d in dsts]
        out: list[tuple[float, list]] = []
        grouped: list = []
        for dst in dsts:
            if isinstance(src, int) and isinstance(dst, int) and any(
                    p.separates(src, dst, now) for p in faults.partitions):
                self.lost += 1
                continue
            if faults.drop and self.loss_rng.random() < faults.drop:
                self.lost += 1
                continue
            at = self._arrival(src, dst, nbytes, now)
            if faults.reorder:
                out.append((at + self.reorder_rng.uniform(0, self.spread), [dst]))
            elif self.fast:
                grouped.append(dst)
            else:
                out.append((at, [dst]))
            if faults.duplicate and self.dup_rng.random() < faults.duplicate:
                self.duplicated += 1
                out.append((at + self.dup_rng.uniform(0, self.spread), [dst]))
        if grouped:
            out.append((now + self.latency, grouped))
        return out
