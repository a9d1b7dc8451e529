"""Many seeds of one scenario, what they add up to, and what to do with a failing one.

`run_seeds` runs a range of seeds (in worker processes with `jobs` > 1) and sums them
up. A failing seed is then shrunk (`shrink`): the network faults, crashes, clients and
requests are left out one at a time, each kept out if the same kind of violation still
happens, and the smallest failing run is replayed with tracing on, so the report is the
replay command and the minimal trace of the smallest run that fails.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from dtnbus.messages import max_faulty
from dtnbus.simulation.auth import make_members
from dtnbus.simulation.engine import RunResult, SimOptions, Simulation, Violation
from dtnbus.simulation.trace import minimal_trace

SHRINK_RUNS = 16  # at most this many extra runs to shrink one failing seed
MODES = ("silent", "slow:5", "equivocate", "censor", "forge", "replay", "garbage",
         "proof-bomb", "lying-state", "view-storm", "impersonate")


def standard(n: int, mode: str, authenticator: str = "mac") -> SimOptions:
    """The per-mode scenario of `make test` and of the 10,000-seed benchmark: f replicas
    in `mode` (placed per seed), on a network that loses 5 % and duplicates 2 % of
    messages, reorders all of them, splits at random once, and crashes and restarts one
    correct replica, for 2 virtual seconds while 2 clients submit 2 requests each; then
    the network heals and everything must be decided within 60 virtual seconds."""
    from dtnbus.byzantine import parse_mode

    return SimOptions(nodes=n, unplaced=[parse_mode(mode)] * max_faulty(n), drop=0.05,
                      reorder=True, duplicate=0.02, partition="random", crash_restart=1,
                      clients=2, requests=2, duration=2.0, authenticator=authenticator)


@dataclass
class Failure:
    seed: int
    violation: Violation
    command: str  # replays the smallest failing run
    trace: list[str]
    schedule: list[str]
    shrunk: list[str]  # what could be left out and it still fails


@dataclass
class Summary:
    options: SimOptions
    seeds: int = 0
    runs_with_violations: int = 0
    violations: Counter = field(default_factory=Counter)  # kind -> runs
    failing_seeds: list[int] = field(default_factory=list)
    first_violation: dict[int, Violation] = field(default_factory=dict)  # failing seed ->
    failures: list[Failure] = field(default_factory=list)
    committed_batches: int = 0
    virtual_seconds: float = 0.0
    wall_seconds: float = 0.0
    messages: int = 0
    lost: int = 0
    drops: Counter = field(default_factory=Counter)
    max_view: int = 0
    requests: int = 0
    decided_after_heal: list[float] = field(default_factory=list)
    by_kind: Counter = field(default_factory=Counter)
    last_execute_at: float = 0.0  # the latest over the runs

    def add(self, r: RunResult) -> None:
        self.seeds += 1
        self.committed_batches += r.committed_batches
        self.virtual_seconds += r.virtual_seconds
        self.messages += r.messages
        self.lost += r.lost
        self.drops.update(r.drops)
        self.max_view = max(self.max_view, r.views)
        self.requests += r.requests
        self.by_kind.update(r.by_kind)
        self.last_execute_at = max(self.last_execute_at, r.last_execute_at)
        if r.decided_at is not None:
            self.decided_after_heal.append(max(0.0, r.decided_at - self.options.duration))
        if r.violations:
            self.runs_with_violations += 1
            self.failing_seeds.append(r.seed)
            self.first_violation[r.seed] = r.violations[0]
            self.violations[r.violations[0].kind] += 1

    @property
    def messages_per_batch(self) -> float | None:
        return self.messages / self.committed_batches if self.committed_batches else None

    def to_json(self) -> dict:
        o = self.options
        f = max_faulty(o.nodes)
        byz = [f"{i}={m}" for i, m in sorted(o.byzantine.items())] + \
            [f"random={m}" for m in o.unplaced]
        worst = max(self.decided_after_heal, default=None)
        return {
            "nodes": o.nodes, "f": f, "seeds": self.seeds, "byzantine": byz,
            "violations": self.runs_with_violations,
            "violation_kinds": dict(self.violations),
            "failing_seeds": self.failing_seeds[:100],
            "committed_batches": self.committed_batches,
            "virtual_seconds": round(self.virtual_seconds, 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "messages": self.messages,
            "messages_per_batch": (round(self.messages_per_batch, 1)
                                   if self.messages_per_batch else None),
            "lost_in_network": self.lost, "max_view": self.max_view,
            "requests": self.requests,
            "worst_seconds_to_decide_after_heal": round(worst, 3) if worst is not None else None,
            "drops": dict(self.drops.most_common()),
            "messages_by_kind": dict(self.by_kind.most_common()),
            "last_execute_virtual_seconds": round(self.last_execute_at, 4),
            "authenticator": o.authenticator,
            "network": {"latency_ms": o.latency_ms, "bandwidth_mbps": o.bandwidth_mbps,
                        "drop": o.drop, "reorder": o.reorder, "duplicate": o.duplicate,
                        "partition": o.partition, "crash_restart": o.crash_restart},
            "failures": [{"seed": fl.seed, "kind": fl.violation.kind,
                          "detail": fl.violation.detail, "replay": fl.command}
                         for fl in self.failures],
        }


def _run(args: tuple[SimOptions, int]) -> RunResult:
    options, seed = args
    return Simulation(options, seed).run()


def run_seeds(options: SimOptions, seeds: Iterable[int], jobs: int = 1,
              on_result: Callable[[RunResult], None] | None = None,
              explain: int = 1) -> Summary:
    """Run every seed; shrink and trace the first `explain` failing ones."""
    summary = Summary(options)
    start = time.perf_counter()
    seeds = list(seeds)
    failing: list[RunResult] = []
    if jobs > 1 and len(seeds) > 1:
        with ProcessPoolExecutor(jobs) as pool:
            results: Iterable[RunResult] = pool.map(
                _run, [(options, s) for s in seeds], chunksize=max(1, len(seeds) // (8 * jobs)))
            for r in results:
                summary.add(r)
                if r.violations:
                    failing.append(r)
                if on_result:
                    on_result(r)
    else:
        for s in seeds:
            r = _run((options, s))
            summary.add(r)
            if r.violations:
                failing.append(r)
            if on_result:
                on_result(r)
    summary.wall_seconds = time.perf_counter() - start
    for r in failing[:explain]:
        summary.failures.append(explain_failure(options, r.seed, r.violations[0]))
    return summary


def _fails_like(options: SimOptions, seed: int, kind: str) -> bool:
    r = Simulation(options, seed).run()
    return bool(r.violations) and r.violations[0].kind == kind


def shrink(options: SimOptions, seed: int, kind: str) -> tuple[SimOptions, list[str]]:
    """Leave out what the failure does not need, one thing at a time (greedy)."""
    current = options
    left_out: list[str] = []
    budget = SHRINK_RUNS
    candidates: list[tuple[str, dict]] = [
        ("loss", {"drop": 0.0}), ("reordering", {"reorder": False}),
        ("duplication", {"duplicate": 0.0}), ("the partition", {"partition": ""}),
        ("crashes", {"crash_restart": 0}), ("one client", {"clients": 1}),
    ]
    for what, change in candidates:
        if budget <= 0:
            break
        if all(getattr(current, k) == v for k, v in change.items()):
            continue
        trial = dataclasses.replace(current, **change)
        budget -= 1
        if _fails_like(trial, seed, kind):
            current = trial
            left_out.append(what)
    while current.requests > 1 and budget > 0:  # fewer requests, as long as it fails
        trial = dataclasses.replace(current, requests=current.requests - 1)
        budget -= 1
        if not _fails_like(trial, seed, kind):
            break
        current = trial
        left_out.append(f"down to {current.requests} request(s) per client")
    return current, left_out


def explain_failure(options: SimOptions, seed: int, violation: Violation,
                    shrink_first: bool = True) -> Failure:
    """The smallest failing run we can find for this seed, with its minimal trace."""
    smallest, left_out = (shrink(options, seed, violation.kind) if shrink_first
                          else (options, []))
    traced = Simulation(dataclasses.replace(smallest, trace=True), seed)
    r = traced.run()
    found = next((v for v in r.violations if v.kind == violation.kind), None)
    if found is None:  # shrinking must keep it failing; be safe and trace the original
        smallest, left_out = options, []
        traced = Simulation(dataclasses.replace(options, trace=True), seed)
        r = traced.run()
        found = r.violations[0] if r.violations else violation
    return Failure(seed, found, smallest.command(seed),
                   minimal_trace(traced.trace or [], found), r.schedule, left_out)


def describe_options(options: SimOptions) -> str:
    """One line: the network, its faults, and how messages are authenticated."""
    o = options
    faults = []
    if o.drop:
        faults.append(f"loss {o.drop:g}")
    if o.reorder:
        faults.append("reordering")
    if o.duplicate:
        faults.append(f"duplication {o.duplicate:g}")
    if o.partition:
        faults.append(f"partition {o.partition}")
    if o.crash_restart:
        faults.append(f"{o.crash_restart} crash-restart(s)")
    if o.spoil_tags:
        faults.append("client c0 spoils MAC tags")
        if not o.curve:
            faults.append("no CURVE (a replica never knows who sent a frame)")
    net = f"links {o.latency_ms:g} ms" + (f", {o.bandwidth_mbps:g} Mbps" if o.bandwidth_mbps
                                         else ", unlimited bandwidth")
    phase = (f"faults for {o.duration:g} virtual s, then healed"
             if faults else f"requests over {o.duration:g} virtual s")
    return (f"{net}; {', '.join(faults) or 'no network faults'}; {phase}; "
            f"{o.clients} client(s) x {o.requests} request(s); timers {o.timers}; "
            f"{make_members(0, (), o.authenticator).describe()}")
