"""The link model's specification: exact departure and delivery times in virtual time."""

import math
import tomllib

import pytest

from dtnbus.shaping import (
    AUTO_BURST,
    LinkProfile,
    Shaper,
    TokenBucket,
    default_burst_bytes,
    links_from_config,
)

MB = 1_000_000  # 8 Mbps = 1,000,000 bytes/s: departure times in ms are byte counts / 1000


def link(**kw: object) -> Shaper:
    return Shaper(LinkProfile(**kw))


# --- token bucket ------------------------------------------------------------------------


def test_empty_bucket_serializes_at_the_rate() -> None:
    s = link(bandwidth_mbps=8, burst_bytes=0)
    assert [s.submit(0.0, "b", 1000, i) for i in range(3)] == pytest.approx([0.001, 0.002, 0.003])


def test_full_bucket_passes_a_burst_at_once_then_the_rate() -> None:
    s = link(bandwidth_mbps=8, burst_bytes=3000)
    times = [s.submit(0.0, "b", 1000, i) for i in range(4)]
    assert times == pytest.approx([0.0, 0.0, 0.0, 0.001])


def test_bucket_refills_at_the_rate_and_caps_at_the_burst() -> None:
    s = link(bandwidth_mbps=8, burst_bytes=2000)
    assert s.submit(0.0, "b", 2000, "x") == 0.0  # bucket emptied
    # 0.5 ms later: 500 tokens; 1500 bytes need 1000 more -> 1 ms more
    assert s.submit(0.0005, "b", 1500, "y") == pytest.approx(0.0015)
    # Idle for 10 s: the bucket holds 2000, never more
    assert s.submit(10.0, "b", 2000, "z") == pytest.approx(10.0)
    assert s.submit(10.0, "b", 1, "w") == pytest.approx(10.000001)


def test_message_larger_than_the_burst_is_streamed_at_the_rate() -> None:
    s = link(bandwidth_mbps=8, burst_bytes=1000)
    assert s.submit(0.0, "b", 5000, "big") == pytest.approx(0.004)  # 1000 free, 4000 at 1 MB/s
    assert s.submit(0.0, "b", 1000, "next") == pytest.approx(0.005)


def test_bucket_exact_after_many_messages() -> None:
    bucket = TokenBucket(rate_bytes_per_s=MB, burst_bytes=0)
    last = 0.0
    for _ in range(10_000):
        last = bucket.depart(0.0, 300)
    assert last == pytest.approx(3.0, rel=1e-9)
    assert bucket.busy_until == last


def test_mbps_base_2_pow_20_reproduces_the_reference_unit() -> None:
    ref = link(bandwidth_mbps=1, burst_bytes=0, mbps_base=2**20)
    si = link(bandwidth_mbps=1, burst_bytes=0)
    assert ref.profile_of("b").bytes_per_second == 131_072
    assert ref.submit(0.0, "b", 131_072, "x") == pytest.approx(1.0)
    assert si.submit(0.0, "b", 131_072, "x") == pytest.approx(1.048576)


def test_default_burst_is_one_frame_or_5_ms_of_rate() -> None:
    assert LinkProfile(bandwidth_mbps=0.1).burst_bytes == 1514
    assert LinkProfile(bandwidth_mbps=125).burst_bytes == 78_125
    assert default_burst_bytes(30) == 18_750
    assert LinkProfile(bandwidth_mbps=1, burst_bytes=0).burst_bytes == 0


# --- FIFO and independence -------------------------------------------------------------


def test_link_is_fifo_a_small_message_never_overtakes_a_big_one() -> None:
    s = link(bandwidth_mbps=8, burst_bytes=0, latency_ms=10)
    big = s.submit(0.0, "b", 100_000, "big")
    small = s.submit(0.0, "b", 10, "small")
    assert small > big
    assert [item for _, item in s.pop_due(1.0)] == ["big", "small"]


def test_link_mode_a_queue_on_one_link_never_delays_another() -> None:
    s = link(bandwidth_mbps=8, burst_bytes=0)
    s.submit(0.0, 1, 10_000_000, "backlog")  # 10 s of queue towards node 1
    assert s.submit(0.0, 2, 1000, "other") == pytest.approx(0.001)
    assert s.submit(0.0, 3, 1000, "other") == pytest.approx(0.001)


def test_uplink_mode_shares_one_bucket_across_destinations() -> None:
    s = Shaper(LinkProfile(bandwidth_mbps=8, burst_bytes=0, latency_ms=50), mode="uplink")
    times = [s.submit(0.0, dst, 1000, "vote") for dst in (1, 2, 3)]  # a broadcast to 3 peers
    assert times == pytest.approx([0.051, 0.052, 0.053])
    assert not s.is_unshaped(1)


def test_uplink_mode_uses_each_links_latency() -> None:
    s = Shaper(
        LinkProfile(bandwidth_mbps=8, burst_bytes=0),
        overrides={2: LinkProfile(latency_ms=100, bandwidth_mbps=999)},  # bandwidth ignored
        mode="uplink",
    )
    assert s.submit(0.0, 1, 1000, "a") == pytest.approx(0.001)
    assert s.submit(0.0, 2, 1000, "b") == pytest.approx(0.102)


def test_uplink_mode_with_a_callable_needs_an_uplink_profile() -> None:
    with pytest.raises(ValueError, match=r"uplink mode .* needs uplink"):
        Shaper(lambda dst: LinkProfile(), mode="uplink")


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="shaping mode 'star' is unknown"):
        Shaper(LinkProfile(), mode="star")  # type: ignore[arg-type]


# --- no shaping ------------------------------------------------------------------------


def test_zero_bandwidth_and_zero_latency_mean_no_shaping() -> None:
    assert LinkProfile().unshaped
    s = Shaper(LinkProfile())
    assert s.is_unshaped(7)
    assert s.submit(3.5, 7, 10**9, "x") == 3.5  # even a huge message: due at once
    assert s.pop_due(3.5) == [(7, "x")]


def test_latency_only_or_bandwidth_only_or_jitter_only_is_shaped() -> None:
    assert not LinkProfile(latency_ms=1).unshaped
    assert not LinkProfile(bandwidth_mbps=1).unshaped
    assert not LinkProfile(jitter_ms=1).unshaped


def test_bandwidth_zero_with_latency_is_a_pure_delay_line() -> None:
    s = link(latency_ms=300)
    assert [s.submit(0.0, "b", 10**8, i) for i in range(3)] == pytest.approx([0.3] * 3)


# --- latency ---------------------------------------------------------------------------


def test_constant_latency_follows_the_bucket() -> None:
    s = link(bandwidth_mbps=8, burst_bytes=0, latency_ms=300)
    assert s.submit(1.0, "b", 1000, "x") == pytest.approx(1.301)
    assert s.next_due() == pytest.approx(1.301)
    assert s.pop_due(1.3009) == []
    assert s.pop_due(1.301) == [("b", "x")]
    assert s.next_due() is None


def test_uniform_0_1_latency_lies_in_a_tenth_of_l_to_l() -> None:
    s = link(latency_ms=300, latency_dist="uniform-0.1", jitter_ms=0)
    # One message per link, so FIFO never lifts a sample.
    delays = [s.submit(0.0, dst, 100, dst) for dst in range(2000)]
    assert min(delays) >= 0.030 and max(delays) <= 0.300
    assert min(delays) < 0.035 and max(delays) > 0.295
    assert sum(delays) / len(delays) == pytest.approx(0.165, rel=0.03)


def test_random_latency_is_reproducible_from_the_seed() -> None:
    def run(seed: int) -> list[float]:
        s = Shaper(LinkProfile(latency_ms=300, latency_dist="uniform-0.1"), seed=seed)
        return [s.submit(0.0, dst, 1, None) for dst in range(20)]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_random_latency_keeps_fifo_per_link() -> None:
    s = link(latency_ms=300, latency_dist="uniform-0.1", bandwidth_mbps=8, burst_bytes=0)
    times = [s.submit(0.0, "b", 100, i) for i in range(500)]  # 0.1 ms apart, L spread 270 ms
    assert times == sorted(times)
    assert [item for _, item in s.pop_due(10.0)] == list(range(500))


def test_jitter_adds_up_to_its_value_on_top_of_latency() -> None:
    s = link(latency_ms=50, jitter_ms=10)
    delays = [s.submit(0.0, dst, 1, None) for dst in range(1000)]
    assert 0.050 <= min(delays) < 0.051 and 0.059 < max(delays) <= 0.060


# --- queue and scheduling API ----------------------------------------------------------


def test_queue_depth_counts_bytes_not_yet_delivered_per_link() -> None:
    s = link(bandwidth_mbps=8, burst_bytes=0, latency_ms=10)
    for _ in range(3):
        s.submit(0.0, 1, 1000, "a")
    s.submit(0.0, 2, 500, "b")
    assert s.queue_depth() == {1: 3000, 2: 500}
    assert len(s) == 4
    # link 2: 0.5 ms + 10 ms; link 1: 1, 2, 3 ms + 10 ms
    assert [dst for dst, _ in s.pop_due(0.0115)] == [2, 1]
    assert s.queue_depth() == {1: 2000, 2: 0}
    s.pop_due(1.0)
    assert s.queue_depth() == {1: 0, 2: 0}
    assert len(s) == 0


def test_pop_due_returns_messages_in_delivery_order_across_links() -> None:
    s = Shaper(
        LinkProfile(latency_ms=30),
        overrides={"near": LinkProfile(latency_ms=10), "far": LinkProfile(latency_ms=80)},
    )
    s.submit(0.0, "far", 1, "f")
    s.submit(0.0, "mid", 1, "m")
    s.submit(0.0, "near", 1, "n")
    assert s.next_due() == pytest.approx(0.010)
    assert s.pop_due(1.0) == [("near", "n"), ("mid", "m"), ("far", "f")]


def test_profile_callable_is_asked_once_per_destination() -> None:
    asked: list[object] = []

    def profile_for(dst: object) -> LinkProfile:
        asked.append(dst)
        return LinkProfile(latency_ms=5 if dst == 1 else 0)

    s = Shaper(profile_for)
    assert not s.is_unshaped(1) and s.is_unshaped(2)
    s.submit(0.0, 1, 10, "x")
    s.submit(0.0, 1, 10, "y")
    assert asked == [1, 2]


def test_many_queued_messages_stay_cheap() -> None:
    s = link(bandwidth_mbps=100, latency_ms=300)
    for i in range(50_000):
        s.submit(i * 1e-5, i % 50, 300, i)
    due = s.pop_due(math.inf)
    assert len(due) == 50_000
    assert s.next_due() is None


def test_negative_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="nbytes must be >= 0"):
        link().submit(0.0, 1, -1, None)


# --- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bandwidth_mbps": -1}, r"bandwidth_mbps must be a finite number >= 0, got -1"),
        ({"latency_ms": math.nan}, r"latency_ms must be a finite number >= 0, got nan"),
        ({"latency_ms": math.inf}, r"latency_ms must be a finite number >= 0"),
        ({"bandwidth_mbps": "fast"}, r"bandwidth_mbps must be a number, got 'fast'"),
        ({"jitter_ms": -0.5}, r"jitter_ms must be a finite number >= 0"),
        ({"latency_dist": "normal"}, r"latency_dist 'normal' is unknown"),
        ({"latency_dist": "uniform-2"}, r"latency_dist 'uniform-2' is unknown"),
        ({"burst_bytes": -5}, r"burst_bytes must be >= 0"),
        ({"burst_bytes": 1.5}, r"burst_bytes must be an integer"),
        ({"mbps_base": 0}, r"mbps_base must be > 0"),
    ],
)
def test_invalid_profile_is_rejected_with_one_clear_line(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        LinkProfile(**kwargs)
    assert "\n" not in str(info.value)


def test_auto_burst_sentinel_resolves_to_an_int() -> None:
    prof = LinkProfile(bandwidth_mbps=30, burst_bytes=AUTO_BURST)
    assert isinstance(prof.burst_bytes, int) and prof.burst_bytes == 18_750


# --- heterogeneous WAN from the cluster file ---------------------------------------------


def test_links_from_config_single_links_are_directed_by_default() -> None:
    links = links_from_config(
        [{"from": 0, "to": 1, "bandwidth_mbps": 30, "latency_ms": 80}], node_ids=[0, 1, 2]
    )
    assert links[(0, 1)] == LinkProfile(bandwidth_mbps=30, latency_ms=80)
    assert links[(1, 0)].unshaped and links[(0, 2)].unshaped
    assert len(links) == 6  # every ordered pair of distinct nodes


def test_links_from_config_regions_symmetric_and_later_entries_win() -> None:
    links = links_from_config(
        [
            {"from": "eu", "to": "eu", "latency_ms": 10, "bandwidth_mbps": 125},
            {"from": "eu", "to": "us", "latency_ms": 90, "bandwidth_mbps": 30, "symmetric": True},
            {"from": 3, "to": 0, "latency_ms": 150},
        ],
        node_ids=[0, 1, 2, 3],
        regions={"eu": [0, 1], "us": [2, 3]},
    )
    assert links[(0, 1)].latency_ms == 10 and links[(1, 0)].latency_ms == 10
    assert links[(1, 2)].latency_ms == 90 and links[(2, 1)].latency_ms == 90
    assert links[(3, 0)] == LinkProfile(latency_ms=150)
    assert links[(2, 3)].unshaped  # inside "us": no entry


def test_shaper_from_links_uses_the_senders_row() -> None:
    links = links_from_config([{"from": 0, "to": 1, "latency_ms": 80}], node_ids=[0, 1, 2])
    s = Shaper.from_links(links, src=0)
    assert s.submit(0.0, 1, 10, "x") == pytest.approx(0.080)
    assert s.is_unshaped(2)


CLUSTER_TOML = """
[regions]
eu = [0, 1, 2]
us = [3, 4, 5]

[[links]]
from = "eu"
to = "eu"
bandwidth_mbps = 125
latency_ms = 10

[[links]]
from = "eu"
to = "us"
bandwidth_mbps = 30
latency_ms = 90
symmetric = true

[[links]]
from = 5
to = 0
latency_ms = 150
"""


def test_links_from_config_reads_the_documented_cluster_file_table() -> None:
    cfg = tomllib.loads(CLUSTER_TOML)  # the example in docs/emulation.md
    links = links_from_config(cfg["links"], range(6), regions=cfg["regions"])
    assert links[(1, 2)] == LinkProfile(bandwidth_mbps=125, latency_ms=10)
    assert links[(4, 1)] == links[(1, 4)] == LinkProfile(bandwidth_mbps=30, latency_ms=90)
    assert links[(5, 0)] == LinkProfile(latency_ms=150)
    assert links[(0, 5)].latency_ms == 90 and links[(3, 4)].unshaped


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"from": 0, "to": 9}, r"links\[0\]: unknown node or region 9 in 'to'"),
        ({"from": "mars", "to": 1}, r"links\[0\]: unknown node or region 'mars' in 'from'"),
        ({"from": 0}, r"links\[0\]: missing 'to'"),
        ({"from": 0, "to": 1, "speed": 3}, r"links\[0\]: unknown key\(s\) speed"),
        ({"from": 0, "to": 1, "latency_ms": -3}, r"links\[0\]: latency_ms must be a finite"),
        ({"from": 0, "to": 1, "symmetric": "yes"}, r"links\[0\]: symmetric must be true or false"),
    ],
)
def test_links_from_config_rejects_bad_entries_clearly(entry: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        links_from_config([entry], node_ids=[0, 1])


def test_links_from_config_rejects_a_region_with_an_unknown_node() -> None:
    with pytest.raises(ValueError, match="region 'eu': unknown node 7"):
        links_from_config([], node_ids=[0, 1], regions={"eu": [0, 7]})
