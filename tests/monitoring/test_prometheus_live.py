"""A real Prometheus (Debian's package) scraping dtnbus metrics, queried over its HTTP API.

Two sources of metrics, the same checks:
- a live 4-node cluster of real processes (`dtnbus cluster up`, `dtnbus submit`), the test
  the issue asks for;
- an in-process stand-in (four NodeMetrics served on free ports, fed synthetic but
  realistic observations), which also exercises what an unshaped, fault-free cluster never
  produces (shaper queues, drops, view changes) and checks the quantiles a researcher reads.

Every PromQL expression in the dashboard and the recording rules must return data; alert
expressions must parse and evaluate (they are empty while nothing is wrong).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zmq
from monitoring_exprs import Expr, dashboard_exprs, rule_exprs, variable_selectors
from prometheus_client.parser import text_string_to_metric_families

from dtnbus.crypto import Signer, generate_key
from dtnbus.messages import Prepare
from dtnbus.metrics import PHASES, NodeMetrics
from dtnbus.monitor import PrometheusHandle, api_get, free_port, start_prometheus, targets_file
from dtnbus.waiting import poll_until
from dtnbus.wire import Codec

needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="prometheus not installed (apt-get install prometheus)",
)

T = TypeVar("T")
SCRAPE = "1s"
NODES = 4


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` after `timeout`."""
    last = poll_until(probe, timeout, 0.25)
    if not last:
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last probe: {last!r}")
    return last


def targets_up(prom: PrometheusHandle, count: int) -> list[dict[str, Any]] | None:
    active = api_get(prom.url, "/api/v1/targets", {"state": "active"})["activeTargets"]
    ready = [t for t in active if t["health"] == "up"]
    return ready if len(ready) == count else None


def values(prom: PrometheusHandle, expr: str) -> dict[str, float]:
    """Instant query -> {label set as text: value}."""
    result = prom.query(expr)["result"]
    return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1]) for r in result}


def phase_counts(prom: PrometheusHandle) -> dict[str, float] | None:
    """Phase -> batches observed over all nodes, once every phase has samples."""
    rows = prom.query("sum by (phase) (dtnbus_phase_seconds_count)")["result"]
    counts = {r["metric"]["phase"]: float(r["value"][1]) for r in rows}
    return counts if all(counts.get(p, 0) > 0 for p in PHASES) else None


def rules_evaluated(prom: PrometheusHandle) -> list[dict[str, Any]] | None:
    groups = api_get(prom.url, "/api/v1/rules", {})["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    if not rules or any(r.get("lastEvaluation", "").startswith("0001") for r in rules):
        return None
    return rules


def check_every_expression(prom: PrometheusHandle, may_be_empty: set[str]) -> None:
    """Every dashboard/rule expression parses; all but alerts (and may_be_empty) return data."""
    rules = wait_for("every rule evaluated once", lambda: rules_evaluated(prom), 30)
    broken = [(r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not broken, broken
    exprs: list[Expr] = dashboard_exprs() + variable_selectors() + rule_exprs()

    def without_data() -> list[str]:
        empty = []
        for expr in exprs:
            result = prom.query(expr.promql)["result"]  # raises on a parse/evaluation error
            if not result and expr.kind != "alert" and expr.where not in may_be_empty:
                empty.append(f"{expr.where}: {expr.promql}")
        return empty

    # A series born with the first message needs two scrapes before rate() has a value.
    empty: list[str] = []

    def every_one_has_data() -> bool:
        empty[:] = without_data()
        return not empty

    poll_until(every_one_has_data, 15, 0.5)
    assert not empty, "expressions with no data:\n" + "\n".join(empty)


# ----------------------------------------------------------------- live 4-node cluster


def dtnbus(*args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    """Run the dtnbus CLI as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "dtnbus", *args], capture_output=True, text=True,
        timeout=timeout, check=False, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def node_logs(directory: Path, lines: int = 5) -> str:
    """The last lines of every node's log, for a failure message."""
    return "\n".join(
        f"{log.name}: " + " | ".join(log.read_text(errors="replace").splitlines()[-lines:])
        for log in sorted((directory / "logs").glob("*.log"))
    )


# Shaped: every link gets 2 ms one-way latency and 100 Mbit/s, so the shaper's queues (and
# their dashboard panel) carry data and the phases take LAN-like milliseconds.
SHAPED = ("--latency", "2", "--bandwidth", "100")


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A running 4-node cluster of real processes, stopped (none left behind) afterwards."""
    directory = tmp_path / "cluster"
    shaping = SHAPED if getattr(request, "param", "unshaped") == "shaped" else ()
    up = dtnbus("cluster", "up", "--nodes", str(NODES), "--dir", str(directory), *shaping)
    try:
        assert up.returncode == 0, (
            f"cluster up failed: {up.stdout}{up.stderr}\n{node_logs(directory)}"
        )
        yield directory
    finally:
        down = dtnbus("cluster", "down", "--dir", str(directory), timeout=60)
        assert down.returncode == 0, f"cluster down failed: {down.stdout}{down.stderr}"


@needs_prometheus
@pytest.mark.parametrize("cluster", ["unshaped", "shaped"], indirect=True)
def test_prometheus_scrapes_a_live_cluster_and_every_expression_returns_data(
    cluster: Path, request: pytest.FixtureRequest
) -> None:
    shaped = request.node.callspec.params["cluster"] == "shaped"
    entries = json.loads(targets_file(cluster).read_text())
    assert sorted(e["labels"]["node"] for e in entries) == [str(i) for i in range(NODES)]
    with start_prometheus(cluster, scrape_interval=SCRAPE) as prom:
        # A first scrape before any traffic, so rate() sees the counters rise.
        wait_for("4 nodes scraped", lambda: targets_up(prom, NODES), 60)
        submit = dtnbus("submit", "--dir", str(cluster), "--count", "200", "--tx-bytes", "300")
        assert submit.returncode == 0, f"submit failed: {submit.stdout}{submit.stderr}"

        counts = wait_for("samples in every phase histogram", lambda: phase_counts(prom), 30)
        assert set(counts) == set(PHASES)

        def all_executed() -> dict[str, float] | None:
            executed = values(prom, "dtnbus_executed_transactions_total")
            return executed if len(executed) == NODES and min(executed.values()) >= 200 else None

        wait_for("200 transactions executed on every node", all_executed, 30)
        # Each node observes the per-batch phases once per batch it executes.
        batches = {
            json.loads(k)["node"]: v
            for k, v in values(prom, "dtnbus_executed_batches_total").items()
        }
        assert len(batches) == NODES and min(batches.values()) >= 1, batches
        for phase in PHASES[1:]:
            counts = {
                json.loads(k)["node"]: v
                for k, v in values(prom, f'dtnbus_phase_seconds_count{{phase="{phase}"}}').items()
            }
            assert counts == batches, (phase, counts, batches)
        # An unshaped cluster sends at once: no shaper link ever reports a queue.
        shaper_panel = "panel 'Shaper queue per link' target A"
        check_every_expression(prom, may_be_empty=set() if shaped else {shaper_panel})
        if shaped:
            links = values(prom, "dtnbus_shaper_queue_bytes")
            assert len(links) >= NODES * (NODES - 1), links  # every node's link to each peer
        # The quantiles the dashboard shows are real numbers from this run's batches.
        p99 = values(
            prom,
            "histogram_quantile(0.99, sum by (phase, le) (rate(dtnbus_phase_seconds_bucket[1m])))",
        )
        assert len(p99) == len(PHASES)
        assert all(0 < v <= 100 for v in p99.values()), p99
        # A healthy cluster raises no alert: no condition holds, not even before its `for`.
        alerts = [e for e in rule_exprs() if e.kind == "alert"]
        firing = {e.where: prom.query(e.promql)["result"] for e in alerts}
        assert not any(firing.values()), firing


def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One node's /metrics, parsed: (sample name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def test_bad_frames_raise_their_drop_counters_on_a_live_node(cluster: Path) -> None:
    node = tomllib.loads((cluster / "cluster.toml").read_text())["nodes"][0]
    stranger = Codec(Signer(generate_key()), {}, {})
    frames = {
        "malformed": b"\x93not a dtnbus frame",
        "unknown_sender": stranger.encode(Prepare(0, 1, 99, bytes(32))),
        "bad_signature": stranger.encode(Prepare(0, 1, 1, bytes(32))),  # node 1's id, our key
    }

    def dropped() -> dict[str, float]:
        samples = scrape(node["metrics"])
        return {
            reason: samples[("dtnbus_dropped_messages_total", (("reason", reason),))]
            for reason in frames
        }

    before = dropped()
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        dealer.connect(node["router"])
        for frame in frames.values():
            dealer.send(frame)

        def risen() -> dict[str, float] | None:
            now = dropped()
            return now if all(now[r] == before[r] + 1 for r in frames) else None

        after = wait_for("each drop counter to rise by one", risen, 15)
    finally:
        dealer.close()
        context.term()
    assert after == {reason: before[reason] + 1 for reason in frames}
    # Dropped, counted, and the node still commits.
    submit = dtnbus("submit", "--dir", str(cluster), "--count", "10", "--tx-bytes", "300")
    assert submit.returncode == 0, f"submit after bad frames failed: {submit.stderr}"


@needs_prometheus
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["int", "term"])
def test_dtnbus_monitor_runs_prometheus_until_interrupted(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    path = targets_file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps([{"targets": ["127.0.0.1:9"], "labels": {"node": "0"}}]))
    # started with SIGINT ignored, as a background job of a non-interactive shell is: Ctrl-C
    # must still stop it (Python installs no KeyboardInterrupt for an inherited SIG_IGN)
    process = subprocess.Popen(
        [sys.executable, "-m", "dtnbus", "monitor", "--dir", str(tmp_path), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # printed once Prometheus is ready
        assert line.startswith("prometheus: http://127.0.0.1:"), line + process.stderr.read()
        url = line.split()[1]
        workdir = Path(line.split("data: ")[1].split()[0]).parent
        assert api_get(url, "/api/v1/status/config", {})["yaml"]
        process.send_signal(stop_signal)
        try:
            code = process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise AssertionError("monitor still running 30 s after the signal: "
                                 + process.stderr.read()[-2000:]) from None
        assert code == 0, process.stderr.read()[-2000:]
        assert "stopped" in process.stdout.read()
        assert not workdir.exists(), "the temporary TSDB folder is removed"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


@needs_prometheus
def test_a_killed_monitor_leaves_no_prometheus_behind(tmp_path: Path) -> None:
    """SIGKILL cannot be handled, and Prometheus runs in a session of its own: the kernel
    ends it with its parent (PR_SET_PDEATHSIG), or every killed `monitor` leaked one."""
    path = targets_file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps([{"targets": ["127.0.0.1:9"], "labels": {"node": "0"}}]))
    process = subprocess.Popen(
        [sys.executable, "-m", "dtnbus", "monitor", "--dir", str(tmp_path), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("prometheus: http://127.0.0.1:"), line + process.stderr.read()
        data_dir = line.split("data: ")[1].split()[0]
        children = [pid for pid in _pids_mentioning(data_dir) if pid != process.pid]
        assert children, "no prometheus process found for this monitor"
        process.kill()
        process.wait(10)
        wait_for("prometheus to exit with its killed monitor",
                 lambda: not _pids_mentioning(data_dir), timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def _pids_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


# ------------------------------------------------------------- in-process stand-in

# Synthetic phase times: a LAN-like cluster with one WAN-like phase, so the quantile test
# below can check that 2 ms and 300 ms are told apart end to end.
STAND_IN_PHASES = {
    "request_to_preprepare": 0.002,
    "preprepare_to_prepared": 0.003,
    "prepared_to_committed": 0.3,
    "committed_to_executed": 0.001,
}


def feed(nodes: list[NodeMetrics], stop: threading.Event) -> None:
    """What a cluster under load reports, a batch every 50 ms, until `stop`."""
    seq = 0
    while not stop.is_set():
        seq += 1
        for node in nodes:
            for phase, seconds in STAND_IN_PHASES.items():
                node.observe_phase(phase, seconds)
            node.message_sent("prepare", 153)
            node.message_received("commit", 153)
            node.message_received("preprepare", 20_368)
            node.flush()
            node.batch_cut(100)
            node.executed(1, 100)
            node.set_last_executed(seq)
            node.set_inflight(2)
            node.set_pending_requests(seq % 5)
            for peer in range(len(nodes)):
                if peer != node.node_id:
                    node.set_shaper_queue(f"to-{peer}", 1000 * (seq % 7))
            if seq % 10 == 0:
                node.dropped("duplicate")
                node.checkpoint_stable(seq)
            if seq == 20:
                node.view_changed(1)
        stop.wait(0.05)


@needs_prometheus
def test_prometheus_scrapes_stand_in_nodes_and_every_expression_returns_data(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "standin"
    nodes = [NodeMetrics(i) for i in range(NODES)]
    ports = [free_port() for _ in nodes]
    for node, port in zip(nodes, ports, strict=True):
        node.serve("127.0.0.1", port)  # daemon threads: they end with the test process
    path = targets_file(directory)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps([
        {"targets": [f"127.0.0.1:{port}"], "labels": {"node": str(i), "cluster": "standin"}}
        for i, port in enumerate(ports)
    ]))
    stop = threading.Event()
    feeder = threading.Thread(target=feed, args=(nodes, stop), daemon=True)
    try:
        with start_prometheus(directory, scrape_interval=SCRAPE) as prom:
            wait_for("4 stand-in nodes scraped", lambda: targets_up(prom, NODES), 60)
            feeder.start()
            wait_for(
                "phase rates > 0 on every node",
                lambda: len(
                    values(prom, "rate(dtnbus_phase_seconds_count[1m]) > 0")
                ) == NODES * len(PHASES),
                30,
            )
            check_every_expression(prom, may_be_empty=set())

            # The quantiles Grafana shows are the phase times that were observed.
            p50 = {
                json.loads(k)["phase"]: v
                for k, v in values(prom, "cluster_phase:dtnbus_phase_seconds:p50_1m").items()
            }
            assert set(p50) == set(PHASES)
            assert p50["request_to_preprepare"] <= 0.002
            assert 0.2 < p50["prepared_to_committed"] <= 0.3
            assert not any(math.isnan(v) for v in p50.values())
            # Node id mapping for dashboards that scrape without target labels.
            info = values(prom, "dtnbus_node_info")
            assert sorted(json.loads(k)["exported_node"] for k in info) == ["0", "1", "2", "3"]
    finally:
        stop.set()
        if feeder.is_alive():
            feeder.join(5)
