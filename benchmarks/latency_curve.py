"""Latency against load: client-visible commit latency at 10 %..100 % of the saturation rate.

    python -m benchmarks.latency_curve [--nodes 4 16] [--clients 16] [--request-txs 1]
                                       [--seconds 10] [--fractions 0.1 0.2 ... 1.0]

For each n: first the saturation throughput, from closed-loop runs of `dtnbus bench`
(dtnbus.bench.run_bench: --clients clients, each keeping --pipeline requests
outstanding; the median of --saturation-runs); then open-loop runs offering each
fraction of it (requests sent on a fixed schedule whatever the replies do, so queueing
shows in the latency instead of slowing the sender). Each point is a fresh cluster of
real node processes; latency is from a request's send to its f+1 matching committed
replies. Output: a table, results/latency-curve.csv and results/latency-curve.png
(p50, p99 and p99.9 against the throughput achieved).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import machine, print_table
from dtnbus.bench import BenchResult, run_bench

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def point_row(result: BenchResult, fraction: float | None, saturation: float,
              load: float) -> dict[str, Any]:
    """One measured point: what was offered, what was achieved, the latency percentiles."""
    return {
        "nodes": result.nodes, "clients": result.clients, "request_txs": result.request_txs,
        "mode": result.mode, "fraction": fraction,
        "offered_tx_per_s": (result.offered_per_s * result.request_txs
                             if result.offered_per_s else None),
        "saturation_tx_per_s": saturation, "tx_per_s": result.tx_per_s,
        "p50_ms": result.p50_ms, "p99_ms": result.p99_ms, "p999_ms": result.p999_ms,
        "cpu_us_per_tx": result.cpu_us_per_tx, "node_cpu_share": result.node_cpu_share,
        "client_cpu_share": result.client_cpu_share, "tx": result.tx,
        "seconds": result.seconds, "ledgers_identical": result.ledgers_identical,
        "authentication": result.authentication, "durability": result.durability,
        "load_average": round(load, 2),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--request-txs", type=int, default=1)
    parser.add_argument("--pipeline", type=int, default=32,
                        help="closed loop (saturation): requests outstanding per client")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds a point")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--saturation-runs", type=int, default=1,
                        help="closed-loop runs whose median is the saturation rate")
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument("--durability", choices=("fsync", "process"), default="fsync",
                        help="the nodes' durability (docs/protocol.md, the fault model)")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--stem", default="latency-curve")
    parser.add_argument("--replot", type=Path, default=None,
                        help="only redraw the PNG from this CSV (a finished sweep)")
    args = parser.parse_args(argv)
    if args.replot is not None:
        replot(args.replot, args.out / f"{args.stem}.png")
        return
    if any(not 0 < f <= 2 for f in args.fractions):
        parser.error("--fractions must be in (0, 2]")
    started_at = time.strftime("%Y-%m-%d %H:%M %Z")
    load_before = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    for n in args.nodes:
        closed = []
        for k in range(args.saturation_runs):
            load = os.getloadavg()[0]
            print(f"n={n}: saturation, closed loop, run {k + 1}/{args.saturation_runs} "
                  f"(load {load:.1f})", file=sys.stderr, flush=True)
            closed.append((run_bench(n, args.clients, args.request_txs, args.seconds,
                                     pipeline=args.pipeline, warmup=args.warmup,
                                     durability=args.durability), load))
        saturation = statistics.median(r.tx_per_s for r, _ in closed)
        rows += [point_row(r, None, saturation, load) for r, load in closed]
        for fraction in sorted(args.fractions):
            rate = max(1.0, fraction * saturation / args.request_txs)
            load = os.getloadavg()[0]
            print(f"n={n}: open loop at {fraction:.0%} of {saturation:,.0f} tx/s "
                  f"({rate:,.0f} requests/s; load {load:.1f})", file=sys.stderr, flush=True)
            result = run_bench(n, args.clients, args.request_txs, args.seconds, rate=rate,
                               warmup=args.warmup, durability=args.durability)
            rows.append(point_row(result, fraction, saturation, load))
            _write(rows, args, started_at, load_before)
    header = _write(rows, args, started_at, load_before)
    print(header)
    print_table(rows, ["nodes", "mode", "fraction", "offered_tx_per_s", "tx_per_s", "p50_ms",
                       "p99_ms", "p999_ms", "cpu_us_per_tx", "node_cpu_share",
                       "client_cpu_share", "load_average", "ledgers_identical"])
    for n in args.nodes:
        half = [r for r in rows if r["nodes"] == n and r["fraction"] == 0.5]
        if half and half[0]["p50_ms"] is not None:
            print(f"n={n}: p50 at half the saturation rate: {half[0]['p50_ms']:.1f} ms")
    print(f"wrote {args.out / (args.stem + '.csv')}")
    if (args.out / (args.stem + ".png")).exists():
        print(f"wrote {args.out / (args.stem + '.png')}")


def _write(rows: list[dict[str, Any]], args: argparse.Namespace, started_at: str,
           load_before: float) -> str:
    """CSV and PNG of what has been measured so far (partial results survive)."""
    import csv

    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / f"{args.stem}.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    header = (f"latency vs load ({machine()}); {started_at}; {args.clients} clients, "
              f"{args.request_txs} tx per request, {args.seconds:g} s a point, durability "
              f"{args.durability}; load average "
              f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} now")
    with contextlib.suppress(ImportError):  # matplotlib is a dev extra; the CSV suffices
        import matplotlib.pyplot as plt

        fig = figure(rows, header)
        fig.savefig(args.out / f"{args.stem}.png", dpi=110)
        plt.close(fig)
    return header


def replot(csv_path: Path, png: Path) -> None:
    """Draw the PNG again from a sweep's CSV (numbers as the CSV holds them)."""
    import csv

    import matplotlib.pyplot as plt

    def value(text: str) -> Any:
        try:
            return int(text) if text.isdigit() else float(text)
        except ValueError:
            return text or None

    with csv_path.open() as fh:
        rows = [{k: value(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    loads = [r["load_average"] for r in rows if isinstance(r.get("load_average"), float | int)]
    span = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "?"
    fig = figure(rows, f"latency vs load (redrawn from {csv_path.name}; {rows[0]['clients']} "
                       f"clients, {rows[0]['request_txs']} tx per request; load average "
                       f"{span} over the points)")
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    print(f"wrote {png}")


def figure(rows: Sequence[dict[str, Any]], title: str) -> Any:
    """One panel per n: p50, p99, p99.9 (ms, log axis: they span orders of magnitude near
    saturation) against the throughput achieved (linear from zero); the closed-loop
    saturation rate as a dashed line."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes = list(dict.fromkeys(r["nodes"] for r in rows))
    fig, axes = plt.subplots(1, len(nodes), squeeze=False, layout="constrained",
                             figsize=(6.0 * len(nodes), 4.8))
    for ax, n in zip(axes[0], nodes, strict=True):
        # in the order of the offered load: past saturation the achieved rate can fall
        # back, and the curve then bends back instead of pretending to go on
        points = sorted((r for r in rows if r["nodes"] == n and r["mode"] == "open"),
                        key=lambda r: float(r["fraction"]))
        for key, name, marker in (("p50_ms", "p50", "o"), ("p99_ms", "p99", "s"),
                                  ("p999_ms", "p99.9", "^")):
            pts = [(r["tx_per_s"], r[key], r["fraction"]) for r in points if r[key]]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=name)
            if key == "p50_ms":
                for x, y, fraction in pts:
                    ax.annotate(f"{float(fraction):.0%}", (x, y), textcoords="offset points",
                                xytext=(0, -11), ha="center", fontsize=6, color="tab:blue")
        saturation = next((r["saturation_tx_per_s"] for r in rows if r["nodes"] == n), None)
        if saturation:
            ax.axvline(saturation, color="tab:red", linestyle="--", linewidth=1,
                       label=f"closed-loop saturation {saturation:,.0f} tx/s")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlim(0, max([saturation or 0, *(r["tx_per_s"] for r in points), 1]) * 1.1)
        ax.set_xlabel("committed transactions per second (achieved; labels: offered, "
                      "% of saturation)")
        ax.set_ylabel("client-visible commit latency, ms (log)")
        ax.set_title(f"n = {n}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig


if __name__ == "__main__":
    main()
