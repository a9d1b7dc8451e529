"""Repeated sync runs of one cell: the seeds, every run's figures, median and range.

One run of `dtnbus sync` under a random latency model is one draw: seed 0 on every run
made a cell look as good as its luckiest draw (issue 12). A series runs the same cell K
times with seeds S, S+1, ..., S+K-1 (S fresh unless given, so a series can be replayed
with `--seed S`) and reports each time as the median and the range over the runs,
beside the strict floor and the expectation (dtnbus.bound) it is compared with.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtnbus.sync import PHASE_ORDER, SyncResult, fresh_seed, synchronize

TIMES = ("seconds_f1", "seconds_2f1", "seconds_all", "seconds_2f1_committed",
         "seconds_all_committed")


def median_range(values: Sequence[float | None]) -> tuple[float, float, float] | None:
    """(median, min, max) of the values that exist; None when none does."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return statistics.median(present), min(present), max(present)


@dataclass
class SyncSeries:
    """K runs of one cell (same n, data, network), in the order they ran."""

    runs: list[SyncResult]

    @property
    def first(self) -> SyncResult:
        return self.runs[0]

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.runs]

    def stat(self, key: str) -> tuple[float, float, float] | None:
        """(median, min, max) of one time over the runs."""
        return median_range([getattr(r, key) for r in self.runs])

    def median(self, key: str) -> float | None:
        stat = self.stat(key)
        return stat[0] if stat else None

    @property
    def ledgers_identical(self) -> bool:
        return all(r.ledgers_identical for r in self.runs)

    def phases(self) -> dict[str, float]:
        """Each phase's per-batch mean, the median over the runs."""
        out = {}
        for name in PHASE_ORDER:
            stat = median_range([r.phases.get(name) for r in self.runs])
            if stat:
                out[name] = stat[0]
        return out

    def to_json(self) -> dict[str, Any]:
        """The cell, the seeds, every run's own values (`runs`), and for each time its
        median (the top-level value) and range (`range`: [min, max])."""
        r = self.first
        out: dict[str, Any] = {
            "nodes": r.nodes, "tx": r.tx, "tx_bytes": r.tx_bytes,
            "bandwidth_mbps": r.bandwidth_mbps, "latency_ms": r.latency_ms,
            "latency_dist": r.extra.get("latency_dist", "constant"),
            "tentative": r.tentative, "speculative": r.speculative,
            "request_txs": r.request_txs, "requests": r.requests,
            "repeat": len(self.runs), "seeds": self.seeds,
        }
        ranges = {}
        for key in TIMES:
            stat = self.stat(key)
            out[key] = stat[0] if stat else None
            if stat:
                ranges[key] = [stat[1], stat[2]]
        out["range"] = ranges
        out.update(latency_floor_s=r.latency_floor_s, floor_terms=r.floor_terms,
                   latency_expected_s=r.latency_expected_s,
                   expected_dominant=r.expected_dominant, expected_terms=r.expected_terms,
                   **ratios(self), phases=self.phases(),
                   ledgers_identical=self.ledgers_identical,
                   runs=[run.to_json() for run in self.runs])
        return out


def ratios(series: SyncSeries, reference: float | None = None) -> dict[str, float | None]:
    """Our time (q replies, the reference's stopping rule) over the floor, the expectation
    and the reference: the median's ratio and the range's."""
    stat = series.stat("seconds_2f1")
    out: dict[str, float | None] = {}
    r = series.first
    for name, against in (("floor", r.latency_floor_s), ("expected", r.latency_expected_s),
                          ("reference", reference)):
        for suffix, index in (("", 0), ("_min", 1), ("_max", 2)):
            out[f"ours_over_{name}{suffix}"] = (stat[index] / against
                                                if stat and against else None)
    if reference is None:
        for suffix in ("", "_min", "_max"):
            del out[f"ours_over_reference{suffix}"]
    return out


def run_series(nodes: int, data: int | Sequence[bytes], bandwidth_mbps: float = 0.0,
               latency_ms: float = 0.0, *, repeat: int = 1, seed: int | None = None,
               directory: Path | None = None, fresh: bool = False,
               on_run: Callable[[int, SyncResult], None] | None = None,
               **kwargs: Any) -> SyncSeries:
    """Run one cell `repeat` times with seeds seed, seed+1, ... (seed fresh when None).
    With a `directory` every run makes its cluster there: the last one is kept."""
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    base = fresh_seed() if seed is None else seed
    runs = []
    for k in range(repeat):
        result = synchronize(nodes, data, bandwidth_mbps, latency_ms, directory=directory,
                             fresh=fresh or k > 0, seed=base + k, **kwargs)
        runs.append(result)
        if on_run is not None:
            on_run(k, result)
    return SyncSeries(runs)


def _secs(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


def _time_labels(r: SyncResult, f: int, q: int) -> list[tuple[str, str]]:
    if r.speculative:
        return [("seconds_f1", f"decided: all {r.nodes} speculative replies in one view, "
                               f"q={q} tentative or f+1={f + 1} committed"),
                ("seconds_2f1", f"q={q} matching replies, decided"),
                ("seconds_all", f"all {r.nodes} replied, decided"),
                ("seconds_2f1_committed", f"q={q} nodes executed all (durable)"),
                ("seconds_all_committed", f"all {r.nodes} nodes executed all (durable)")]
    if r.tentative:
        return [("seconds_f1", f"f+1={f + 1} matching replies committed, or q={q} tentative"),
                ("seconds_2f1", f"q={q} matching replies (tentative)"),
                ("seconds_all", f"all {r.nodes} replied (tentative)"),
                ("seconds_2f1_committed", f"q={q} nodes executed all (durable)"),
                ("seconds_all_committed", f"all {r.nodes} nodes executed all (durable)")]
    return [("seconds_f1", f"f+1={f + 1} matching replies (client commit)"),
            ("seconds_2f1", f"q={q} nodes (commit quorum) executed all"),
            ("seconds_all", f"all {r.nodes} nodes executed all")]


def draws_latencies(r: SyncResult) -> bool:
    """Whether the run's emulated latencies were random (the seed mattered)."""
    return bool(r.latency_ms and r.extra.get("latency_dist", "constant") != "constant")


def run_line(k: int, r: SyncResult) -> str:
    """One run of a series in one line."""
    seed = f" (seed {r.seed})" if draws_latencies(r) else ""
    return (f"  run {k + 1}{seed}: f+1 {_secs(r.seconds_f1)}, q {_secs(r.seconds_2f1)}, "
            f"all {_secs(r.seconds_all)}")


def summary_lines(series: SyncSeries) -> list[str]:
    """What `dtnbus sync` prints for one cell: every time (median and range over the runs),
    the strict floor and the expectation with our ratio to each, the phases, the heads."""
    from dtnbus.messages import commit_quorum, max_faulty

    r = series.first
    f, q = max_faulty(r.nodes), commit_quorum(r.nodes)
    many = len(series.runs) > 1
    shaped = (f"{r.bandwidth_mbps:g} Mbps, {r.latency_ms:g} ms"
              if r.bandwidth_mbps or r.latency_ms else "unshaped")
    dist = r.extra.get("latency_dist", "constant")
    if r.latency_ms and dist != "constant":
        shaped += f" {dist}"
    if r.extra.get("curve"):
        shaped += ", CURVE"
    shaped += (", fast path (speculative), tentative" if r.speculative and r.tentative
               else ", fast path (speculative)" if r.speculative
               else ", tentative" if r.tentative else ", five-hop normal case")
    seeds = [s for s in series.seeds if s is not None]
    drawn = ""
    if draws_latencies(r) and seeds:
        drawn = (f"; latencies drawn with seed {seeds[0]}" if not many else
                 f"; latencies drawn with seeds {seeds[0]}..{seeds[-1]}")
    runs = f", {len(series.runs)} runs" if many else ""
    lines = [f"synchronized {r.tx} tx x {r.tx_bytes} B across {r.nodes} nodes "
             f"(f={f}, {shaped}, {r.requests} requests{runs}{drawn})"]
    width = 50
    if many:
        lines.append(f"  {'':<{width}} {'median':>9}   range (min-max)")
    for key, label in _time_labels(r, f, q):
        stat = series.stat(key)
        text = f"  {label + ':':<{width}} {_secs(stat[0] if stat else None):>9}"
        if many and stat:
            text += f"   {stat[1]:.3f}-{stat[2]:.3f} s"
        lines.append(text)
    if r.latency_floor_s is not None:
        floor = r.floor_terms
        lines.append(f"  {'strict floor (latency_floor_s):':<{width}} "
                     f"{_secs(r.latency_floor_s):>9}   no run can beat it: "
                     f"{floor.get('latency_s', 0):.3f} s shortest latencies + "
                     f"{floor.get('payload_s', 0):.3f} s payload + "
                     f"{floor.get('crypto_s', 0) * 1000:.2f} ms crypto")
    if r.latency_expected_s is not None:
        lines.append(f"  {'expectation (latency_expected_s):':<{width}} "
                     f"{_secs(r.latency_expected_s):>9}   the mean under the latency model; "
                     f"{r.expected_dominant} dominates")
    ratio = ratios(series)
    parts = []
    for name, what in (("floor", "over the floor"), ("expected", "over the expectation")):
        if ratio.get(f"ours_over_{name}") is not None:
            text = f"{what} {ratio[f'ours_over_{name}']:.2f}x"
            if many:
                text += (f" ({ratio[f'ours_over_{name}_min']:.2f}-"
                         f"{ratio[f'ours_over_{name}_max']:.2f}x)")
            parts.append(text)
    if parts:
        lines.append(f"  ours (q={q} replies): " + "; ".join(parts))
    lines.append("  per-phase means (per batch, over nodes" + ("; median of the runs):"
                                                              if many else "):"))
    for name, secs in series.phases().items():
        lines.append(f"    {name:<24} {secs * 1000:9.3f} ms")
    last = series.runs[-1]
    same = "identical" if last.ledgers_identical else "DIFFERENT"
    which = (f"last run; identical in {'every' if series.ledgers_identical else 'NOT every'}"
             " run") if many else same
    lines.append(f"  ledger heads ({which}):")
    for node_id, head in last.ledger_heads.items():
        lines.append(f"    node {node_id}: height {last.ledger_heights[node_id]} head {head[:16]}")
    return lines
