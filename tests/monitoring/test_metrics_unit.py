"""dtnbus.metrics: what each call records, what it rejects, and the bucket layout."""

from __future__ import annotations

import bisect
import itertools
import math
import urllib.request

import pytest

from dtnbus.errors import LocalError
from dtnbus.metrics import (
    CLIENT_PHASE,
    DROP_REASONS,
    LATENCY_BUCKETS,
    MAX_MESSAGE_KINDS,
    OTHER_KIND,
    PHASES,
    ClientMetrics,
    MetricsUsageError,
    NodeMetrics,
    registered_metric_names,
)
from dtnbus.monitor import free_port


def value(metrics: NodeMetrics | ClientMetrics, name: str, **labels: str) -> float:
    """A sample's current value (0 when the series does not exist yet)."""
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def phase_count(metrics: NodeMetrics, phase: str) -> float:
    return value(metrics, "dtnbus_phase_seconds_count", phase=phase)


def test_a_phase_is_observed_once_per_call() -> None:
    metrics = NodeMetrics(1)
    metrics.observe_phase("preprepare_to_prepared", 0.004)
    assert phase_count(metrics, "preprepare_to_prepared") == 1
    assert value(metrics, "dtnbus_phase_seconds_sum", phase="preprepare_to_prepared") == 0.004
    metrics.observe_phase("preprepare_to_prepared", 0.006)
    assert phase_count(metrics, "preprepare_to_prepared") == 2
    assert all(phase_count(metrics, p) == 0 for p in PHASES if p != "preprepare_to_prepared")


def test_every_phase_and_drop_reason_is_exported_before_it_happens() -> None:
    # rate() and the alert rules need a series from the first scrape, not from the first event.
    registry = NodeMetrics(1).registry
    for phase in PHASES:
        assert registry.get_sample_value("dtnbus_phase_seconds_count", {"phase": phase}) == 0
    for reason in DROP_REASONS:
        sample = registry.get_sample_value("dtnbus_dropped_messages_total", {"reason": reason})
        assert sample == 0


@pytest.mark.parametrize("reason", DROP_REASONS)
def test_drop_counter_rises_for_its_reason_only(reason: str) -> None:
    metrics = NodeMetrics(2)
    metrics.dropped(reason)
    metrics.dropped(reason)
    for other in DROP_REASONS:
        expected = 2 if other == reason else 0
        assert value(metrics, "dtnbus_dropped_messages_total", reason=other) == expected


def test_unknown_phase_is_rejected_as_our_error() -> None:
    metrics = NodeMetrics(1)
    with pytest.raises(MetricsUsageError, match="unknown phase 'execute'") as info:
        metrics.observe_phase("execute", 0.1)
    assert isinstance(info.value, ValueError) and isinstance(info.value, LocalError)
    assert all(phase_count(metrics, p) == 0 for p in PHASES)


def test_unknown_drop_reason_is_rejected_as_our_error() -> None:
    metrics = NodeMetrics(1)
    with pytest.raises(ValueError, match="unknown drop reason"):
        metrics.dropped("felt_like_it")
    assert metrics.registry.get_sample_value(
        "dtnbus_dropped_messages_total", {"reason": "felt_like_it"}
    ) is None


def bucket_index(seconds: float) -> int:
    """Index of the histogram bucket (le is inclusive) a duration falls in."""
    return bisect.bisect_left(LATENCY_BUCKETS, seconds)


def test_buckets_span_half_a_millisecond_to_100_seconds_log_spaced() -> None:
    assert LATENCY_BUCKETS[0] == 0.0005 and LATENCY_BUCKETS[-1] == 100.0
    ratios = [b / a for a, b in itertools.pairwise(LATENCY_BUCKETS)]
    assert all(1.2 < r <= 2.0 for r in ratios), ratios
    per_decade = (len(LATENCY_BUCKETS) - 1) / math.log10(100.0 / 0.0005)
    assert per_decade >= 3.9


def test_buckets_separate_a_2ms_lan_phase_from_a_300ms_wan_phase() -> None:
    lan, wan = bucket_index(0.002), bucket_index(0.3)
    assert wan - lan >= 8
    # Neighbouring LAN latencies are told apart too, not lumped into one "fast" bucket.
    assert bucket_index(0.0008) < bucket_index(0.002) < bucket_index(0.004)
    metrics = NodeMetrics(1)
    metrics.observe_phase("request_to_preprepare", 0.002)
    metrics.observe_phase("prepared_to_committed", 0.3)
    below_lan = value(metrics, "dtnbus_phase_seconds_bucket",
                      phase="request_to_preprepare", le="0.002")
    below_wan = value(metrics, "dtnbus_phase_seconds_bucket",
                      phase="prepared_to_committed", le="0.2")
    assert below_lan == 1 and below_wan == 0


def test_messages_and_bytes_count_per_direction_and_kind() -> None:
    metrics = NodeMetrics(1)
    metrics.message_sent("prepare", 153)
    metrics.message_sent("prepare", 153)
    metrics.message_received("PrePrepare", 20_368)
    metrics.flush()  # counted in plain integers, exported at the node's next gauge update
    assert value(metrics, "dtnbus_messages_total", direction="out", kind="prepare") == 2
    assert value(metrics, "dtnbus_message_bytes_total", direction="out", kind="prepare") == 306
    assert value(metrics, "dtnbus_messages_total", direction="in", kind="preprepare") == 1
    assert value(metrics, "dtnbus_message_bytes_total", direction="in", kind="preprepare") == 20_368


def test_message_kinds_are_capped_so_cardinality_stays_bounded() -> None:
    metrics = NodeMetrics(1)
    for i in range(MAX_MESSAGE_KINDS + 5):
        metrics.message_sent(f"kind_{i}", 1)
    metrics.flush()
    kinds = {
        s.labels["kind"]
        for family in metrics.registry.collect() if family.name == "dtnbus_messages"
        for s in family.samples if s.name == "dtnbus_messages_total"
    }
    assert len(kinds) == MAX_MESSAGE_KINDS + 1
    assert value(metrics, "dtnbus_messages_total", direction="out", kind=OTHER_KIND) == 5
    with pytest.raises(MetricsUsageError):
        metrics.message_sent("not a kind", 1)
        metrics.flush()


def test_gauges_and_progress_counters() -> None:
    metrics = NodeMetrics(3)
    metrics.set_view(0)
    metrics.view_changed(1)
    metrics.view_changed(2)
    metrics.checkpoint_stable(128)
    metrics.set_last_executed(130)
    metrics.set_inflight(3)
    metrics.set_pending_requests(40)
    metrics.set_distrusted_clients(2)
    metrics.batch_cut(100)
    metrics.executed(batches=2, transactions=150)
    metrics.set_shaper_queue("to-2", 4096)
    assert value(metrics, "dtnbus_node_info", node="3") == 1
    assert value(metrics, "dtnbus_view_changes_total") == 2
    assert value(metrics, "dtnbus_view") == 2
    assert value(metrics, "dtnbus_checkpoints_total") == 1
    assert value(metrics, "dtnbus_stable_checkpoint") == 128
    assert value(metrics, "dtnbus_last_executed_sequence") == 130
    assert value(metrics, "dtnbus_inflight_sequences") == 3
    assert value(metrics, "dtnbus_pending_requests") == 40
    assert value(metrics, "dtnbus_distrusted_clients") == 2
    assert value(metrics, "dtnbus_batch_size") == 100
    assert value(metrics, "dtnbus_batch_transactions_count") == 1
    assert value(metrics, "dtnbus_executed_batches_total") == 2
    assert value(metrics, "dtnbus_executed_transactions_total") == 150
    assert value(metrics, "dtnbus_shaper_queue_bytes", link="to-2") == 4096
    metrics.set_shaper_queue("to-client 7", 10)  # sanitised, never raises in the node loop
    assert value(metrics, "dtnbus_shaper_queue_bytes", link="to-client_7") == 10


def test_phase_summary_reads_the_exported_histograms() -> None:
    metrics = NodeMetrics(1)
    metrics.observe_phase("committed_to_executed", 0.25)
    metrics.observe_phase("committed_to_executed", 0.75)
    summary = metrics.phase_summary()
    assert set(summary) == set(PHASES)
    assert summary["committed_to_executed"] == (2, 1.0)
    assert summary["request_to_preprepare"] == (0, 0.0)


def test_client_metrics_measure_request_to_reply_quorum() -> None:
    client = ClientMetrics()
    client.request_sent()
    client.request_sent()
    client.request_retransmitted()
    client.request_accepted(0.012)
    assert client.phase_summary() == {CLIENT_PHASE: (1, 0.012)}
    assert value(client, "dtnbus_client_requests_total") == 2
    assert value(client, "dtnbus_client_retransmissions_total") == 1
    assert value(client, "dtnbus_client_requests_accepted_total") == 1


def test_names_follow_prometheus_conventions() -> None:
    names = registered_metric_names(NodeMetrics(1).registry)
    names |= registered_metric_names(ClientMetrics().registry)
    ours = {name for name in names if not name.startswith("process_")}  # ProcessCollector
    assert all(name.startswith("dtnbus_") for name in ours)
    assert "process_cpu_seconds_total" in names
    types = {
        family.name: family.type
        for registry in (NodeMetrics(1).registry, ClientMetrics().registry)
        for family in registry.collect() if family.name.startswith("dtnbus_")
    }
    for name, kind in types.items():
        if kind == "histogram" and "batch" not in name:
            assert name.endswith("_seconds"), name
        if kind == "gauge":
            assert not name.endswith("_total"), name
    assert "dtnbus_message_bytes_total" in names


def test_many_nodes_coexist_in_one_process_and_serve_their_own_metrics() -> None:
    nodes = [NodeMetrics(i) for i in range(4)]
    nodes[3].executed(1, 7)
    port = free_port()
    nodes[3].serve("127.0.0.1", port)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'dtnbus_node_info{node="3"} 1.0' in text
    assert "dtnbus_executed_transactions_total 7.0" in text
    assert value(nodes[0], "dtnbus_executed_transactions_total") == 0
