"""Every Prometheus metric dtnbus exports, and the only module that creates them.

A node process owns one `NodeMetrics`, a client one `ClientMetrics`. Each has its own
`CollectorRegistry` (not the global default) so that many nodes and clients can coexist in
one test process without name clashes. The node code calls the small methods below; nothing
else in the code base touches `prometheus_client`, so the dashboard and the alert rules in
`dtnbus/monitoring/` can be checked against the names registered here (tests/monitoring).

Conventions: every name starts with `dtnbus_`; counters end in `_total`, byte counters in
`_bytes_total`, durations are in seconds and end in `_seconds`. No label carries a
per-transaction or per-request value: label values come from the fixed tuples below, from
a capped set of message kinds, or from link names bounded by the cluster size. There is no
`node` label on the samples: Prometheus adds `instance` (and `node` from the file-based
service discovery that `dtnbus cluster up` writes); `dtnbus_node_info{node="3"} 1` maps an
instance to its node id for dashboards that scrape without those target labels.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
from collections.abc import Iterable
from typing import NoReturn

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)

from dtnbus.errors import LocalError

# `_created` series (a timestamp per counter and histogram child) add a quarter more series
# and nothing our dashboards or rules use; prometheus_client only offers a global switch.
disable_created_metrics()

# Normal-case PBFT phases as a replica sees them, in order. The four add up to the time from
# a request reaching a replica to its batch being written to the ledger.
PHASES: tuple[str, ...] = (
    "request_to_preprepare",  # request received -> pre-prepare sent (primary) / accepted
    "preprepare_to_prepared",  # pre-prepare -> prepared (pre-prepare + 2f matching prepares)
    "prepared_to_committed",  # prepared -> committed-local (q matching commits)
    "committed_to_executed",  # committed-local -> executed (block appended to the ledger)
)
# The client-visible phase: first send of a request -> f+1 matching replies.
CLIENT_PHASE = "request_to_reply_quorum"

# Why a frame was dropped instead of reaching the replica (PeerError.reason values), plus
# our own back-pressure drop. Fixed, so the label's cardinality is fixed.
DROP_REASONS: tuple[str, ...] = (
    "malformed",
    "oversized",
    "bad_signature",
    "unknown_sender",
    "stale_view",
    "out_of_window",
    "duplicate",
    "send_queue_full",
    "pool_full",
    "rate_limited",  # a peer asked for more work than a correct one needs (dtnbus.budget)
    "unsolicited",  # a state reply nobody asked for, or for an old request
    "internal_error",  # handling one message raised: a bug; the message is dropped, the
    # node goes on (tests fail if this is ever counted)
)

# Why the CurveZMQ layer refused a connection or a frame (zap.py, transport.py, node.py).
CURVE_REFUSAL_REASONS: tuple[str, ...] = (
    "no_curve",  # the peer speaks no CURVE (a plain ZeroMQ socket)
    "bad_handshake",  # the CURVE handshake failed: wrong server key, forged client key
    "handshake_aborted",  # the peer hung up mid-handshake (often a plain ZeroMQ peer)
    "unknown_key",  # a valid CURVE key that the cluster file does not list
    "not_a_replica",  # a client key tried to subscribe to a replica's PUB
    "identity_mismatch",  # a connection claims a routing identity that is not its own
    "member_mismatch",  # a frame its connection's member may not deliver
)

# Latency buckets, in seconds: 0.5 ms to 100 s with mantissas 1, 2, 3, 5 in every decade
# (four per decade, neighbours at most 2x apart). A 2 ms loopback phase and a 300 ms WAN
# phase land nine buckets apart, and histogram_quantile's linear interpolation inside a
# bucket is off by less than 2x at worst. Round boundaries keep heatmap rows and
# `le` labels readable. 22 buckets + Inf per phase keeps a node at ~100 bucket series.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005,
    # round(): 3 * 10.0**-3 is 0.0030000000000000005; exported `le` labels should read 0.003.
    *(round(m * 10.0**e, 4) for e in range(-3, 2) for m in (1, 2, 3, 5)),
    100.0,
)
# Transactions per pre-prepare batch: a 1-2-5 series up to the largest batch we expect.
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)

# Message kinds are chosen by our code (the message class), but are not enumerated here so
# that new message types need no change in this module. The cap keeps cardinality bounded
# even if a caller passes something unexpected: further kinds are counted as "other".
MAX_MESSAGE_KINDS = 32
OTHER_KIND = "other"
_MAX_CACHED_KINDS = 256
_KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_LINK_BAD_CHARS = re.compile(r"[^A-Za-z0-9_.:-]")
# Shaper links are bounded by the cluster's members (nodes and configured clients).
MAX_SHAPER_LINKS = 1024


def _quiet_http_error(request: object, client_address: object) -> None:
    exc = sys.exc_info()[1]
    logging.getLogger("dtnbus.metrics").debug("metrics request from %s failed: %r",
                                              client_address, exc)


class MetricsUsageError(LocalError, ValueError):
    """A metric was called with a label value outside its fixed set: a bug in our code."""


def _reject(value: str, allowed: Iterable[str], what: str) -> NoReturn:
    raise MetricsUsageError(f"unknown {what} {value!r}; expected one of {tuple(allowed)}")


class NodeMetrics:
    """The metrics of one replica process, registered in their own registry."""

    def __init__(self, node_id: int, registry: CollectorRegistry | None = None) -> None:
        self.node_id = node_id
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._kinds: set[str] = set()
        self._links: set[str] = set()
        self._labels_lock = threading.Lock()

        self._node_info = Gauge(
            "dtnbus_node_info", "Constant 1; maps the scraped instance to its node id.",
            ["node"], registry=r,
        )
        self._node_info.labels(node=str(node_id)).set(1)
        # process_cpu_seconds_total, process_resident_memory_bytes, ...: consensus on this
        # machine is CPU-bound, so each node's CPU belongs next to its phase times.
        # A caller's registry may already have one (the default registry does).
        with contextlib.suppress(ValueError):
            ProcessCollector(registry=r)

        self._phase = Histogram(
            "dtnbus_phase_seconds",
            "Time a batch spends in each normal-case PBFT phase at this replica.",
            ["phase"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self._messages = Counter(
            "dtnbus_messages_total", "Protocol messages sent (out) or received (in), by kind.",
            ["direction", "kind"], registry=r,
        )
        self._bytes = Counter(
            "dtnbus_message_bytes_total", "Encoded bytes of protocol messages, by direction/kind.",
            ["direction", "kind"], registry=r,
        )
        self._dropped = Counter(
            "dtnbus_dropped_messages_total", "Frames dropped before or by the replica, by reason.",
            ["reason"], registry=r,
        )
        self._peer_drops = Counter(
            "dtnbus_peer_drops_total",
            "Authentic or claimed-sender frames dropped, by sender (replica id, or 'client') "
            "and reason: names the culprit.", ["peer", "reason"], registry=r,
        )
        self._view_changes = Counter(
            "dtnbus_view_changes_total", "Views this replica has moved to.", registry=r,
        )
        self._view = Gauge("dtnbus_view", "Current view number.", registry=r)
        self._checkpoints = Counter(
            "dtnbus_checkpoints_total", "Checkpoints that became stable.", registry=r,
        )
        self._stable_checkpoint = Gauge(
            "dtnbus_stable_checkpoint", "Sequence number of the last stable checkpoint.",
            registry=r,
        )
        self._last_executed = Gauge(
            "dtnbus_last_executed_sequence", "Sequence number of the last executed batch.",
            registry=r,
        )
        self._inflight = Gauge(
            "dtnbus_inflight_sequences",
            "Sequence numbers pre-prepared but not yet executed (within the window).",
            registry=r,
        )
        self._batch_size = Gauge(
            "dtnbus_batch_size", "Transactions in the last batch this replica cut or accepted.",
            registry=r,
        )
        self._batch_tx = Histogram(
            "dtnbus_batch_transactions", "Transactions per batch.",
            buckets=BATCH_BUCKETS, registry=r,
        )
        self._executed_batches = Counter(
            "dtnbus_executed_batches_total", "Batches executed (appended to the ledger).",
            registry=r,
        )
        self._executed_tx = Counter(
            "dtnbus_executed_transactions_total", "Transactions executed; rate() is throughput.",
            registry=r,
        )
        self._pending = Gauge(
            "dtnbus_pending_requests", "Client requests received and not yet executed.",
            registry=r,
        )
        self._distrusted = Gauge(
            "dtnbus_distrusted_clients", "Clients whose MAC tags this node does not trust now "
            "(their tag failed on a request the order needed): it orders only their signed "
            "requests.", registry=r,
        )
        self._shaper_queue = Gauge(
            "dtnbus_shaper_queue_bytes", "Bytes waiting in the outgoing shaper queue per link.",
            ["link"], registry=r,
        )
        # Create every child with a fixed label value now, so that a phase or drop reason
        # that has not happened yet exports 0 instead of being absent (rate() and alerts
        # then see a series from the first scrape).
        # They are also cached: `.labels()` costs several microseconds per call, and the node
        # calls these on every message (see _message_children).
        self._phase_children = {phase: self._phase.labels(phase=phase) for phase in PHASES}
        self._drop_children = {r: self._dropped.labels(reason=r) for r in DROP_REASONS}
        self._message_children: dict[tuple[str, str], tuple[Counter, Counter]] = {}
        # per-message counts are kept as plain integers and handed to prometheus_client
        # by `flush` (the node does every 0.25 s): four locked increments per request were
        # ~5% of a node's CPU under many small requests
        self._tally: dict[tuple[str, str], list[int]] = {}
        self._curve_refused = Counter(
            "dtnbus_curve_refused_total",
            "Connections or frames the CurveZMQ layer refused, by reason (curve = true).",
            ["reason"], registry=r,
        )
        self._curve_children = {c: self._curve_refused.labels(reason=c)
                                for c in CURVE_REFUSAL_REASONS}

    def serve(self, host: str, port: int) -> None:
        """Expose /metrics on host:port from a daemon thread (port 0 picks a free one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        # a scraper that hangs up early or sends garbage is not a fault of this node: one
        # debug line, not a traceback on stderr (the node's log) for every such connection
        server.handle_error = _quiet_http_error  # type: ignore[method-assign]

    def observe_phase(self, phase: str, seconds: float) -> None:
        """Record one batch's time in one phase (call once per batch and phase)."""
        child = self._phase_children.get(phase)
        if child is None:
            _reject(phase, PHASES, "phase")
        child.observe(seconds)

    def message_sent(self, kind: str, nbytes: int) -> None:
        """Count an outgoing message and its encoded size (exported at the next flush)."""
        tally = self._tally.get(("out", kind))
        if tally is None:
            tally = self._tally[("out", kind)] = [0, 0]
        tally[0] += 1
        tally[1] += nbytes

    def message_received(self, kind: str, nbytes: int) -> None:
        """Count an incoming message (after decoding) and its encoded size (exported at the
        next flush)."""
        tally = self._tally.get(("in", kind))
        if tally is None:
            tally = self._tally[("in", kind)] = [0, 0]
        tally[0] += 1
        tally[1] += nbytes

    def flush(self) -> None:
        """Hand the message counts gathered since the last flush to the exported counters."""
        tallies, self._tally = self._tally, {}
        for (direction, kind), (count, nbytes) in tallies.items():
            self._count_message(direction, kind, nbytes, count)

    def dropped(self, reason: str, sender: int | str | None = None) -> None:
        """Count a dropped frame; `reason` is one of DROP_REASONS. With a `sender` (a
        replica id; any client counts as 'client'), also count it against that peer."""
        child = self._drop_children.get(reason)
        if child is None:
            _reject(reason, DROP_REASONS, "drop reason")
        child.inc()
        if sender is not None:
            peer = str(sender) if isinstance(sender, int) else "client"
            self._peer_drops.labels(peer=peer, reason=reason).inc()

    def curve_refused(self, reason: str) -> None:
        """Count a refusal of the CURVE layer; `reason` is one of CURVE_REFUSAL_REASONS.
        Called from the ZAP thread too: prometheus-client counters are thread-safe."""
        child = self._curve_children.get(reason)
        if child is None:
            _reject(reason, CURVE_REFUSAL_REASONS, "CURVE refusal reason")
        child.inc()

    def view_changed(self, view: int) -> None:
        """Record a move to a new view."""
        self._view_changes.inc()
        self._view.set(view)

    def checkpoint_stable(self, seq: int) -> None:
        """Record a checkpoint that became stable at `seq`."""
        self._checkpoints.inc()
        self._stable_checkpoint.set(seq)

    def set_view(self, view: int) -> None:
        """Set the current view without counting a view change (start-up, recovery)."""
        self._view.set(view)

    def set_last_executed(self, seq: int) -> None:
        """Set the sequence number of the last executed batch (the progress signal)."""
        self._last_executed.set(seq)

    def set_inflight(self, count: int) -> None:
        """Set how many sequence numbers are between pre-prepare and execution."""
        self._inflight.set(count)

    def batch_cut(self, size: int) -> None:
        """Record the number of transactions in a batch just cut or accepted."""
        self._batch_size.set(size)
        self._batch_tx.observe(size)

    def executed(self, batches: int, transactions: int) -> None:
        """Count executed batches and transactions (throughput is their rate)."""
        self._executed_batches.inc(batches)
        self._executed_tx.inc(transactions)

    def set_pending_requests(self, count: int) -> None:
        """Set the number of requests waiting; with a flat sequence it means no progress."""
        self._pending.set(count)

    def set_distrusted_clients(self, count: int) -> None:
        self._distrusted.set(count)

    def set_shaper_queue(self, link: str, nbytes: int) -> None:
        """Set the bytes queued in the shaper towards one peer (`link` like "to-3").

        Set every link to 0 at start-up so the series exist before the first queueing.
        """
        # Never raise here: the name may embed a peer or client id from the cluster file.
        # Odd characters are replaced and the number of links is capped instead.
        link = _LINK_BAD_CHARS.sub("_", link)[:64] or "unnamed"
        if link not in self._links:
            with self._labels_lock:
                if len(self._links) >= MAX_SHAPER_LINKS:
                    link = OTHER_KIND
                else:
                    self._links.add(link)
        self._shaper_queue.labels(link=link).set(nbytes)

    def phase_summary(self) -> dict[str, tuple[int, float]]:
        """Phase -> (count, total seconds), read from the exported histograms.

        `dtnbus sync` prints these, so a researcher's numbers and Grafana's are the same.
        """
        return _histogram_summary(self._phase, "phase")

    def _count_message(self, direction: str, kind: str, nbytes: int, count: int = 1) -> None:
        children = self._message_children.get((direction, kind))
        if children is None:
            label = self._bounded_kind(kind)
            children = (
                self._messages.labels(direction=direction, kind=label),
                self._bytes.labels(direction=direction, kind=label),
            )
            if len(self._message_children) < _MAX_CACHED_KINDS:  # raw spellings: bound them
                self._message_children[(direction, kind)] = children
        children[0].inc(count)
        children[1].inc(nbytes)

    def _bounded_kind(self, kind: str) -> str:
        # Accept a class name ("PrePrepare") or a wire tag ("pre-prepare") alike.
        kind = kind.lower().replace("-", "_")
        if not _KIND_RE.fullmatch(kind):
            raise MetricsUsageError(
                f"bad message kind {kind!r}; expected a lower-case name like 'prepare'"
            )
        if kind in self._kinds:
            return kind
        with self._labels_lock:
            if len(self._kinds) >= MAX_MESSAGE_KINDS:
                return OTHER_KIND
            self._kinds.add(kind)
        return kind


class ClientMetrics:
    """The metrics of one client: request latency to f+1 matching replies, and counts."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._latency = Histogram(
            "dtnbus_client_request_seconds",
            "Client request: first send -> f+1 matching replies.",
            ["phase"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self._latency.labels(phase=CLIENT_PHASE)
        self._sent = Counter(
            "dtnbus_client_requests_total", "Requests sent (first transmission only).",
            registry=r,
        )
        self._accepted = Counter(
            "dtnbus_client_requests_accepted_total", "Requests with f+1 matching replies.",
            registry=r,
        )
        self._retransmitted = Counter(
            "dtnbus_client_retransmissions_total", "Requests sent again after a timeout.",
            registry=r,
        )

    def serve(self, host: str, port: int) -> None:
        """Expose /metrics on host:port from a daemon thread (for long-running clients)."""
        start_http_server(port, addr=host, registry=self.registry)

    def request_sent(self) -> None:
        """Count the first transmission of a request."""
        self._sent.inc()

    def request_retransmitted(self) -> None:
        """Count a retransmission (a request sent again after its reply timeout)."""
        self._retransmitted.inc()

    def request_accepted(self, seconds: float) -> None:
        """Count a request with f+1 matching replies, `seconds` after its first send."""
        self._accepted.inc()
        self._latency.labels(phase=CLIENT_PHASE).observe(seconds)

    def phase_summary(self) -> dict[str, tuple[int, float]]:
        """{CLIENT_PHASE: (count, total seconds)}, read from the exported histogram."""
        return _histogram_summary(self._latency, "phase")


# ---- Layer 2: a validator's payout agent (dtnbus/l2/agent.py) ---------------------------------

# Steps of one reward as an agent sees them (its own clock): committed on Layer 1 -> proposal
# on chain -> threshold confirmations -> executed (the trainer is owed).
PAYOUT_PHASES: tuple[str, ...] = (
    "committed_to_proposed", "proposed_to_confirmed", "confirmed_to_executed",
)
PAYOUT_ACTIONS: tuple[str, ...] = ("propose", "confirm", "execute")
# What became of a transaction the agent signed.
PAYOUT_OUTCOMES: tuple[str, ...] = (
    "mined", "reverted", "refused", "nonce_conflict", "abandoned",
)
# Why a reward the agent should act on cannot be paid yet.
PAYOUT_BLOCKERS: tuple[str, ...] = ("wallet_balance", "owner_gas", "rpc", "not_owner", "other")


class PayoutMetrics:
    """The metrics of one payout agent (names `dtnbus_l2_*`), in their own registry."""

    def __init__(self, node_id: int, registry: CollectorRegistry | None = None) -> None:
        self.node_id = node_id
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        info = Gauge("dtnbus_l2_agent_info", "Constant 1; maps the instance to its node id.",
                     ["node"], registry=r)
        info.labels(node=str(node_id)).set(1)
        with contextlib.suppress(ValueError):
            ProcessCollector(registry=r)
        self._phase = Histogram(
            "dtnbus_l2_phase_seconds", "Time a reward spends in each payout step, as this "
            "agent saw it.", ["phase"], buckets=LATENCY_BUCKETS, registry=r)
        self._committed = Counter(
            "dtnbus_l2_rewards_committed_total",
            "Rewards found in this node's ledger (first entry of each id).", registry=r)
        self._paid = Counter(
            "dtnbus_l2_rewards_paid_total", "Rewards whose payment was executed on chain.",
            registry=r)
        self._pending = Gauge(
            "dtnbus_l2_rewards_pending", "Committed rewards not executed on chain yet.",
            registry=r)
        self._blocked = Gauge(
            "dtnbus_l2_rewards_blocked", "Rewards this agent cannot act on now, by reason.",
            ["reason"], registry=r)
        self._duplicates = Counter(
            "dtnbus_l2_duplicate_rewards_total", "Later ledger entries of an already committed "
            "reward id: the same payment (same) or other contents (conflict); never paid.",
            ["kind"], registry=r)
        self._malformed = Counter(
            "dtnbus_l2_malformed_rewards_total", "Reward transactions in the ledger that do not "
            "parse; skipped.", registry=r)
        self._transactions = Counter(
            "dtnbus_l2_transactions_total", "Wallet transactions this agent signed, by action "
            "and outcome.", ["action", "outcome"], registry=r)
        self._gas = Counter(
            "dtnbus_l2_gas_used_total", "Gas of this agent's mined transactions, by action.",
            ["action"], registry=r)
        self._rpc_errors = Counter(
            "dtnbus_l2_rpc_errors_total", "Chain RPC calls that failed: no answer "
            "(unavailable) or an error answer (error).", ["kind"], registry=r)
        self._retries = Counter(
            "dtnbus_l2_retries_total", "Steps put off with backoff, by what blocked them.",
            ["reason"], registry=r)
        self._backoff = Gauge(
            "dtnbus_l2_backoff_seconds", "The longest backoff now in force.", registry=r)
        self._unbacked = Gauge(
            "dtnbus_l2_unbacked_proposals", "Proposals on chain that no entry of this node's "
            "ledger backs (never confirmed by this agent).", registry=r)
        self._unbacked_confirmations = Counter(
            "dtnbus_l2_unbacked_confirmations_total", "Confirmations other owners gave to "
            "unbacked proposals (a faulty or Byzantine validator).", registry=r)
        self._wallet_balance = Gauge(
            "dtnbus_l2_wallet_balance_wei", "The wallet's balance.", registry=r)
        self._wallet_owed = Gauge(
            "dtnbus_l2_wallet_owed_wei", "Credits executed and not withdrawn (totalOwed).",
            registry=r)
        self._owner_balance = Gauge(
            "dtnbus_l2_owner_balance_wei", "This validator's owner account (gas money).",
            registry=r)
        self._ledger_seq = Gauge(
            "dtnbus_l2_ledger_sequence", "Last ledger block this agent has read.", registry=r)
        self._chain_block = Gauge(
            "dtnbus_l2_chain_block", "Last chain block this agent has folded in.", registry=r)
        self._phase_children = {p: self._phase.labels(phase=p) for p in PAYOUT_PHASES}
        self._blocked_children = {b: self._blocked.labels(reason=b) for b in PAYOUT_BLOCKERS}
        for b in PAYOUT_BLOCKERS:
            self._retries.labels(reason=b)
        for kind in ("same", "conflict"):
            self._duplicates.labels(kind=kind)
        for kind in ("unavailable", "error"):
            self._rpc_errors.labels(kind=kind)
        for action in PAYOUT_ACTIONS:
            self._gas.labels(action=action)
            for outcome in PAYOUT_OUTCOMES:
                self._transactions.labels(action=action, outcome=outcome)

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)

    def observe_phase(self, phase: str, seconds: float) -> None:
        child = self._phase_children.get(phase)
        if child is None:
            _reject(phase, PAYOUT_PHASES, "payout phase")
        child.observe(max(0.0, seconds))

    def reward_committed(self) -> None:
        self._committed.inc()

    def reward_paid(self) -> None:
        self._paid.inc()

    def duplicate(self, conflict: bool) -> None:
        self._duplicates.labels(kind="conflict" if conflict else "same").inc()

    def malformed(self) -> None:
        self._malformed.inc()

    def transaction(self, action: str, outcome: str, gas_used: int = 0) -> None:
        if action not in PAYOUT_ACTIONS:
            _reject(action, PAYOUT_ACTIONS, "payout action")
        if outcome not in PAYOUT_OUTCOMES:
            _reject(outcome, PAYOUT_OUTCOMES, "transaction outcome")
        self._transactions.labels(action=action, outcome=outcome).inc()
        if gas_used:
            self._gas.labels(action=action).inc(gas_used)

    def rpc_error(self, unavailable: bool) -> None:
        self._rpc_errors.labels(kind="unavailable" if unavailable else "error").inc()

    def retry(self, reason: str) -> None:
        if reason not in PAYOUT_BLOCKERS:
            _reject(reason, PAYOUT_BLOCKERS, "blocker")
        self._retries.labels(reason=reason).inc()

    def set_blocked(self, counts: dict[str, int]) -> None:
        """Rewards blocked now, per reason (reasons not given are 0)."""
        for reason, child in self._blocked_children.items():
            child.set(counts.get(reason, 0))

    def set_backoff(self, seconds: float) -> None:
        self._backoff.set(seconds)

    def set_pending(self, count: int) -> None:
        self._pending.set(count)

    def set_unbacked(self, count: int) -> None:
        self._unbacked.set(count)

    def unbacked_confirmation(self) -> None:
        self._unbacked_confirmations.inc()

    def set_wallet(self, balance: int, owed: int) -> None:
        self._wallet_balance.set(balance)
        self._wallet_owed.set(owed)

    def set_owner_balance(self, wei: int) -> None:
        self._owner_balance.set(wei)

    def set_progress(self, ledger_seq: int, chain_block: int) -> None:
        self._ledger_seq.set(ledger_seq)
        self._chain_block.set(chain_block)

    def phase_summary(self) -> dict[str, tuple[int, float]]:
        return _histogram_summary(self._phase, "phase")


def _histogram_summary(histogram: Histogram, label: str) -> dict[str, tuple[int, float]]:
    counts: dict[str, int] = {}
    sums: dict[str, float] = {}
    for family in histogram.collect():
        for sample in family.samples:
            key = sample.labels.get(label, "")
            if sample.name.endswith("_count"):
                counts[key] = int(sample.value)
            elif sample.name.endswith("_sum"):
                sums[key] = sample.value
    return {key: (counts[key], sums.get(key, 0.0)) for key in counts}


def registered_metric_names(registry: CollectorRegistry) -> set[str]:
    """Every sample name a registry exports (`_bucket`, `_count`, `_sum`, `_total` included).

    The monitoring tests check each PromQL expression in dtnbus/monitoring/ against this set.
    """
    # Derived from the family type, not from samples: a labelled counter exports no sample
    # until its first label value is used, but its name is still part of the interface.
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_count", "_sum"),
        "gauge": ("",),
    }
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names
