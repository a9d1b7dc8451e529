"""Every Byzantine mode against real clusters of node processes: safety, progress, culprit.

    python -m benchmarks.byzantine_nodes [--nodes 4,7] [--modes silent,...] [--seconds 10]
                                         [--load N] [--out results]

For each n and mode, a fresh cluster (`cluster_up(..., byzantine=...)`, what `dtnbus
cluster up --byzantine` does) with f = floor((n-1)/3) nodes in the mode: nodes 0..f-1, so
the first faulty node is the initial primary and, at n = 7, the next view's primary is
faulty too (the hardest placement for the modes that attack ordering: silent, slow,
equivocate, censor, forge; the others misbehave as well from there). A client stream
(`dtnbus.stream.RequestStream`, closed loop) runs for `--seconds`; for `lying-state` and
`proof-bomb`, whose lies are answers to state transfer, the last correct node is killed
with SIGKILL a third of the way in and restarted at two thirds, so it must take state
from a cluster that includes the liar. `--load N`: N more clients keep the cluster at
saturation beside the stream (`dtnbus.bench.BackgroundLoad`), and every request they saw
executed is checked like the stream's. Then the stream drains and the run checks, on the
correct nodes only (the faulty ones promise nothing):

- every request the client saw acknowledged is in every correct ledger, exactly once, at
  the sequence and block hash it was told (`dtnbus.chaos.check_acknowledged`);
- the correct ledgers pass `ledger verify` and are identical (`ledger_check.check_cluster`);
- progress: nothing left unacknowledged after draining, and requests acknowledged in the
  second half of the stream (after the view changes a faulty primary forces);
- no node process died, no node logged a traceback;

and reports the views the correct nodes entered (their logs), acknowledged requests per
second, client latency, and the correct nodes' `dtnbus_peer_drops_total` against the
faulty ids by reason (does the metric name the culprit?) and against correct ids (blame
that lands on an innocent member, e.g. a forgery in its name). Prints a table, writes
OUT/byzantine-nodes.csv (default results/); exit status 1 if any cell fails a check (its cluster
directory is then kept and printed). Load average is recorded at the start and end of
each cell: the machine may be shared.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.common import RESULTS, machine, print_table
from dtnbus.bench import BackgroundLoad
from dtnbus.chaos import ENTERED_VIEW, check_acknowledged
from dtnbus.client import Client
from dtnbus.cluster import (
    cluster_up,
    kill_node,
    process_alive,
    running_pids,
    start_nodes,
    stop_nodes,
)
from dtnbus.config import ClusterConfig
from dtnbus.fuzzrun import scrape
from dtnbus.ledger_check import check_cluster
from dtnbus.messages import max_faulty
from dtnbus.simulation.scenario import MODES
from dtnbus.stream import RequestStream, percentile

PROTOCOL = {"view_change_timeout": 1.0, "retransmit_after": 0.3,
            "checkpoint_interval": 16, "window": 64}  # as `dtnbus chaos`: small, so a
# restarted node falls behind the window and must take state
STATE_MODES = ("lying-state", "proof-bomb")  # their lies answer state transfer
DRAIN_SECONDS = 30.0
LEVEL_SECONDS = 30.0

COLUMNS = ["n", "mode", "faulty", "acknowledged", "acks_per_s", "left", "late_acks",
           "views", "p50_ms", "p99_ms", "missing", "duplicated", "wrong_place",
           "ledgers", "height", "drops_vs_faulty", "drops_vs_correct", "restart",
           "load_acknowledged", "ok"]


@dataclass
class Cell:
    """One mode at one n: what the client saw and what the correct nodes hold."""

    n: int
    mode: str
    faulty: str  # "0,1"
    seconds: float
    acknowledged: int = 0
    acks_per_s: float = 0.0
    left: int = 0  # still unacknowledged after draining
    late_acks: int = 0  # acknowledged in the second half of the stream
    views: str = ""  # views the correct nodes entered, e.g. "1 2"
    p50_ms: float | None = None
    p99_ms: float | None = None
    missing: int = 0
    duplicated: int = 0
    wrong_place: int = 0
    contradictions: int = 0
    ledgers: str = ""  # "identical" or the first finding
    height: int = 0  # the correct nodes' common height (batches)
    drops_vs_faulty: str = ""  # reason=count, summed over the correct nodes
    drops_vs_correct: str = ""
    restart: str = "-"  # STATE_MODES: the restarted node's catch-up
    load_acknowledged: int = 0  # `--load`: requests its clients saw executed (all checked)
    load_start: float = 0.0
    load_end: float = 0.0
    wall_s: float = 0.0
    violations: list[str] = field(default_factory=list)
    directory: str = ""

    @property
    def ok(self) -> bool:
        return not self.violations

    def row(self) -> dict:
        out = asdict(self)
        out["violations"] = "; ".join(self.violations) or "-"
        out["ok"] = self.ok
        return out


def run_cell(n: int, mode: str, seconds: float, window: int = 8,
             log: Callable[[str], None] = lambda line: None, load: int = 0) -> Cell:
    """One fresh cluster with f nodes in `mode`, a client stream (and `load` clients at
    saturation beside it), the checks."""
    f = max_faulty(n)
    faulty = list(range(f))
    correct = [i for i in range(n) if i not in faulty]
    cell = Cell(n, mode, ",".join(map(str, faulty)), seconds, load_start=os.getloadavg()[0])
    wall = time.monotonic()
    where = Path(tempfile.mkdtemp(prefix=f"dtnbus-byz-{n}-{mode.replace(':', '')}-"))
    cell.directory = str(where)
    config = cluster_up(where, n, protocol=PROTOCOL, fresh=True,
                        byzantine={i: mode for i in faulty}, extra_clients=load)
    pids = running_pids(where)
    stream: RequestStream | None = None
    background: BackgroundLoad | None = None
    executed: set[tuple[str, int, int]] = set()
    try:
        with Client(config) as probe:
            stream = RequestStream(config, window=window, tag=n).start()
            if load:
                background = BackgroundLoad(config, load).start()
            t0 = time.monotonic()
            if mode in STATE_MODES:
                cell.restart = _kill_and_restart(config, where, correct[-1], t0, seconds,
                                                 probe, cell)
            time.sleep(max(0.0, t0 + seconds - time.monotonic()))  # the stream runs
            stream_end = time.monotonic()
            if background is not None:
                executed = background.stop()
            cell.left = stream.drain(DRAIN_SECONDS)
            stream.stop()
            cell.height = _wait_level(probe, correct, cell)
        cell.acknowledged = stream.accepted_count()
        cell.acks_per_s = round(cell.acknowledged / (stream_end - t0), 1)
        half = t0 + seconds / 2
        cell.late_acks = sum(1 for t in stream.accept_times if half <= t <= stream_end)
        latencies = [a.latency for a in stream.accepted() if a.latency is not None]
        cell.p50_ms = _ms(percentile(latencies, 50))
        cell.p99_ms = _ms(percentile(latencies, 99))
        cell.contradictions = stream.contradictions
        cell.drops_vs_faulty, cell.drops_vs_correct = _blame(config, correct, faulty)
        dead = [i for i, pid in pids.items() if not process_alive(pid)
                and not (mode in STATE_MODES and i == correct[-1])]
        if dead:
            cell.violations.append(f"node process(es) {dead} died")
    finally:
        if background is not None:
            executed = background.stop()
            if background.error is not None:
                cell.violations.append(f"the load generator failed: {background.error!r}")
        if stream is not None:
            stream.stop()
        stop_nodes(where)
    cell.load_acknowledged = len(executed)
    _check(config, where, stream, correct, cell, executed)
    cell.load_end = os.getloadavg()[0]
    cell.wall_s = round(time.monotonic() - wall, 1)
    if cell.ok:
        shutil.rmtree(where, ignore_errors=True)
    log(f"n={n} {mode}: {cell.acknowledged} acknowledged, views [{cell.views}], "
        + ("every check held" if cell.ok else "VIOLATIONS: " + "; ".join(cell.violations)))
    return cell


def _kill_and_restart(config: ClusterConfig, where: Path, victim: int, t0: float,
                      seconds: float, probe: Client, cell: Cell) -> str:
    """SIGKILL `victim` a third of the way in, restart it at two thirds; it must reach
    the others' height of the moment (taking state from a cluster with the liar in it)."""
    time.sleep(max(0.0, t0 + seconds / 3 - time.monotonic()))
    kill_node(where, victim)
    time.sleep(max(0.0, t0 + 2 * seconds / 3 - time.monotonic()))
    others = probe.status(1.0)
    target = max((s.last_executed for r, s in others.items() if r != victim), default=0)
    restarted = time.monotonic()
    start_nodes(config, where, ids=[victim])
    deadline = restarted + LEVEL_SECONDS
    while time.monotonic() < deadline:
        me = probe.status(0.5).get(victim)
        if me is not None and me.ready and me.last_executed >= target:
            return f"node {victim} to seq {target} in {time.monotonic() - restarted:.1f} s"
        time.sleep(0.05)  # polling another process's state: nothing to block on
    cell.violations.append(f"node {victim} did not reach seq {target} within "
                           f"{LEVEL_SECONDS:.0f} s of its restart")
    return f"node {victim} NEVER reached seq {target}"


def _wait_level(probe: Client, correct: list[int], cell: Cell) -> int:
    """The correct nodes' common height once they agree on it (bounded)."""
    deadline = time.monotonic() + LEVEL_SECONDS
    heights: dict[int, int] = {}
    while time.monotonic() < deadline:
        st = probe.status(0.5)
        heights = {r: s.last_executed for r, s in st.items() if r in correct}
        if len(heights) == len(correct) and len(set(heights.values())) == 1:
            return next(iter(heights.values()))
        time.sleep(0.05)  # polling other processes' state
    cell.violations.append(f"correct nodes not level {LEVEL_SECONDS:.0f} s after draining: "
                           f"{heights}")
    return min(heights.values(), default=0)


def _blame(config: ClusterConfig, correct: list[int],
           faulty: list[int]) -> tuple[str, str]:
    """dtnbus_peer_drops_total on the correct nodes, summed: against the faulty ids and
    against correct ids, each as `reason=count` sorted by reason."""
    against: dict[bool, dict[str, int]] = {True: {}, False: {}}
    for node in correct:
        for (name, labels), value in scrape(config.node(node).metrics).items():
            lab = dict(labels)
            if name != "dtnbus_peer_drops_total" or not lab.get("peer", "").isdigit():
                continue
            side = against[int(lab["peer"]) in faulty]
            side[lab["reason"]] = side.get(lab["reason"], 0) + int(value)
    return _reasons(against[True]), _reasons(against[False])


def _reasons(counts: dict[str, int]) -> str:
    return " ".join(f"{r}={c}" for r, c in sorted(counts.items()) if c) or "-"


def _check(config: ClusterConfig, where: Path, stream: RequestStream | None,
           correct: list[int], cell: Cell,
           load_executed: set[tuple[str, int, int]] | None = None) -> None:
    """The checks on stopped nodes: acknowledged requests in the correct ledgers exactly
    once, ledgers verified and identical, views entered, tracebacks, progress."""
    if stream is None:
        cell.violations.append("the client stream never started")
        return
    if stream.error is not None:
        cell.violations.append(f"client stream failed: {stream.error!r}")
    cell.missing, cell.duplicated, cell.wrong_place = check_acknowledged(
        config, stream, nodes=tuple(correct), also=load_executed or frozenset())
    _reports, findings = check_cluster(config, only=set(correct))
    cell.ledgers = "identical, verified" if not findings else findings[0].line()
    views: set[int] = set()
    for node in range(config.n):
        text = (where / "logs" / f"node-{node}.log").read_text(errors="replace")
        if "Traceback" in text:
            cell.violations.append(f"node {node} logged a traceback")
        if node in correct:
            views.update(int(v) for v in ENTERED_VIEW.findall(text))
    cell.views = " ".join(map(str, sorted(views))) or "-"
    if cell.missing or cell.duplicated or cell.wrong_place:
        cell.violations.append(f"acknowledged requests: {cell.missing} missing, "
                               f"{cell.duplicated} executed twice, {cell.wrong_place} "
                               "elsewhere than acknowledged")
    if findings:
        cell.violations.append(f"{len(findings)} ledger finding(s): {findings[0].line()}")
    if cell.contradictions:
        cell.violations.append(f"{cell.contradictions} committed replies contradict an "
                               "acknowledged answer")
    if cell.left:
        cell.violations.append(f"{cell.left} requests unacknowledged {DRAIN_SECONDS:.0f} s "
                               "after the stream stopped offering")
    if not cell.late_acks:
        cell.violations.append("no request acknowledged in the second half of the stream")


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="4,7", help="cluster sizes, comma list")
    parser.add_argument("--modes", default=",".join(MODES), help="comma list")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="client stream per cell")
    parser.add_argument("--window", type=int, default=8, help="requests outstanding")
    parser.add_argument("--load", type=int, default=0,
                        help="clients of a closed loop at saturation beside the stream "
                             "(their executed requests checked too); 0: none")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the CSV goes")
    args = parser.parse_args(argv)
    try:
        sizes = [int(x) for x in args.nodes.split(",")]
    except ValueError:
        parser.error(f"--nodes: a comma list of sizes, e.g. 4,7; got {args.nodes!r}")
    from dtnbus.byzantine import parse_mode

    modes = [m for m in args.modes.split(",") if m]
    for mode in modes:
        try:
            parse_mode(mode)
        except ValueError as exc:
            parser.error(f"--modes: {exc}")
    if args.seconds <= 0 or args.window < 1 or args.load < 0:
        parser.error("--seconds must be above 0, --window at least 1, --load at least 0")
    if any(n < 4 for n in sizes):
        parser.error("--nodes: every size must be at least 4 (n >= 3f+1 with f >= 1)")
    print(f"dtnbus byzantine nodes ({machine()}); load average at start "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    cells = [run_cell(n, mode, args.seconds, args.window,
                      log=lambda line: print(line, file=sys.stderr, flush=True),
                      load=args.load)
             for n in sizes for mode in modes]
    rows = [c.row() for c in cells]
    print_table(rows, COLUMNS)
    print(f"wrote {write_rows(args.out / 'byzantine-nodes.csv', rows)}")
    print(f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    failed = [c for c in cells if not c.ok]
    for c in failed:
        print(f"FAILED n={c.n} {c.mode}: {'; '.join(c.violations)} (kept {c.directory})")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
