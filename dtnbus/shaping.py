"""The emulated network's link model: a token bucket and a delay line per directed link.

Pure and sans-IO: no sockets, no clock (``now`` is always passed in), no threads. The node
transport drives it with real time and the simulator with a virtual clock, so both see the
same network. Departure and delivery times are computed once, at ``submit``, in virtual time:
nothing polls, and ``submit``/``pop_due`` cost O(log k) for k queued messages.

Semantics (docs/emulation.md has the long form):

* **Token bucket** of rate B (bytes/s = ``bandwidth_mbps * mbps_base / 8``) and depth b
  (``burst_bytes``), FIFO. A message of s bytes leaves when the bucket has collected s tokens;
  a message larger than b is streamed at rate B (it leaves (s - tokens)/B after it reached the
  head), which is when its last byte would leave a kernel tbf that fragments it into frames.
* **Delay line** of latency L after the bucket: ``constant`` (L), ``uniform-F`` (uniform in
  [F*L, L]; ``uniform-0.1`` is the reference's model), plus an optional uniform [0, jitter]
  extra. Delivery order per link stays FIFO, as on the TCP connection that carries it: a
  message never overtakes an earlier one on the same link, it waits behind it.
* **mode "link"** (default): one bucket per destination; a queue on one link never delays
  another. **mode "uplink"**: one bucket per sending node shared by all its destinations (a
  broadcast to n-1 peers costs n-1 copies of the uplink), then each link's own delay line.
* Bandwidth 0 and latency 0 (and jitter 0) mean *no shaping*: ``is_unshaped`` says so and the
  caller sends at once.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

__all__ = [
    "AUTO_BURST",
    "BURST_SECONDS",
    "MIN_BURST_BYTES",
    "LinkProfile",
    "Shaper",
    "TokenBucket",
    "default_burst_bytes",
    "links_from_config",
]

AUTO_BURST = -1
"""``burst_bytes`` sentinel: choose :func:`default_burst_bytes` for the profile's rate."""

MIN_BURST_BYTES = 1514
"""One Ethernet frame: the smallest burst a real link (and kernel tbf) can have."""

BURST_SECONDS = 0.005
"""Default burst, in seconds of the rate: a few ms, as kernel tbf needs at HZ=250."""


def default_burst_bytes(bandwidth_mbps: float, mbps_base: float = 1e6) -> int:
    """max(one frame, 5 ms of the rate).

    Deliberately small: at 0.1 Mbps a 64 KiB burst would pass 5 s of traffic for free,
    more than a whole 100-transaction payload, and the bandwidth-bound cells would stop
    measuring bandwidth. At 125 Mbps 5 ms is 78 kB, so the default never throttles a fast
    link below its rate.
    """
    rate = bandwidth_mbps * mbps_base / 8.0
    return max(MIN_BURST_BYTES, math.ceil(rate * BURST_SECONDS))


def _parse_dist(dist: str) -> float:
    """Fraction F of L that is the minimum latency: 1.0 for constant, F for 'uniform-F'."""
    if dist == "constant":
        return 1.0
    if dist.startswith("uniform-"):
        try:
            frac = float(dist.removeprefix("uniform-"))
        except ValueError:
            frac = math.nan
        if 0.0 <= frac <= 1.0:
            return frac
    raise ValueError(
        f"latency_dist {dist!r} is unknown: use 'constant' or 'uniform-F' with 0 <= F <= 1 "
        "(e.g. 'uniform-0.1', the reference's model)"
    )


def _check_nonneg(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """What one directed link (or one uplink) looks like; validated once, at construction."""

    bandwidth_mbps: float = 0.0
    """Rate in "Mbps" of ``mbps_base`` bits per second; 0 = unlimited."""
    latency_ms: float = 0.0
    """One-way delay L (the maximum of the ``uniform-F`` model); 0 = none."""
    burst_bytes: int = AUTO_BURST
    """Bucket depth b; AUTO_BURST picks :func:`default_burst_bytes`. 0 = pure serialization."""
    latency_dist: str = "constant"
    """'constant' (L) or 'uniform-F' (uniform in [F*L, L]; 'uniform-0.1' = the reference)."""
    jitter_ms: float = 0.0
    """Extra delay, uniform in [0, jitter_ms], on top of the latency model."""
    mbps_base: float = 1e6
    """Bits per "Mbps": 1e6 (SI, as tc counts) or 2**20 (the reference's unit)."""

    def __post_init__(self) -> None:
        _check_nonneg("bandwidth_mbps", self.bandwidth_mbps)
        _check_nonneg("latency_ms", self.latency_ms)
        _check_nonneg("jitter_ms", self.jitter_ms)
        _check_nonneg("mbps_base", self.mbps_base)
        if self.mbps_base == 0:
            raise ValueError("mbps_base must be > 0 (1e6, or 2**20 for the reference's unit)")
        if not isinstance(self.latency_dist, str):
            raise ValueError(f"latency_dist must be a string, got {self.latency_dist!r}")
        _parse_dist(self.latency_dist)
        burst = self.burst_bytes
        if isinstance(burst, bool) or not isinstance(burst, int):
            raise ValueError(f"burst_bytes must be an integer, got {burst!r}")
        if burst == AUTO_BURST:
            # Frozen dataclass: the one sanctioned place to fill a derived default.
            object.__setattr__(
                self, "burst_bytes", default_burst_bytes(self.bandwidth_mbps, self.mbps_base)
            )
        elif burst < 0:
            raise ValueError(f"burst_bytes must be >= 0 (or AUTO_BURST), got {burst}")

    @property
    def unshaped(self) -> bool:
        """True when the link neither limits rate nor delays: the caller may send directly."""
        return self.bandwidth_mbps == 0 and self.latency_ms == 0 and self.jitter_ms == 0

    @property
    def bytes_per_second(self) -> float:
        """The bucket's fill rate; math.inf when bandwidth is unlimited."""
        if self.bandwidth_mbps == 0:
            return math.inf
        return self.bandwidth_mbps * self.mbps_base / 8.0

    @property
    def min_latency_fraction(self) -> float:
        """F of the latency model (1.0 for constant): the latency never falls below F*L."""
        return _parse_dist(self.latency_dist)


class TokenBucket:
    """A FIFO token bucket evaluated in virtual time (no polling, O(1) per message).

    State is the token level right after the last departure and that departure's time;
    since departures are FIFO, every later message starts at or after it.
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate_bytes_per_s: float, burst_bytes: int) -> None:
        if not rate_bytes_per_s > 0:
            raise ValueError(f"rate must be > 0 bytes/s, got {rate_bytes_per_s!r}")
        self.rate = float(rate_bytes_per_s)
        self.burst = float(burst_bytes)
        self._last = -math.inf  # the bucket starts full
        self._tokens = self.burst

    def depart(self, now: float, nbytes: int) -> float:
        """Departure time of ``nbytes`` submitted at ``now``, behind every earlier message."""
        start = max(now, self._last)
        if self._last == -math.inf:
            tokens = self.burst
        else:
            tokens = min(self.burst, self._tokens + (start - self._last) * self.rate)
        if tokens >= nbytes:
            departure, tokens = start, tokens - nbytes
        else:
            # Stream the deficit at rate B; the bucket is empty when the last byte leaves.
            departure, tokens = start + (nbytes - tokens) / self.rate, 0.0
        self._last, self._tokens = departure, tokens
        return departure

    @property
    def busy_until(self) -> float:
        """Departure time of the last message accepted (-inf when none yet)."""
        return self._last


@dataclass(slots=True)
class _Link:
    profile: LinkProfile
    bucket: TokenBucket | None
    min_frac: float
    last_delivery: float = -math.inf
    queued_bytes: int = 0
    queued_msgs: int = 0


ProfileSource = LinkProfile | Callable[[Any], LinkProfile]


@dataclass(slots=True, eq=False)
class Shaper:
    """One sending node's outgoing links: submit messages, pop them when they are due.

    Times are seconds on the caller's clock (time.monotonic() in a node, virtual time in the
    simulator). Not thread-safe: one event loop owns it. The queue is not bounded here; the
    transport watches ``queue_depth`` (as it watches ZeroMQ's high-water marks).

    ``profile`` is a default LinkProfile (with optional per-destination ``overrides``) or a
    callable ``dst -> LinkProfile`` (e.g. from :func:`links_from_config`). In mode "uplink"
    the shared bucket's rate and burst come from ``uplink`` (default: ``profile`` when it is
    a LinkProfile) and each destination's profile contributes only its latency model; per-link
    bandwidth is ignored in that mode.
    """

    profile: ProfileSource = field(default_factory=LinkProfile)
    overrides: Mapping[Any, LinkProfile] | None = None
    mode: Literal["link", "uplink"] = "link"
    seed: int = 0
    uplink: LinkProfile | None = None
    _links: dict[Any, _Link] = field(init=False, repr=False, default_factory=dict)
    _heap: list[tuple[float, int, Any, int, Any]] = field(
        init=False, repr=False, default_factory=list
    )
    _seq: int = field(init=False, repr=False, default=0)
    _rng: random.Random = field(init=False, repr=False)
    _uplink_bucket: TokenBucket | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        if self.mode not in ("link", "uplink"):
            raise ValueError(f"shaping mode {self.mode!r} is unknown: use 'link' or 'uplink'")
        if not isinstance(self.profile, LinkProfile) and not callable(self.profile):
            raise ValueError("profile must be a LinkProfile or a callable dst -> LinkProfile")
        self._rng = random.Random(self.seed)
        if self.mode == "uplink":
            if self.uplink is None:
                if not isinstance(self.profile, LinkProfile):
                    raise ValueError("uplink mode with a profile callable needs uplink=LinkProfile")
                self.uplink = self.profile
            if self.uplink.bandwidth_mbps > 0:
                self._uplink_bucket = TokenBucket(
                    self.uplink.bytes_per_second, self.uplink.burst_bytes
                )

    @classmethod
    def from_links(
        cls,
        links: Mapping[tuple[Any, Any], LinkProfile],
        src: Any,
        *,
        mode: Literal["link", "uplink"] = "link",
        seed: int = 0,
        uplink: LinkProfile | None = None,
        default: LinkProfile | None = None,
    ) -> Shaper:
        """The shaper of node ``src`` over a :func:`links_from_config` table."""
        fallback = default if default is not None else LinkProfile()

        def profile_for(dst: Any) -> LinkProfile:
            return links.get((src, dst), fallback)

        return cls(profile_for, mode=mode, seed=seed, uplink=uplink or fallback)

    def _link(self, dst: Any) -> _Link:
        link = self._links.get(dst)
        if link is None:
            if self.overrides is not None and dst in self.overrides:
                prof = self.overrides[dst]
            elif isinstance(self.profile, LinkProfile):
                prof = self.profile
            else:
                prof = self.profile(dst)
            bucket = None
            if self.mode == "link" and prof.bandwidth_mbps > 0:
                bucket = TokenBucket(prof.bytes_per_second, prof.burst_bytes)
            link = _Link(prof, bucket, prof.min_latency_fraction)
            self._links[dst] = link
        return link

    def profile_of(self, dst: Any) -> LinkProfile:
        """The profile in force on the link to ``dst``."""
        return self._link(dst).profile

    def is_unshaped(self, dst: Any) -> bool:
        """True when a message to ``dst`` can go out now, bypassing submit (the fast path)."""
        link = self._link(dst)
        if self.mode == "uplink":
            return (
                self._uplink_bucket is None
                and link.profile.latency_ms == 0
                and link.profile.jitter_ms == 0
            )
        return link.profile.unshaped

    def submit(self, now: float, dst: Any, nbytes: int, item: Any) -> float:
        """Queue ``item`` (``nbytes`` on the wire, envelope included); return its delivery time.

        The returned time equals ``now`` on an unshaped link; pop_due(now) then hands it back.
        """
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        link = self._link(dst)
        bucket = self._uplink_bucket if self.mode == "uplink" else link.bucket
        depart = bucket.depart(now, nbytes) if bucket is not None else now
        prof = link.profile
        delay = 0.0
        if prof.latency_ms > 0:
            lat = prof.latency_ms
            delay = lat if link.min_frac == 1.0 else self._rng.uniform(link.min_frac * lat, lat)
        if prof.jitter_ms > 0:
            delay += self._rng.uniform(0.0, prof.jitter_ms)
        deliver = depart + delay / 1000.0
        if deliver < link.last_delivery:  # FIFO per link, as on its TCP connection
            deliver = link.last_delivery
        link.last_delivery = deliver
        link.queued_bytes += nbytes
        link.queued_msgs += 1
        self._seq += 1
        heapq.heappush(self._heap, (deliver, self._seq, dst, nbytes, item))
        return deliver

    def pop_due(self, now: float) -> list[tuple[Any, Any]]:
        """(dst, item) of every message delivered by ``now``, in delivery order."""
        heap, out = self._heap, []
        while heap and heap[0][0] <= now:
            _, _, dst, nbytes, item = heapq.heappop(heap)
            link = self._links[dst]
            link.queued_bytes -= nbytes
            link.queued_msgs -= 1
            out.append((dst, item))
        return out

    def next_due(self) -> float | None:
        """Delivery time of the earliest queued message (the poll timeout), None when idle."""
        return self._heap[0][0] if self._heap else None

    def queued_bytes(self, dst: Any) -> int:
        """Bytes submitted to ``dst`` and not yet delivered (the caller's memory bound)."""
        link = self._links.get(dst)
        return 0 if link is None else link.queued_bytes

    def queue_depth(self) -> dict[Any, int]:
        """Bytes submitted but not yet delivered, per destination seen (a metrics gauge)."""
        return {dst: link.queued_bytes for dst, link in self._links.items()}

    def __len__(self) -> int:
        return len(self._heap)


_PROFILE_KEYS = frozenset(f.name for f in fields(LinkProfile))


def links_from_config(
    entries: Iterable[Mapping[str, Any]],
    node_ids: Iterable[Any],
    *,
    regions: Mapping[str, Iterable[Any]] | None = None,
    default: LinkProfile | None = None,
) -> dict[tuple[Any, Any], LinkProfile]:
    """Every directed link's profile from a cluster file's link table (heterogeneous WAN).

    Each entry names ``from`` and ``to`` (a node id, or a region name from ``regions``) and
    LinkProfile fields, e.g. ``{from = 0, to = 1, bandwidth_mbps = 30, latency_ms = 80}`` or
    ``{from = "eu", to = "us", latency_ms = 90, symmetric = true}``. A region to itself covers
    the links inside it. Entries are directed unless ``symmetric`` is true; later entries
    override earlier ones, so put region-wide rows first and single links after. Links no entry
    names get ``default`` (unshaped). Unknown nodes, regions or keys raise ValueError naming
    the entry.
    """
    nodes = list(node_ids)
    known = set(nodes)
    if len(known) != len(nodes):
        raise ValueError("node ids must be unique")
    groups: dict[Any, list[Any]] = {}
    for name, members in (regions or {}).items():
        if name in known:
            raise ValueError(f"region {name!r} has the same name as a node")
        members = list(members)
        for m in members:
            if m not in known:
                raise ValueError(f"region {name!r}: unknown node {m!r}")
        groups[name] = members
    base = default if default is not None else LinkProfile()
    out: dict[tuple[Any, Any], LinkProfile] = {(s, d): base for s in nodes for d in nodes if s != d}

    def resolve(where: str, end: str, value: Any) -> list[Any]:
        if isinstance(value, Hashable) and value in groups:
            return groups[value]
        if isinstance(value, Hashable) and value in known:
            return [value]
        names = ", ".join(map(repr, groups)) or "none"
        raise ValueError(
            f"{where}: unknown node or region {value!r} in '{end}' "
            f"(nodes: {', '.join(map(repr, nodes))}; regions: {names})"
        )

    for i, entry in enumerate(entries):
        where = f"links[{i}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}: expected a table, got {entry!r}")
        for end in ("from", "to"):
            if end not in entry:
                raise ValueError(f"{where}: missing '{end}'")
        extra = set(entry) - _PROFILE_KEYS - {"from", "to", "symmetric"}
        if extra:
            raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
        symmetric = entry.get("symmetric", False)
        if not isinstance(symmetric, bool):
            raise ValueError(f"{where}: symmetric must be true or false")
        srcs = resolve(where, "from", entry["from"])
        dsts = resolve(where, "to", entry["to"])
        try:
            prof = LinkProfile(**{k: v for k, v in entry.items() if k in _PROFILE_KEYS})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None
        pairs = [(s, d) for s in srcs for d in dsts if s != d]
        if symmetric:
            pairs += [(d, s) for s, d in pairs]
        for pair in pairs:
            out[pair] = prof
    return out
