"""Two reference figures for a sync run on the emulated network: a strict floor and an
expectation.

Every result prints both, each named for what it is, so a reader can tell how far a
figure is from what the network allows and which term sets it:

- **the strict floor** (``floor_s``, reported as ``latency_floor_s``): no run can beat it.
  The shortest one-way latency the model can draw on each hop of the critical path, the
  transactions' bytes over the client's link, and the signatures and verifications that
  must follow one another. A run below it means the measurement or the emulation is wrong.
- **the expectation** (``expected_s``, reported as ``latency_expected_s``): what a run
  should take on average under the latency model (for ``uniform-F`` the expected order
  statistics, not the minimum), plus every byte and every quorum's cryptography. Runs can
  and do beat it under a random latency model; it is what a figure is compared with to
  say how close to the network's pace it runs.

The model is dtnbus's own critical path (Castro-Liskov style): the client sends each
request to every replica, the PRE-PREPARE orders request digests, PREPARE and COMMIT are
signed broadcasts, REPLY carries a digest. Requests and replies carry MAC authenticators
on Ed25519 clusters (signatures on RSA ones). docs/emulation.md derives the formulas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from dtnbus.shaping import AUTO_BURST, LinkProfile

__all__ = [
    "DIGEST_BYTES",
    "HOPS",
    "MAC_SECONDS",
    "PREPREPARE_ENVELOPE_BYTES",
    "REPLY_BYTES",
    "REQUEST_ENVELOPE_BYTES",
    "SCHEMES",
    "SPECULATIVE_HOPS",
    "VOTE_BYTES",
    "SyncBounds",
    "sync_bounds",
]

HOPS = 5
"""One-way latencies on the critical path: request, pre-prepare, prepare, commit, reply.

With PBFT's tentative execution (reply once prepared) the commit hop leaves it: 4; the fast
path (reply once pre-prepared, the client needs all n) leaves request, pre-prepare and reply:
`SPECULATIVE_HOPS`. A protocol change that shortens the client's path further must change
these, or the floor stops being one."""
SPECULATIVE_HOPS = 3

REQUEST_ENVELOPE_BYTES = 120
"""Per request, besides its transactions: header, client id, timestamp, 64 B Ed25519 sig."""
DIGEST_BYTES = 32
"""A request digest (SHA-256) in a PRE-PREPARE."""
PREPREPARE_ENVELOPE_BYTES = 150
"""A PRE-PREPARE without its digests (type, view, seq, batch digest, node, signature)."""
VOTE_BYTES = 150
"""A PREPARE or COMMIT (about 153 B encoded, machine-limits 1b)."""
REPLY_BYTES = 200
"""A REPLY: a result digest, not the payload."""

SCHEMES: dict[str, tuple[float, float, int]] = {
    # scheme: (sign seconds, verify seconds, signature bytes), machine-limits.md 1a; Ed25519
    # through libsodium (PyNaCl, a pinned dependency; dtnbus.crypto uses it), RSA-2048 PSS
    "ed25519": (19.7e-6, 53.4e-6, 64),
    "rsa2048": (249.8e-6, 22.4e-6, 256),
}
MAC_SECONDS = 0.6e-6
"""One MAC tag (keyed BLAKE2b of a digest), made or checked: dtnbus.crypto.mac."""
_ED25519_SIG = 64


@dataclass(frozen=True, slots=True)
class SyncBounds:
    """The expectation's terms and the strict floor's terms, in seconds."""

    nodes: int
    f: int
    requests: int
    hops: int
    latency_s: float
    """Expected ``hops`` one-way latencies (for uniform-F: order statistics, docs/emulation.md)."""
    payload_s: float
    """The request bytes (every transaction plus envelopes) over the client's link."""
    small_messages_s: float
    """PRE-PREPARE, PREPARE, COMMIT and REPLY bytes over their links, after burst credit."""
    crypto_s: float
    """max(crypto_path_s, crypto_cpu_s)."""
    crypto_path_s: float
    """Signatures and verifications that must happen one after another."""
    crypto_cpu_s: float
    """All the round's signatures and quorum verifications spread over the cores."""
    floor_latency_s: float
    """``hops`` x the smallest latency the model can draw (F*L): no hop is shorter."""
    floor_payload_s: float
    """The transactions' bytes alone (no envelope, one copy) through a full bucket."""
    floor_crypto_s: float
    """The signatures and verifications on the path that cannot overlap anything: the
    PRE-PREPARE's, one PREPARE's and one COMMIT's (and the request's when it is signed)."""

    @property
    def expected_s(self) -> float:
        """The expectation: latency + payload + small messages + crypto."""
        return self.latency_s + self.payload_s + self.small_messages_s + self.crypto_s

    @property
    def floor_s(self) -> float:
        """The strict floor: floor latency + floor payload + floor crypto."""
        return self.floor_latency_s + self.floor_payload_s + self.floor_crypto_s

    @property
    def dominant(self) -> str:
        """The name of the expectation's largest term, for the note beside a result."""
        terms = {
            "latency": self.latency_s,
            "payload/bandwidth": self.payload_s,
            "small messages/bandwidth": self.small_messages_s,
            "crypto": self.crypto_s,
        }
        return max(terms, key=terms.__getitem__)

    def expected_terms(self) -> dict[str, float]:
        return {"latency_s": self.latency_s, "payload_s": self.payload_s,
                "small_messages_s": self.small_messages_s, "crypto_s": self.crypto_s}

    def floor_terms(self) -> dict[str, float]:
        return {"latency_s": self.floor_latency_s, "payload_s": self.floor_payload_s,
                "crypto_s": self.floor_crypto_s}


def _order_stat(q: int, m: int, lo: float, hi: float) -> float:
    """E[q-th smallest of m uniforms on [lo, hi]]: how long a node waits for a quorum of q."""
    return lo + (hi - lo) * q / (m + 1)


def _last_of_two_hop_paths(m: int, lo: float, hi: float) -> float:
    """E[max of m sums X + Y, X and Y uniform on [lo, hi]]: when the last of m replicas'
    answers arrives, each one hop (the PRE-PREPARE) then another (its reply) away."""
    width = hi - lo
    if width <= 0:
        return 2 * hi
    steps = 2000
    acc = 0.0
    for k in range(steps):
        x = (k + 0.5) * 2 * width / steps  # the candidate max, minus 2 lo
        u = x / width
        cdf = u * u / 2 if u <= 1 else 1 - (2 - u) ** 2 / 2  # of the triangular sum
        acc += 1.0 - cdf ** m
    return 2 * lo + acc * 2 * width / steps


def _stream_last_arrival(count: int, spacing: float, lo: float, hi: float) -> float:
    """E[delay of the last of ``count`` messages, ``spacing`` s apart, on one FIFO link].

    With per-message uniform [lo, hi] latency and FIFO delivery the last message arrives at
    max_i(X_i - i*spacing) after it left; a dense stream pushes that towards hi.
    """
    width = hi - lo
    if width <= 0:
        return hi
    if spacing <= 0:
        return _order_stat(count, count, lo, hi)
    steps = 2000
    acc = 0.0
    for k in range(steps):
        x = (k + 0.5) * width / steps  # the candidate max, minus lo
        m = min(count, math.ceil((width - x) / spacing))  # terms with P(X_i <= .) < 1
        z = x / spacing
        # log prod_{i<m} (x + i*spacing)/width via lgamma, O(1) per point
        log_p = m * math.log(spacing / width) + math.lgamma(z + m) - math.lgamma(z)
        acc += 1.0 - math.exp(log_p)
    return lo + acc * width / steps


def sync_bounds(
    nodes: int,
    tx: int,
    tx_bytes: int,
    bandwidth_mbps: float,
    latency_ms: float,
    *,
    mode: Literal["link", "uplink"] = "link",
    mbps_base: float = 1e6,
    scheme: str = "ed25519",
    request_txs: int = 100,
    request_auth: Literal["mac", "signature"] = "mac",
    sign_s: float | None = None,
    verify_s: float | None = None,
    latency_dist: str = "constant",
    burst_bytes: int = AUTO_BURST,
    reply_quorum: int | None = None,
    cores: int = 2,
    tentative: bool = False,
    speculative: bool = False,
) -> SyncBounds:
    """The strict floor and the expectation of the time for the client to hold
    ``reply_quorum`` (default 2f+1) replies for ``tx`` transactions of ``tx_bytes``, sent in
    requests of up to ``request_txs``.

    Bandwidth and latency are those of the shaper (``mode``, ``mbps_base``, ``burst_bytes``,
    ``latency_dist`` as in :class:`~dtnbus.shaping.LinkProfile`). Sign/verify costs default to
    the measured figures for ``scheme``. ``request_auth``: how requests and replies are
    authenticated ("mac" only on Ed25519; RSA clusters sign). ``tentative``: replicas reply
    once prepared (PBFT's tentative execution), which drops the commit phase from the path.
    ``speculative``: they also reply once pre-prepared, and the client decides on all n of
    those (the fast path: request, pre-prepare, reply) or on the other path, whichever is
    first; the expectation takes the faster path's (an upper bound on the mean of the
    earlier of the two) and the floor the fast path's hops.
    Raises ValueError with one line on bad input.
    """
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 4:
        raise ValueError(f"nodes must be an integer >= 4 (3f+1 with f >= 1), got {nodes!r}")
    for name, value, least in (
        ("tx", tx, 1),
        ("tx_bytes", tx_bytes, 0),
        ("request_txs", request_txs, 1),
        ("cores", cores, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    if mode not in ("link", "uplink"):
        raise ValueError(f"shaping mode {mode!r} is unknown: use 'link' or 'uplink'")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme {scheme!r} is unknown: use one of {', '.join(SCHEMES)}")
    if request_auth not in ("mac", "signature"):
        raise ValueError(f"request_auth {request_auth!r} is unknown: use 'mac' or 'signature'")
    link = LinkProfile(
        bandwidth_mbps=bandwidth_mbps,
        latency_ms=latency_ms,
        burst_bytes=burst_bytes,
        latency_dist=latency_dist,
        mbps_base=mbps_base,
    )
    f = (nodes - 1) // 3
    quorum = 2 * f + 1 if reply_quorum is None else reply_quorum
    if not 1 <= quorum <= nodes:
        raise ValueError(f"reply_quorum must be in 1..{nodes}, got {reply_quorum!r}")
    sign, verify, sig_len = SCHEMES[scheme]
    sign = sign if sign_s is None else sign_s
    verify = verify if verify_s is None else verify_s
    extra = sig_len - _ED25519_SIG  # envelopes above assume a 64 B signature
    macs = request_auth == "mac" and scheme == "ed25519"

    requests = math.ceil(tx / request_txs)
    request_bytes = tx * tx_bytes + requests * (REQUEST_ENVELOPE_BYTES + extra)
    last_request = request_bytes - (requests - 1) * (
        request_txs * tx_bytes + REQUEST_ENVELOPE_BYTES + extra
    )
    # The last PRE-PREPARE must follow the last request; it holds at least that one digest
    # (earlier digests can overlap the request stream on other links, so they are not counted).
    preprepare = DIGEST_BYTES + PREPREPARE_ENVELOPE_BYTES + extra
    vote = VOTE_BYTES + extra
    reply = REPLY_BYTES + extra

    rate = link.bytes_per_second
    burst = link.burst_bytes

    def wire(nbytes: float) -> float:
        # A fresh bucket lets `burst` bytes through at once; the rest go at the rate.
        return 0.0 if math.isinf(rate) else max(0.0, nbytes - burst) / rate

    if mode == "link":
        copies_request, copies_pp, copies_prepare, copies_commit = 1, 1, 1, 1
    else:
        # One uplink per node: the client's carries a copy per replica. A broadcast's copies
        # leave one after another; 2f+1 nodes each needing 2f votes from distinct senders
        # (one copy per sender per slot) need at least this many slots (pigeonhole).
        copies_request = nodes
        copies_pp = 2 * f
        copies_prepare = math.ceil((2 * f + 1) * 2 * f / (nodes - 1))
        copies_commit = math.ceil((2 * f + 1) * 2 * f / nodes)
    payload_s = wire(copies_request * request_bytes)
    commit_s = 0.0 if tentative else wire(copies_commit * vote)
    small_s = wire(copies_pp * preprepare) + wire(copies_prepare * vote) + commit_s + wire(reply)
    hops = HOPS - 1 if tentative else HOPS

    hop = latency_ms / 1000.0
    lo = link.min_latency_fraction * hop
    if lo == hop:
        latency_s = hops * hop
        fast_s = SPECULATIVE_HOPS * hop
    else:
        spacing = 0.0 if math.isinf(rate) else copies_request * last_request / rate
        request_s = _stream_last_arrival(requests, spacing, lo, hop)  # the stream's last
        latency_s = (
            request_s
            + _order_stat(2 * f, nodes - 1, lo, hop)  # pre-prepare at the 2f-th backup
            + _order_stat(2 * f, nodes - 1, lo, hop)  # prepare quorum: 2f others
            + (0.0 if tentative else _order_stat(2 * f, nodes - 1, lo, hop))  # commit: 2f+own
            + _order_stat(quorum, nodes, lo, hop)  # the client's reply quorum
        )
        # the fast path: every backup's PRE-PREPARE then its reply, the last of n - 1
        fast_s = request_s + _last_of_two_hop_paths(nodes - 1, lo, hop)

    # In order: the client authenticates every request, a replica checks the last, the
    # primary signs the PRE-PREPARE, a backup verifies it and signs its PREPARE, verifies 2f,
    # signs a COMMIT, verifies 2f, authenticates the REPLY; the client checks `quorum` replies.
    # Tentative execution drops one signature per node and 2f verifications per node.
    # With MACs a request costs the client n tags and each replica one check, a reply one.
    phases = 2 if tentative else 3  # replica-side signatures on the path (pre-prepare, votes)
    votes = 2 * f if tentative else 4 * f
    if macs:
        request_path = requests * nodes * MAC_SECONDS + MAC_SECONDS
        reply_path = MAC_SECONDS + quorum * MAC_SECONDS
        request_cpu = requests * nodes * 2 * MAC_SECONDS
        reply_cpu = (nodes + quorum) * MAC_SECONDS
    else:
        request_path = requests * sign + verify
        reply_path = sign + quorum * verify
        request_cpu = requests * sign + nodes * requests * verify
        reply_cpu = nodes * sign + quorum * verify
    crypto_path = request_path + phases * sign + (1 + votes) * verify + reply_path
    if speculative:  # the PRE-PREPARE's pair, then n replies: the faster path's terms
        fast_crypto = request_path + sign + verify + reply_path + (nodes - quorum) * (
            MAC_SECONDS if macs else verify)
        if fast_s + fast_crypto < latency_s + crypto_path:
            latency_s, crypto_path = fast_s, fast_crypto
            small_s = wire(copies_pp * preprepare) + wire(reply)
        hops, phases = SPECULATIVE_HOPS, 1
    signatures = 1 + (nodes - 1) + (0 if tentative else nodes)
    verifications = (nodes - 1) + votes * nodes
    crypto_cpu = (request_cpu + reply_cpu + signatures * sign + verifications * verify) / cores

    # The floor: nothing below the model's shortest draw on any hop; the transactions must
    # leave the client (a full bucket passes `burst` bytes at once); after the last request
    # arrives, the PRE-PREPARE, a PREPARE and a COMMIT are each signed and then verified
    # before the next hop can leave (a signed request adds its own pair).
    floor_crypto = phases * (sign + verify) + (0.0 if macs else sign + verify)
    return SyncBounds(
        nodes=nodes,
        f=f,
        requests=requests,
        hops=hops,
        latency_s=latency_s,
        payload_s=payload_s,
        small_messages_s=small_s,
        crypto_s=max(crypto_path, crypto_cpu),
        crypto_path_s=crypto_path,
        crypto_cpu_s=crypto_cpu,
        floor_latency_s=hops * lo,
        floor_payload_s=wire(tx * tx_bytes),
        floor_crypto_s=floor_crypto,
    )
