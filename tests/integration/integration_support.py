"""Helpers shared by the integration tests (imported by conftest.py and the test modules).

Everything here waits on a condition with a deadline (`wait_until`), never on a fixed sleep.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dtnbus.client import Client, SubmitResult
from dtnbus.cluster import process_alive as pid_alive
from dtnbus.config import ClusterConfig
from dtnbus.messages import Status
from dtnbus.storage import Ledger
from dtnbus.sync import chunk, make_transactions
from dtnbus.waiting import poll_until

Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.02) -> Any:
    """Poll `predicate` until it returns something truthy (returned); fail at `timeout`."""
    value = poll_until(predicate, timeout, interval)
    if not value:
        pytest.fail(f"timed out after {timeout:.1f}s waiting for {what}")
    return value


def processes_mentioning(text: str) -> list[int]:
    """Live processes (not zombies) whose command line contains `text` (e.g. a cluster dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def scrape(address: str, timeout: float = 5.0) -> Metrics:
    """GET http://ADDRESS/metrics -> {(sample name, sorted label pairs): value}."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as resp:
        text = resp.read().decode()
    out: Metrics = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def dropped(metrics: Metrics, reason: str) -> float:
    """dtnbus_dropped_messages_total{reason=REASON} from a scrape (0 when absent)."""
    return metrics.get(("dtnbus_dropped_messages_total", (("reason", reason),)), 0.0)


@dataclass
class RunningCluster:
    """A cluster of real node processes in `directory` (see the `start_cluster` fixture)."""

    directory: Path
    config: ClusterConfig
    pids: dict[int, int]  # node id -> pid, as started
    all_pids: set[int] = field(default_factory=set)  # every pid teardown must see gone

    @property
    def n(self) -> int:
        return self.config.n

    def client(self) -> Client:
        return Client(self.config)

    def submit(self, count: int, request_txs: int = 100, tx_bytes: int = 300, seed: int = 0,
               timeout: float = 30.0, authentication: str = "mac") -> SubmitResult:
        """Submit `count` generated transactions, `request_txs` per signed request."""
        txs = make_transactions(count, tx_bytes, seed=seed)
        with Client(self.config, authentication=authentication) as client:
            return client.submit(chunk(txs, request_txs), timeout=timeout)

    def status(self, timeout: float = 1.0) -> dict[int, Status]:
        with self.client() as client:
            return client.status(timeout)

    def wait_executed(self, txs: int, nodes: list[int] | None = None,
                      timeout: float = 20.0) -> dict[int, Status]:
        """Wait until each of `nodes` (default: all) reports exactly `txs` executed txs."""
        want = list(range(self.n)) if nodes is None else nodes

        def done() -> dict[int, Status] | None:
            st = self.status(timeout=0.5)
            if all(i in st and st[i].executed_txs >= txs for i in want):
                return st
            return None

        statuses = wait_until(done, timeout, f"nodes {want} to execute {txs} transactions")
        for i in want:
            assert statuses[i].executed_txs == txs, (i, statuses[i])
        return statuses

    def ledger_txs(self, node_id: int) -> int:
        ledger = Ledger(self.config.node(node_id).ledger, synchronous="NORMAL")
        try:
            return ledger.transaction_count()
        finally:
            ledger.close()

    def ledger_requests(self, node_id: int) -> list[tuple[str, int, int]]:
        """Every executed (client, session, number) in node `node_id`'s ledger, in order."""
        ledger = Ledger(self.config.node(node_id).ledger, synchronous="NORMAL")
        try:
            return [(r.client, r.session, r.number) for block in ledger.blocks()
                    for r in ledger.requests(block.seq) if r.outcome == 0]
        finally:
            ledger.close()

    def block_hashes(self, node_id: int) -> dict[int, bytes]:
        ledger = Ledger(self.config.node(node_id).ledger, synchronous="NORMAL")
        try:
            return {b.seq: b.hash for b in ledger.blocks()}
        finally:
            ledger.close()

    def metrics(self, node_id: int) -> Metrics:
        return scrape(self.config.node(node_id).metrics)

    def log(self, node_id: int) -> str:
        return (self.directory / "logs" / f"node-{node_id}.log").read_text()
