"""`dtnbus chaos`: crash faults against real node processes, and what the client saw.

A cluster of real node processes runs while a client stream (`stream.RequestStream`)
keeps requests flowing. At random moments (seeded) one node is killed with SIGKILL, the
primary of the moment with probability `primary_share`, any node otherwise; after a
random time down it is restarted over its ledger and must catch up (state transfer, the
current view). The next kill comes only once the cluster is whole again (every node in
one view, none more than a few sequences behind), so at most one node is ever down or
unable to vote, and the cluster must keep committing throughout. `at_once` (`--at-once
K`, K <= f) kills K nodes together instead, the primary among them as often: the fault
model's worst case at n = 7 and beyond, 2f+1 live nodes and no slack.

At the end the stream drains, the nodes are stopped, and the run checks what a client
may rely on:

- every request the client saw acknowledged (f+1 matching committed replies) is in
  every ledger, executed exactly once, at the sequence and block hash it was told;
- no request executed twice anywhere; the ledgers are identical and each passes
  `ledger verify` (hash chain, commit certificates, request signatures);
- no stall: while requests were outstanding, the longest time without an acceptance
  stays within `stall_bound` (default from the view-change timeout, see `default_bound`);
- every restarted node caught up within `catchup_timeout`; no node logged a traceback.

With `load_clients` (`--load N`) a closed loop of N more clients keeps the cluster at
saturation beside the stream (`bench.BackgroundLoad`, one-transaction requests, 32
outstanding each): the kills then land among thousands of requests a second, batches in
flight and state transfers racing a moving head. Every load request a client saw
executed is checked like the stream's: in every ledger, exactly once.

It reports view changes, catch-up times and client latency (p50/p99) inside the fault
windows (kill to caught up) and outside them. Timing (when a kill lands in the protocol)
is not reproducible from the seed; the schedule (victims, gaps, down times) is.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import random
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

from dtnbus.bench import BackgroundLoad
from dtnbus.client import Client
from dtnbus.cluster import cluster_up, kill_node, start_nodes, stop_nodes
from dtnbus.config import ClusterConfig
from dtnbus.ledger_check import check_cluster
from dtnbus.messages import Outcome, Status, max_faulty
from dtnbus.storage import Ledger
from dtnbus.stream import Ack, RequestStream, percentile

ENTERED_VIEW = re.compile(r"entered view (\d+)")
LEVEL_SLACK = 8  # sequences a node may trail the most advanced one and count as level


@dataclass(frozen=True)
class ChaosPlan:
    """What one chaos run does. Protocol settings go into the cluster file."""

    nodes: int = 4
    kills: int = 100
    seed: int = 0
    view_change_timeout: float = 1.0
    checkpoint_interval: int = 16  # small: restarted nodes fall behind the window and
    window: int = 64  # must take state, not only replay votes
    primary_share: float = 0.4  # of kills aimed at the primary of the moment
    gap: tuple[float, float] = (0.2, 2.0)  # seconds of whole-cluster running before a kill
    down: tuple[float, float] = (0.1, 2.0)  # seconds a killed node stays down
    catchup_timeout: float = 60.0
    client_window: int = 8
    request_txs: int = 1
    tx_bytes: int = 100
    stall_bound: float | None = None  # None: default_bound(view_change_timeout)
    load_clients: int = 0  # a closed loop at saturation beside the stream (`--load`)
    at_once: int = 1  # nodes killed together each cycle, at most f (`--at-once`)

    def protocol(self) -> dict[str, Any]:
        return {"view_change_timeout": self.view_change_timeout,
                "checkpoint_interval": self.checkpoint_interval, "window": self.window}

    @property
    def bound(self) -> float:
        return self.stall_bound if self.stall_bound is not None else \
            default_bound(self.view_change_timeout)


def default_bound(view_change_timeout: float) -> float:
    """The longest a correct cluster with one node down may go without committing: the
    primary's crash is suspected one timeout T after the oldest waiting request; if the
    next view does not start either, its timer is 2T; plus 2 s for the VIEW-CHANGE /
    NEW-VIEW exchange, retransmissions and a loaded 2-core machine."""
    return 3 * view_change_timeout + 2.0


@dataclass
class KillRecord:
    index: int
    node: int
    was_primary: bool
    view_before: int
    killed_at: float  # seconds from the start of the stream
    down_seconds: float
    restarted_at: float
    catchup_seconds: float | None  # restart -> the cluster whole again (one view, level)
    caught_up_at: float | None
    target_seq: int  # the others' height when it was restarted
    with_nodes: tuple[int, ...] = ()  # `at_once` > 1: the others killed with `node`
    accepted_in_window: int = 0  # acknowledgements from kill to caught up
    longest_gap_in_window: float = 0.0


@dataclass
class ChaosResult:
    nodes: int
    kills: int
    seed: int
    kills_of_primary: int
    acknowledged: int  # requests the client saw accepted
    executed: int  # ... with outcome executed
    not_executed: dict[str, int]  # accepted with another outcome (stale, conflict, ...)
    unacknowledged: int  # sent, never accepted (after draining)
    view_changes: int  # distinct views entered anywhere
    final_views: dict[int, int]
    heights: dict[int, int]
    catchup_seconds: list[float]
    catchup_p50: float | None
    catchup_max: float | None
    latency_p50: float | None
    latency_p99: float | None
    latency_p99_faults: float | None  # requests in flight while a node was down or behind
    latency_p99_calm: float | None
    longest_stall: float
    stall_bound: float
    throughput_rps: float  # acknowledged requests per second of stream
    stream_seconds: float
    wall_seconds: float
    missing: int  # acknowledged but absent (or not executed) in some ledger
    duplicated: int  # executed more than once in some ledger
    wrong_place: int  # in the ledger, but not at the acknowledged seq / block hash
    ledger_findings: list[str]
    tracebacks: list[str]
    violations: list[str] = field(default_factory=list)
    directory: str = ""
    records: list[KillRecord] = field(default_factory=list)
    # (node, its view, everyone else's view): one node stuck alone in a later view when the
    # run stopped (finding chaos-1, docs/faults.md), None otherwise
    lone_view: tuple[int, int, int] | None = None
    load_clients: int = 0
    load_acknowledged: int = 0  # load requests seen executed (each checked in the ledgers)
    at_once: int = 1  # nodes killed together each cycle

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("records")
        out["ok"] = self.ok
        return out


class ChaosRun:
    """One run: a cluster in `directory`, the stream, the kill loop, the checks."""

    def __init__(self, plan: ChaosPlan, directory: Path,
                 log: Callable[[str], None] = lambda line: None) -> None:
        if plan.nodes < 4:
            raise ValueError("chaos needs at least 4 nodes (n >= 3f+1 with f >= 1)")
        if (why := at_once_error(plan.nodes, plan.at_once)) is not None:
            raise ValueError(why)
        self.plan = plan
        self.directory = directory
        self.log = log
        self.rng = random.Random(plan.seed)
        self.records: list[KillRecord] = []
        self.violations: list[str] = []
        self.config: ClusterConfig | None = None
        self.stream: RequestStream | None = None
        self.t0 = 0.0
        self.last_seen: dict[int, tuple[int, int]] = {}  # node -> (view, seq), last poll
        self.lone_view: tuple[int, int, int] | None = None
        self.load: BackgroundLoad | None = None

    # ------------------------------------------------------------ the run

    def run(self) -> ChaosResult:
        wall = time.monotonic()
        plan = self.plan
        self.config = cluster_up(self.directory, plan.nodes, protocol=plan.protocol(),
                                 fresh=True, extra_clients=plan.load_clients)
        try:
            with Client(self.config) as probe:
                self.stream = RequestStream(self.config, window=plan.client_window,
                                            request_txs=plan.request_txs,
                                            tx_bytes=plan.tx_bytes, tag=plan.seed).start()
                if plan.load_clients:
                    self.load = BackgroundLoad(self.config, plan.load_clients).start()
                self.t0 = time.monotonic()
                for index in range(plan.kills):
                    if not self._cycle(index, probe):
                        break
                stream_end = time.monotonic()
                self._load_executed()  # the load stops before the stream drains
                left = self.stream.drain(max(30.0, 3 * plan.bound))
                if left:
                    self.violations.append(f"{left} requests still not acknowledged 30 s "
                                           "after the last kill")
                self.stream.stop()
                self._wait_level(probe)
                final = probe.status(2.0)
        finally:
            self._load_executed()
            if self.stream is not None:
                self.stream.stop()
            stop_nodes(self.directory)
        if self.stream.error is not None:
            self.violations.append(f"client stream failed: {self.stream.error!r}")
        if self.load is not None and self.load.error is not None:
            self.violations.append(f"the load generator failed: {self.load.error!r}")
        return self._result(final, stream_end - self.t0, time.monotonic() - wall)

    def _load_executed(self) -> AbstractSet[tuple[str, int, int]]:
        """Stop the load (once); the requests its clients saw executed."""
        return self.load.stop() if self.load is not None else frozenset()

    def _cycle(self, index: int, probe: Client) -> bool:
        """Kill one node at a random moment, restart it, wait until it has caught up.
        False: the run cannot go on (a node that never catches up)."""
        plan = self.plan
        assert self.config is not None and self.stream is not None
        time.sleep(self.rng.uniform(*plan.gap))  # the random moment (the schedule itself)
        statuses = probe.status(1.0)
        views = Counter(s.view for s in statuses.values())
        view = views.most_common(1)[0][0] if views else 0
        primary = view % plan.nodes
        aim_primary = self.rng.random() < plan.primary_share
        victim = primary if aim_primary else self.rng.randrange(plan.nodes)
        # with at_once = 1 this draws nothing: a seed's schedule is what it always was
        victims = [victim, *self.rng.sample([i for i in range(plan.nodes) if i != victim],
                                            plan.at_once - 1)]
        down = self.rng.uniform(*plan.down)
        killed = time.monotonic()
        for node in victims:
            kill_node(self.directory, node)
        time.sleep(down)  # the schedule: how long the nodes stay dead
        others = probe.status(1.0)
        target = max((s.last_executed for r, s in others.items() if r not in victims),
                     default=0)
        restarted = time.monotonic()
        start_nodes(self.config, self.directory, ids=victims)
        caught = self._wait_caught_up(probe, victims, target,
                                      restarted + plan.catchup_timeout)
        record = KillRecord(index, victim, primary in victims, view, killed - self.t0, down,
                            restarted - self.t0,
                            None if caught is None else caught - restarted,
                            None if caught is None else caught - self.t0, target,
                            tuple(victims[1:]))
        self.records.append(record)
        named = " and ".join(map(str, victims))
        role = "" if not record.was_primary else \
            " (primary)" if len(victims) == 1 else " (the primary among them)"
        self.log(f"kill {index + 1}/{plan.kills}: node{'s' if len(victims) > 1 else ''} "
                 f"{named}{role} in view {view}, down "
                 f"{down:.2f} s, caught up "
                 + (f"{record.catchup_seconds:.2f} s" if caught is not None else "NEVER")
                 + f" after restart; {self.stream.accepted_count()} acknowledged")
        if caught is None:
            self.lone_view = _lone_view(self.last_seen)
            seen = ", ".join(f"node {r}: view {v} seq {e}"
                             for r, (v, e) in sorted(self.last_seen.items()))
            self.violations.append(f"kill {index + 1}: the cluster was not whole again "
                                   f"{plan.catchup_timeout:.0f} s after node {named} "
                                   f"restarted (to reach seq {target}): {seen}")
            return False
        if not self.stream.alive():
            self.violations.append("the client stream stopped")
            return False
        return True

    def _wait_caught_up(self, probe: Client, nodes: list[int], target: int,
                         deadline: float) -> float | None:
        """When the cluster is whole again: every node answers and is ready, all in one
        view, each of `nodes` at or beyond `target`, and no node more than `LEVEL_SLACK`
        sequences behind the most advanced (batches in flight). Only then may the next kill
        come: a node still catching up is not down, but it cannot vote yet."""
        self.last_seen = {}
        while time.monotonic() < deadline:
            st = probe.status(0.5)
            self.last_seen = {r: (s.view, s.last_executed) for r, s in st.items()}
            if len(st) == self.plan.nodes and all(st[r].last_executed >= target for r in nodes) \
                    and all(s.ready for s in st.values()) \
                    and len({s.view for s in st.values()}) == 1 \
                    and max(s.last_executed for s in st.values()) - \
                    min(s.last_executed for s in st.values()) <= LEVEL_SLACK:
                return time.monotonic()
            time.sleep(0.05)  # polling another process's state: nothing to block on
        return None

    def _wait_level(self, probe: Client, timeout: float = 30.0) -> dict[int, Status]:
        """Every node answers, at the same height (the stream has drained)."""
        deadline = time.monotonic() + timeout
        st: dict[int, Status] = {}
        while time.monotonic() < deadline:
            st = probe.status(0.5)
            if len(st) == self.plan.nodes and len({s.last_executed for s in st.values()}) == 1:
                return st
            time.sleep(0.05)  # polling another process's state
        heights = {r: s.last_executed for r, s in st.items()}
        self.violations.append(f"nodes not level {timeout:.0f} s after the stream drained: "
                               f"heights {heights}")
        return st

    # ------------------------------------------------------------ checks

    def _result(self, final: dict[int, Status], stream_seconds: float,
                wall_seconds: float) -> ChaosResult:
        plan = self.plan
        assert self.config is not None and self.stream is not None
        acks = self.stream.accepted()
        sent = list(self.stream.acks.values())
        windows = [(r.killed_at + self.t0, (r.caught_up_at or stream_seconds) + self.t0)
                   for r in self.records]
        stalls = self._stalls(windows, stream_seconds)
        missing, duplicated, wrong = self._check_ledgers(acks)
        reports, findings = check_cluster(self.config)
        tracebacks = self._tracebacks()
        views = self._views_entered()
        in_faults = [a.latency for a in acks if _overlaps(a, windows)]
        calm = [a.latency for a in acks if not _overlaps(a, windows)]
        latencies = [a.latency for a in acks]
        catchups = [r.catchup_seconds for r in self.records if r.catchup_seconds is not None]
        not_executed = Counter(Outcome.NAMES.get(a.key[3], str(a.key[3]))
                               for a in acks if a.key is not None and not a.executed)
        bound = plan.bound
        if missing:
            self.violations.append(f"{missing} acknowledged requests missing from a ledger")
        if duplicated:
            self.violations.append(f"{duplicated} requests executed more than once")
        if wrong:
            self.violations.append(f"{wrong} acknowledged requests at another seq/hash than "
                                   "the client was told")
        if findings:
            self.violations.append(f"ledger verify: {findings[0].line()} "
                                   f"({len(findings)} findings)")
        if len({r.head for r in reports}) != 1 or len({r.height for r in reports}) != 1:
            self.violations.append("ledgers differ in height or head: "
                                   f"{ {r.node: r.height for r in reports} }")
        if self.stream.contradictions:
            self.violations.append(f"{self.stream.contradictions} committed replies contradict "
                                   "an answer the client had accepted")
        if not_executed:
            self.violations.append(f"acknowledged without executing: {dict(not_executed)}")
        if tracebacks:
            self.violations.append(f"tracebacks logged by {tracebacks}")
        if stalls > bound:
            self.violations.append(f"stall of {stalls:.2f} s > bound {bound:.2f} s")
        return ChaosResult(
            nodes=plan.nodes, kills=len(self.records), seed=plan.seed,
            kills_of_primary=sum(r.was_primary for r in self.records),
            acknowledged=len(acks), executed=sum(a.executed for a in acks),
            not_executed=dict(not_executed),
            unacknowledged=sum(1 for a in sent if a.accepted is None),
            view_changes=len(views), final_views={r: s.view for r, s in final.items()},
            heights={r.node: r.height for r in reports},
            catchup_seconds=catchups, catchup_p50=percentile(catchups, 50),
            catchup_max=max(catchups, default=None),
            latency_p50=percentile(latencies, 50), latency_p99=percentile(latencies, 99),
            latency_p99_faults=percentile(in_faults, 99), latency_p99_calm=percentile(calm, 99),
            longest_stall=stalls, stall_bound=bound,
            throughput_rps=len(acks) / stream_seconds if stream_seconds > 0 else 0.0,
            stream_seconds=stream_seconds, wall_seconds=wall_seconds,
            missing=missing, duplicated=duplicated, wrong_place=wrong,
            ledger_findings=[f.line() for f in findings[:20]], tracebacks=tracebacks,
            violations=list(self.violations), directory=str(self.directory),
            records=self.records, lone_view=self.lone_view, load_clients=plan.load_clients,
            load_acknowledged=len(self._load_executed()), at_once=plan.at_once)

    def _stalls(self, windows: list[tuple[float, float]], stream_seconds: float) -> float:
        """The longest time without an acknowledgement while the stream had requests
        outstanding (it always has: a closed loop refills at once). Also fills each kill
        record's acknowledgements and longest gap inside its fault window."""
        assert self.stream is not None
        times = [self.t0, *self.stream.accept_times, self.t0 + stream_seconds]
        times = [t for t in times if t <= self.t0 + stream_seconds]
        longest = max((b - a for a, b in itertools.pairwise(times)), default=0.0)
        for record, (start, end) in zip(self.records, windows, strict=True):
            inside = [t for t in times if start <= t <= end]
            record.accepted_in_window = len(inside)
            edges = [start, *inside, end]
            record.longest_gap_in_window = max(b - a for a, b in
                                               itertools.pairwise(edges))
        return longest

    def _check_ledgers(self, acks: list[Ack]) -> tuple[int, int, int]:
        assert self.config is not None and self.stream is not None
        return check_acknowledged(self.config, self.stream, also=self._load_executed())

    def _tracebacks(self) -> list[str]:
        found = []
        for log in sorted((self.directory / "logs").glob("node-*.log")):
            if "Traceback" in log.read_text(errors="replace"):
                found.append(log.name)
        return found

    def _views_entered(self) -> set[int]:
        views: set[int] = set()
        for log in (self.directory / "logs").glob("node-*.log"):
            views.update(int(v) for v in ENTERED_VIEW.findall(log.read_text(errors="replace")))
        return views


def _lone_view(seen: dict[int, tuple[int, int]]) -> tuple[int, int, int] | None:
    """(node, view, others' view) if exactly one node is in a view above all the others,
    which share one view."""
    views = {node: view for node, (view, _seq) in seen.items()}
    top = max(views.values(), default=0)
    alone = [n for n, v in views.items() if v == top]
    rest = {v for n, v in views.items() if v != top}
    if len(alone) == 1 and len(rest) == 1 and len(views) > 2:
        return alone[0], top, rest.pop()
    return None


def at_once_error(nodes: int, at_once: int) -> str | None:
    """Why `at_once` nodes killed together cannot be a chaos cycle at n = `nodes` (None:
    they can): more than f down and the cluster cannot commit, so no stall bound holds."""
    if 1 <= at_once <= max_faulty(nodes):
        return None
    return (f"--at-once must be between 1 and f = {max_faulty(nodes)} at n = {nodes}: with "
            "more nodes down the cluster cannot commit, and the stall bound means nothing")


def check_acknowledged(config: ClusterConfig, stream: RequestStream,
                       nodes: tuple[int, ...] | None = None,
                       also: AbstractSet[tuple[str, int, int]] = frozenset()
                       ) -> tuple[int, int, int]:
    """Every request `stream` saw acknowledged as executed, against the ledger of each node
    in `nodes` (default all): (missing, executed more than once anywhere, executed elsewhere
    than the sequence and block hash the client was told), summed over the ledgers. (A
    request answered with another outcome, e.g. stale, was never executed: not checked.)
    `also`: more identities (client, session, number) seen executed (a load generator's),
    counted as missing from each ledger that lacks them."""
    acks = [a for a in stream.accepted() if a.executed]
    missing = duplicated = wrong = 0
    for spec in config.nodes:
        if nodes is not None and spec.id not in nodes:
            continue
        executed: dict[int, list[tuple[int, bytes]]] = {}
        everything: Counter[tuple[str, int, int]] = Counter()
        ledger = Ledger(spec.ledger, synchronous="NORMAL")
        try:
            for block in ledger.blocks():
                for req in ledger.requests(block.seq):
                    if req.outcome != Outcome.EXECUTED:
                        continue
                    everything[(req.client, req.session, req.number)] += 1
                    if req.session == stream.session:
                        executed.setdefault(req.number, []).append((block.seq, block.hash))
        finally:
            ledger.close()
        duplicated += sum(1 for c in everything.values() if c > 1)
        missing += sum(1 for identity in also if identity not in everything)
        for ack in acks:
            assert ack.key is not None
            places = executed.get(ack.number, [])
            if not places:
                missing += 1
            elif places[0] != (ack.key[0], ack.key[2]):
                wrong += 1
    return missing, duplicated, wrong


def _overlaps(ack: Ack, windows: list[tuple[float, float]]) -> bool:
    assert ack.accepted is not None
    return any(ack.sent <= end and ack.accepted >= start for start, end in windows)


def run_chaos(plan: ChaosPlan, directory: Path | None = None,
              log: Callable[[str], None] = lambda line: None,
              keep: bool = False) -> ChaosResult:
    """Run one chaos plan in `directory` (default: a temporary one, removed afterwards
    unless the run found a problem or `keep`)."""
    own = directory is None
    where = Path(tempfile.mkdtemp(prefix="dtnbus-chaos-")) if own else directory
    assert where is not None
    result = ChaosRun(plan, where, log).run()
    if own and result.ok and not keep:
        shutil.rmtree(where, ignore_errors=True)
    return result


# ------------------------------------------------------------ files

SUMMARY_COLUMNS = ("seed", "nodes", "at_once", "kills", "kills_of_primary", "acknowledged",
                   "load_clients", "load_acknowledged",
                   "view_changes", "catchup_p50", "catchup_max", "latency_p50",
                   "latency_p99", "latency_p99_faults", "latency_p99_calm", "longest_stall",
                   "stall_bound", "throughput_rps", "missing", "duplicated", "ok")


def summary_row(result: ChaosResult) -> dict[str, Any]:
    data = result.to_json()
    return {c: data[c] for c in SUMMARY_COLUMNS}


def write_results(results: list[ChaosResult], out: Path) -> list[Path]:
    """results/chaos.csv (one row per seed), chaos-kills.csv (one row per kill) and
    chaos.png (latency over time with the fault windows, catch-up times)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    summary = out / "chaos.csv"
    with summary.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(SUMMARY_COLUMNS))
        writer.writeheader()
        writer.writerows(summary_row(r) for r in results)
    paths.append(summary)
    kills = out / "chaos-kills.csv"
    with kills.open("w", newline="") as fh:
        fields = ["seed", *KillRecord.__dataclass_fields__]
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in results:
            for rec in r.records:
                writer.writerow({"seed": r.seed, **asdict(rec)})
    paths.append(kills)
    with contextlib.suppress(ImportError):
        paths.append(_chart(results, out / "chaos.png"))
    return paths


def _chart(results: list[ChaosResult], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2),
                                      gridspec_kw={"width_ratios": [2.2, 1]})
    for r in results:
        for rec in r.records:
            end = rec.caught_up_at if rec.caught_up_at is not None else rec.restarted_at
            left.axvspan(rec.killed_at, end, color="tab:red" if rec.was_primary else "tab:orange",
                         alpha=0.12, lw=0)
        break  # fault windows of the first run only: several runs do not share a clock
    first = results[0] if results else None
    if first is not None and first.records:
        left.set_title(f"seed {first.seed}: longest gap in each fault window "
                       "(red: primary killed)")
        xs = [rec.killed_at for rec in first.records]
        ys = [rec.longest_gap_in_window for rec in first.records]
        left.plot(xs, ys, "o", ms=3, color="tab:red")
        left.axhline(first.stall_bound, color="grey", ls="--", lw=1, label="stall bound")
        left.set_xlabel("seconds into the run")
        left.set_ylabel("seconds without an acknowledgement")
        left.set_ylim(bottom=0)
        left.legend(loc="upper right")
    catchups = [c for r in results for c in r.catchup_seconds]
    if catchups:
        right.hist(catchups, bins=min(30, max(5, len(catchups) // 4)), color="tab:blue")
    right.set_title("catch-up after restart")
    right.set_xlabel("seconds (restart -> level with the others)")
    right.set_ylabel("restarts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def print_result(result: ChaosResult, echo: Callable[[str], None]) -> None:
    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value * 1000:.0f} ms"

    def s(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f} s"

    f = max_faulty(result.nodes)
    together = f" of {result.at_once} nodes at once" if result.at_once > 1 else ""
    echo(f"chaos seed {result.seed}: {result.kills} kill -9/restart cycles{together} on "
         f"{result.nodes} nodes (f={f}), {result.kills_of_primary} with the primary")
    echo(f"  acknowledged {result.acknowledged} requests ({result.throughput_rps:.0f}/s over "
         f"{result.stream_seconds:.0f} s); unacknowledged after draining: "
         f"{result.unacknowledged}")
    if result.load_clients:
        echo(f"  beside it, {result.load_clients} load clients at saturation: "
             f"{result.load_acknowledged} requests seen executed "
             f"({result.load_acknowledged / max(result.stream_seconds, 1e-9):.0f}/s)")
    checked = result.acknowledged + result.load_acknowledged
    echo(f"  in every ledger exactly once: {checked - result.missing}/"
         f"{checked}; executed twice: {result.duplicated}; ledgers "
         + ("identical" if not result.ledger_findings else "DIFFER") + f" at heights "
         f"{sorted(set(result.heights.values()))}")
    echo(f"  views entered: {result.view_changes}; final views {result.final_views}")
    echo(f"  catch-up after restart: p50 {s(result.catchup_p50)}, max {s(result.catchup_max)}")
    echo(f"  client latency: p50 {ms(result.latency_p50)}, p99 {ms(result.latency_p99)}; "
         f"p99 during faults {ms(result.latency_p99_faults)}, "
         f"calm {ms(result.latency_p99_calm)}")
    echo(f"  longest stall {s(result.longest_stall)} (bound {s(result.stall_bound)})")
    if result.violations:
        for v in result.violations:
            echo(f"  VIOLATION: {v}")
        echo(f"  cluster directory kept: {result.directory}")
    else:
        echo("  every check held")


def json_line(results: list[ChaosResult]) -> str:
    payload: Any = results[0].to_json() if len(results) == 1 else [r.to_json() for r in results]
    return json.dumps(payload, separators=(",", ":"))


# ------------------------------------------------------------ command line

@click.command("chaos")
@click.option("--nodes", type=click.IntRange(min=4), default=4, show_default=True)
@click.option("--kills", type=click.IntRange(min=1), default=100, show_default=True,
              help="kill -9/restart cycles per seed.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="First seed: victims, moments and down times.")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run this many seeds (seed, seed+1, ...), each on a fresh cluster.")
@click.option("--view-change-timeout", type=click.FloatRange(min=0.1), default=1.0,
              show_default=True, help="Seconds a request may wait before the primary is "
                                      "suspected (the cluster's setting for this run).")
@click.option("--checkpoint-interval", type=click.IntRange(min=1), default=16,
              show_default=True, help="Small, so restarted nodes must take state.")
@click.option("--primary-share", type=click.FloatRange(0, 1), default=0.4, show_default=True,
              help="Share of kills aimed at the primary of the moment.")
@click.option("--max-down", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="A killed node stays down between 0.1 s and this long.")
@click.option("--max-gap", type=click.FloatRange(min=0.2), default=2.0, show_default=True,
              help="Seconds of whole-cluster running before a kill: between 0.2 and this.")
@click.option("--stall-bound", type=click.FloatRange(min=0.1), default=None,
              help="Longest allowed time without an acknowledgement "
                   "(default 3 x view-change timeout + 2 s).")
@click.option("--client-window", type=click.IntRange(min=1), default=8, show_default=True,
              help="Requests the client keeps outstanding.")
@click.option("--load", "load_clients", type=click.IntRange(min=0), default=0,
              show_default=True,
              help="Clients of a closed loop at saturation beside the stream (32 one-"
                   "transaction requests outstanding each); each request they see "
                   "executed is checked in the ledgers too. 0: none.")
@click.option("--at-once", type=click.IntRange(min=1), default=1, show_default=True,
              help="Nodes killed together each cycle (at most f): at n = 7, 2 leaves "
                   "exactly a quorum alive.")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=None,
              help="Cluster directory (default: a temporary one, kept if a check fails).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("results"),
              show_default=True, help="Where chaos.csv, chaos-kills.csv and chaos.png go.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on the last line.")
def chaos_command(nodes: int, kills: int, seed: int, seeds: int, view_change_timeout: float,
                  checkpoint_interval: int, primary_share: float, max_down: float,
                  max_gap: float, stall_bound: float | None, client_window: int,
                  load_clients: int, at_once: int, directory: Path | None, out: Path,
                  as_json: bool) -> None:
    """Kill -9 and restart random nodes (the primary included) under a client stream;
    check that every acknowledged request is in every ledger exactly once.

    Exit status 1 if any check fails (the cluster directory is then kept)."""
    from dtnbus.errors import LocalError, ProblemFound

    if directory is not None and seeds > 1:
        raise LocalError("--dir holds one cluster: use it with --seeds 1")
    if (why := at_once_error(nodes, at_once)) is not None:
        raise LocalError(why)
    results = []
    for s in range(seed, seed + seeds):
        plan = ChaosPlan(nodes=nodes, kills=kills, seed=s,
                         view_change_timeout=view_change_timeout,
                         checkpoint_interval=checkpoint_interval,
                         window=max(64, 4 * checkpoint_interval),
                         primary_share=primary_share, gap=(0.2, max_gap),
                         down=(0.1, max(0.1, max_down)), client_window=client_window,
                         stall_bound=stall_bound, load_clients=load_clients,
                         at_once=at_once)
        result = run_chaos(plan, directory, log=lambda line: click.echo(line, err=True))
        print_result(result, click.echo)
        results.append(result)
    for path in write_results(results, out):
        click.echo(f"wrote {path}")
    if as_json:
        click.echo(json_line(results))
    failed = [r.seed for r in results if not r.ok]
    if failed:
        raise ProblemFound(f"chaos checks failed for seed(s) {failed}; see the VIOLATION "
                           "lines above")
