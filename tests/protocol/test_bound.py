"""The strict floor and the expectation of a sync run: hand-computed terms, monotonicity,
the dominant term, and the floor never above the expectation."""

import math
import random

import pytest

from dtnbus.bound import MAC_SECONDS, _stream_last_arrival, sync_bounds

ED_SIGN, ED_VERIFY, MAC = 19.7e-6, 53.4e-6, MAC_SECONDS

# n=4 (f=1, quorum 3), one request of 100 x 300 B, 8 Mbps = 1e6 B/s, L = 100 ms, no burst.
BASE = dict(nodes=4, tx=100, tx_bytes=300, bandwidth_mbps=8, latency_ms=100, burst_bytes=0)


def test_terms_link_mode_by_hand() -> None:
    b = sync_bounds(**BASE)
    assert (b.f, b.requests, b.hops) == (1, 1, 5)
    assert b.latency_s == pytest.approx(0.5)  # 5 hops x 100 ms
    assert b.payload_s == pytest.approx(30_120 / 1e6)  # 100 x 300 B + 120 B envelope
    assert b.small_messages_s == pytest.approx((182 + 150 + 150 + 200) / 1e6)
    # in order: the client tags the request for 4 replicas, one replica checks its tag; 3
    # signatures (pre-prepare, prepare, commit) and 1 + 2f + 2f verifications; the reply's
    # tag and the client's 3 checks
    assert b.crypto_path_s == pytest.approx(3 * ED_SIGN + 5 * ED_VERIFY + 9 * MAC)
    # 8 signatures (1 + 3 + 4), 19 verifications (3 + 16), 15 tags (8 request, 7 reply)
    assert b.crypto_cpu_s == pytest.approx((8 * ED_SIGN + 19 * ED_VERIFY + 15 * MAC) / 2)
    assert b.crypto_s == b.crypto_cpu_s
    assert b.expected_s == pytest.approx(0.5 + 0.03012 + 0.000682 + b.crypto_cpu_s)
    assert b.dominant == "latency"


def test_floor_terms_by_hand() -> None:
    b = sync_bounds(**BASE)
    assert b.floor_latency_s == pytest.approx(0.5)  # constant latency: no hop is shorter
    assert b.floor_payload_s == pytest.approx(30_000 / 1e6)  # the transactions alone
    # the pre-prepare, a prepare and a commit: each signed, then verified, in turn
    assert b.floor_crypto_s == pytest.approx(3 * (ED_SIGN + ED_VERIFY))
    assert b.floor_s == pytest.approx(0.5 + 0.03 + 3 * (ED_SIGN + ED_VERIFY))
    assert b.floor_s < b.expected_s
    signed = sync_bounds(**BASE, request_auth="signature")
    assert signed.floor_crypto_s == pytest.approx(4 * (ED_SIGN + ED_VERIFY))
    tentative = sync_bounds(**BASE, tentative=True)
    assert tentative.floor_latency_s == pytest.approx(0.4)
    assert tentative.floor_crypto_s == pytest.approx(2 * (ED_SIGN + ED_VERIFY))
    burst = sync_bounds(**{**BASE, "burst_bytes": 5_000})
    assert burst.floor_payload_s == pytest.approx(25_000 / 1e6)  # a full bucket's credit
    unshaped = sync_bounds(**{**BASE, "bandwidth_mbps": 0, "latency_ms": 0})
    assert unshaped.floor_latency_s == unshaped.floor_payload_s == 0.0


def test_signed_requests_cost_what_they_did() -> None:
    b = sync_bounds(**BASE, request_auth="signature")
    # 1 request + 4 phase signatures; verify request, pre-prepare, 2f+2f votes, 3 replies
    assert b.crypto_path_s == pytest.approx(5 * ED_SIGN + 9 * ED_VERIFY)
    # 13 signatures (1 + 1 + 3 + 4 + 4), 26 verifications (4 + 3 + 16 + 3), 2 cores
    assert b.crypto_cpu_s == pytest.approx((13 * ED_SIGN + 26 * ED_VERIFY) / 2)


def test_terms_uplink_mode_by_hand() -> None:
    b = sync_bounds(**BASE, mode="uplink")
    assert b.payload_s == pytest.approx(4 * 30_120 / 1e6)  # the client's uplink: n copies
    # pre-prepare to 2f = 2 backups; votes: ceil(3*2/3) = 2 and ceil(3*2/4) = 2 slots; 1 reply
    assert b.small_messages_s == pytest.approx((2 * 182 + 2 * 150 + 2 * 150 + 200) / 1e6)


def test_burst_credit_is_subtracted_once_per_stage() -> None:
    b = sync_bounds(**{**BASE, "burst_bytes": 5_000})
    assert b.payload_s == pytest.approx((30_120 - 5_000) / 1e6)
    assert b.small_messages_s == 0.0  # every small message fits in a fresh bucket
    default = sync_bounds(**{k: v for k, v in BASE.items() if k != "burst_bytes"})
    assert default.payload_s == pytest.approx(b.payload_s)  # default burst at 8 Mbps: 5 ms


def test_tentative_execution_drops_the_commit_phase() -> None:
    b = sync_bounds(**BASE, tentative=True)
    assert b.hops == 4
    assert b.latency_s == pytest.approx(0.4)
    assert b.small_messages_s == pytest.approx((182 + 150 + 200) / 1e6)
    assert b.crypto_path_s == pytest.approx(2 * ED_SIGN + (1 + 2) * ED_VERIFY + 9 * MAC)
    # 4 signatures (1 + 3), 11 verifications (3 + 8)
    assert b.crypto_cpu_s == pytest.approx((4 * ED_SIGN + 11 * ED_VERIFY + 15 * MAC) / 2)
    assert b.expected_s < sync_bounds(**BASE).expected_s


def test_the_fast_path_has_three_hops_and_the_faster_paths_expectation() -> None:
    b = sync_bounds(**BASE, tentative=True, speculative=True)
    assert b.hops == 3
    assert b.floor_latency_s == pytest.approx(0.3)  # request, pre-prepare, reply
    assert b.floor_crypto_s == pytest.approx(ED_SIGN + ED_VERIFY)  # the PRE-PREPARE's pair
    assert b.latency_s == pytest.approx(0.3)
    # the PRE-PREPARE's pair, a request's tags and check, n reply tags checked
    assert b.crypto_path_s == pytest.approx(ED_SIGN + ED_VERIFY + 4 * MAC + MAC + MAC + 4 * MAC)
    assert b.crypto_cpu_s == sync_bounds(**BASE, tentative=True).crypto_cpu_s  # all still vote
    # uniform latencies: the last of n-1 two-hop paths against the four-hop path's quorums
    drawn = {**BASE, "latency_dist": "uniform-0.1"}
    fast = sync_bounds(**drawn, tentative=True, speculative=True)
    four = sync_bounds(**drawn, tentative=True)
    assert fast.floor_s < four.floor_s and fast.expected_s < four.expected_s
    # E[max of 3 sums of two U(10, 100) ms] = 141.5 ms (a Monte Carlo of 400,000: 141.4)
    assert fast.latency_s - four.latency_s == pytest.approx(
        0.1415 - 2 * (0.01 + 0.09 * 2 / 4) - (0.01 + 0.09 * 3 / 5), abs=1e-3)


def test_several_requests_each_add_an_envelope_and_a_client_signature() -> None:
    b = sync_bounds(**{**BASE, "tx": 250, "request_txs": 100}, request_auth="signature")
    assert b.requests == 3
    assert b.payload_s == pytest.approx((250 * 300 + 3 * 120) / 1e6)
    assert b.crypto_path_s == pytest.approx((3 + 4) * ED_SIGN + 9 * ED_VERIFY)
    assert b.floor_payload_s == pytest.approx(250 * 300 / 1e6)


def test_rsa2048_costs_and_bigger_signatures() -> None:
    b = sync_bounds(**BASE, scheme="rsa2048")  # no MAC authenticators: requests are signed
    assert b.payload_s == pytest.approx((30_000 + 120 + 192) / 1e6)
    assert b.crypto_path_s == pytest.approx(5 * 249.8e-6 + 9 * 22.4e-6)


def test_measured_costs_can_be_overridden() -> None:
    b = sync_bounds(**BASE, sign_s=0.0, verify_s=1e-3, request_auth="signature")
    assert b.crypto_path_s == pytest.approx(9e-3)
    assert b.crypto_cpu_s == pytest.approx(26e-3 / 2)
    assert b.floor_crypto_s == pytest.approx(4e-3)


def test_mbps_base_2_pow_20_is_the_reference_unit() -> None:
    ref = sync_bounds(**BASE, mbps_base=2**20)
    assert ref.payload_s == pytest.approx(30_120 / (8 * 2**20 / 8))


def test_unlimited_bandwidth_has_no_bandwidth_terms() -> None:
    b = sync_bounds(**{**BASE, "bandwidth_mbps": 0})
    assert b.payload_s == 0.0 and b.small_messages_s == 0.0


def test_uniform_latency_estimate_and_strict_floor_by_hand() -> None:
    b = sync_bounds(
        **{**BASE, "bandwidth_mbps": 0, "latency_ms": 300}, latency_dist="uniform-0.1"
    )
    lo, width = 0.03, 0.27
    request = lo + width / 2  # one request: the mean
    votes = 3 * (lo + width * 2 / 4)  # pre-prepare, prepare, commit: 2f-th of n-1
    reply = lo + width * 3 / 5  # client: 2f+1-th of n
    assert b.latency_s == pytest.approx(request + votes + reply)
    assert b.floor_latency_s == pytest.approx(5 * lo)
    assert b.floor_s < b.expected_s


def test_stream_last_arrival_matches_monte_carlo() -> None:
    rng = random.Random(7)
    count, spacing, lo, hi = 50, 0.002, 0.03, 0.3
    trials = [max(rng.uniform(lo, hi) - i * spacing for i in range(count)) for _ in range(20_000)]
    assert _stream_last_arrival(count, spacing, lo, hi) == pytest.approx(
        sum(trials) / len(trials), rel=0.01
    )
    assert _stream_last_arrival(5, 1.0, lo, hi) == pytest.approx((lo + hi) / 2)  # sparse
    assert _stream_last_arrival(10**6, 1e-9, lo, hi) == pytest.approx(hi, rel=1e-3)  # dense


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("nodes", [4, 7, 10, 31, 50, 100]),
        ("tx", [1, 100, 1000, 10_000]),
        ("tx_bytes", [0, 100, 300, 3000]),
        ("latency_ms", [0, 1, 30, 300]),
    ],
)
@pytest.mark.parametrize("mode", ["link", "uplink"])
def test_bound_grows_with_work_and_latency(name: str, values: list, mode: str) -> None:
    args = dict(nodes=10, tx=1000, tx_bytes=300, bandwidth_mbps=1, latency_ms=300)
    totals = [sync_bounds(**{**args, name: v}, mode=mode).expected_s for v in values]
    assert totals == sorted(totals) and totals[0] < totals[-1]


def test_bound_falls_as_bandwidth_grows() -> None:
    totals = [sync_bounds(30, 1000, 300, bw, 300).expected_s for bw in (0.1, 1, 30, 125)]
    assert totals == sorted(totals, reverse=True)
    assert sync_bounds(30, 1000, 300, 0, 300).expected_s <= totals[-1]


def test_uplink_is_never_faster_than_link() -> None:
    for n in (4, 10, 50):
        link = sync_bounds(n, 1000, 300, 1, 300)
        uplink = sync_bounds(n, 1000, 300, 1, 300, mode="uplink")
        assert uplink.expected_s >= link.expected_s


@pytest.mark.parametrize(
    ("args", "kwargs", "dominant"),
    [
        ((10, 1000, 300, 0.1, 300), {}, "payload/bandwidth"),
        ((10, 100, 300, 125, 300), {}, "latency"),
        ((100, 100, 300, 0, 0), {}, "crypto"),
        ((100, 1, 1, 0.1, 0), {"mode": "uplink"}, "small messages/bandwidth"),
    ],
)
def test_dominant_names_the_largest_term(args: tuple, kwargs: dict, dominant: str) -> None:
    assert sync_bounds(*args, **kwargs).dominant == dominant


def test_crypto_uses_the_two_core_floor_when_n_is_large() -> None:
    small = sync_bounds(4, 1, 300, 0, 0)
    large = sync_bounds(100, 1, 300, 0, 0)
    assert large.crypto_s == large.crypto_cpu_s > large.crypto_path_s
    # Ed25519 (libsodium) at n = 100, quorum verification of the votes: ~0.36 s on 2 cores
    assert 0.3 < large.crypto_s < 0.4
    assert small.crypto_s < 0.002


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nodes": 3}, r"nodes must be an integer >= 4"),
        ({"tx": 0}, r"tx must be an integer >= 1"),
        ({"bandwidth_mbps": -1}, r"bandwidth_mbps must be a finite number >= 0"),
        ({"latency_ms": math.nan}, r"latency_ms must be a finite number >= 0"),
        ({"scheme": "dsa"}, r"scheme 'dsa' is unknown"),
        ({"mode": "mesh"}, r"shaping mode 'mesh' is unknown"),
        ({"latency_dist": "pareto"}, r"latency_dist 'pareto' is unknown"),
        ({"reply_quorum": 5}, r"reply_quorum must be in 1..4"),
    ],
)
def test_bad_input_is_one_clear_line(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        sync_bounds(**{**BASE, **kwargs})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("dist", ["constant", "uniform-0.1", "uniform-0.5"])
@pytest.mark.parametrize("mode", ["link", "uplink"])
@pytest.mark.parametrize("tentative", [False, True])
def test_the_floor_is_never_above_the_expectation(dist: str, mode: str,
                                                  tentative: bool) -> None:
    for n, tx, bw, lat in [(4, 1, 0, 0), (4, 100, 8, 100), (10, 100, 0.1, 300),
                           (50, 10_000, 30, 300), (100, 100, 125, 300)]:
        b = sync_bounds(n, tx, 300, bw, lat, latency_dist=dist, mode=mode, tentative=tentative,
                        request_txs=tx)
        assert 0 < b.floor_s <= b.expected_s
        assert b.floor_latency_s <= b.latency_s
        assert b.floor_payload_s <= b.payload_s
        assert b.floor_crypto_s <= b.crypto_path_s
