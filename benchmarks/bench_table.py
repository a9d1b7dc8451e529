"""The throughput table of the README: `dtnbus bench` at n = 4 and 16, small and bulk requests.

    python -m benchmarks.bench_table [--nodes 4 16] [--request-txs 1 256] [--clients 16]
                                     [--seconds 10] [--repeat 3]

Each row is dtnbus.bench.run_bench (what `dtnbus bench` runs): a fresh cluster of real
node processes, --clients clients each with its own key and session, closed loop
(each client keeps --pipeline requests outstanding; --bulk-pipeline for requests of more
than one transaction), 300-byte transactions, measured for --seconds after --warmup.
Rows run in rounds (every row once, then again), so a change in the machine's load
spreads over all rows; each figure is the median over --repeat runs with its range.
Output: a table, results/bench-table.csv (one row per configuration), bench-table-runs.csv
(one row per run), bench-table.md and bench-table.png.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import machine, print_table
from dtnbus.bench import BenchResult, run_bench
from dtnbus.sync_runs import median_range

FIGURES = ("tx_per_s", "p50_ms", "p99_ms", "p999_ms", "cpu_us_per_tx", "node_cpu_share",
           "client_cpu_share")


def summary_row(runs: Sequence[tuple[BenchResult, float]], pipeline: int) -> dict[str, Any]:
    """One configuration: each figure the median over its runs, with min and max."""
    first = runs[0][0]
    row: dict[str, Any] = {"nodes": first.nodes, "clients": first.clients,
                           "request_txs": first.request_txs, "pipeline": pipeline,
                           "runs": len(runs)}
    for key in FIGURES:
        stat = median_range([getattr(r, key) for r, _ in runs])
        row[key], row[f"{key}_min"], row[f"{key}_max"] = stat or (None, None, None)
    row["ledgers_identical"] = all(r.ledgers_identical for r, _ in runs)
    row["retransmissions"] = sum(r.retransmissions for r, _ in runs)
    row["busy_answers"] = sum(r.busy_answers for r, _ in runs)
    row["load_average"] = " ".join(f"{load:.1f}" for _, load in runs)
    row["authentication"] = first.authentication
    row["durability"] = first.durability
    return row


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--request-txs", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--pipeline", type=int, default=32,
                        help="requests outstanding per client (1-transaction requests)")
    parser.add_argument("--bulk-pipeline", type=int, default=4,
                        help="requests outstanding per client when a request holds more "
                             "than one transaction")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--stem", default="bench-table")
    args = parser.parse_args(argv)
    configs = [(n, k, args.pipeline if k == 1 else args.bulk_pipeline)
               for k in args.request_txs for n in args.nodes]
    started_at = time.strftime("%Y-%m-%d %H:%M %Z")
    load_before = os.getloadavg()[0]
    runs: dict[tuple[int, int, int], list[tuple[BenchResult, float]]] = {}
    run_rows: list[dict[str, Any]] = []
    for k in range(args.repeat):
        for n, request_txs, pipeline in configs:
            load = os.getloadavg()[0]
            print(f"round {k + 1}/{args.repeat}: n={n}, {args.clients} clients, {request_txs} "
                  f"tx per request, {pipeline} outstanding each (load {load:.1f})",
                  file=sys.stderr, flush=True)
            result = run_bench(n, args.clients, request_txs, args.seconds, pipeline=pipeline,
                               warmup=args.warmup)
            runs.setdefault((n, request_txs, pipeline), []).append((result, load))
            run_rows.append({**result.to_json(), "round": k + 1, "pipeline": pipeline,
                             "load_average": round(load, 2)})
    rows = [summary_row(runs[c], c[2]) for c in configs if c in runs]
    header = (f"dtnbus bench ({machine()}); {started_at}; closed loop, {args.clients} clients, "
              f"300-byte transactions, {args.seconds:g} s measured after {args.warmup:g} s; "
              f"median (min-max) of {args.repeat} runs in rounds; load average "
              f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    print(header)
    print_table([_display(r) for r in rows],
                ["n", "tx/request", "outstanding", "tx/s", "p50 ms", "p99 ms",
                 "CPU us/tx (all nodes)", "nodes' CPU", "clients' CPU", "identical"])
    for path in _write(rows, run_rows, args.out, args.stem, header):
        print(f"wrote {path}")


def _range(row: dict[str, Any], key: str, fmt: str) -> str:
    if row.get(key) is None:
        return "-"
    text = format(row[key], fmt)
    if row["runs"] > 1:
        text += f" ({format(row[f'{key}_min'], fmt)}-{format(row[f'{key}_max'], fmt)})"
    return text


def _display(row: dict[str, Any]) -> dict[str, Any]:
    return {"n": row["nodes"], "tx/request": row["request_txs"],
            "outstanding": f"{row['clients']} x {row['pipeline']}",
            "tx/s": _range(row, "tx_per_s", ",.0f"), "p50 ms": _range(row, "p50_ms", ".1f"),
            "p99 ms": _range(row, "p99_ms", ".1f"),
            "CPU us/tx (all nodes)": _range(row, "cpu_us_per_tx", ",.0f"),
            "nodes' CPU": _range(row, "node_cpu_share", ".0%"),
            "clients' CPU": _range(row, "client_cpu_share", ".0%"),
            "identical": row["ledgers_identical"]}


def _write(rows: list[dict[str, Any]], run_rows: list[dict[str, Any]], out: Path, stem: str,
           header: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for path, data in ((out / f"{stem}.csv", rows), (out / f"{stem}-runs.csv", run_rows)):
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for r in data for k in r)))
            writer.writeheader()
            writer.writerows(data)
        paths.append(path)
    shown = [_display(r) for r in rows]
    lines = [f"# {stem}", "", header + ".", "", "| " + " | ".join(shown[0]) + " |",
             "|" + "|".join("---:" for _ in shown[0]) + "|"]
    lines += ["| " + " | ".join(str(v) for v in r.values()) + " |" for r in shown]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    paths.append(out / f"{stem}.md")
    with contextlib.suppress(ImportError):  # matplotlib is a dev extra
        paths.append(_chart(rows, out / f"{stem}.png", header))
    return paths


def _chart(rows: list[dict[str, Any]], path: Path, header: str) -> Path:
    """Committed tx/s per configuration, linear from zero, labelled, whiskers = range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(rows) + 2), 4.8), layout="constrained")
    x = list(range(len(rows)))
    values = [r["tx_per_s"] or 0.0 for r in rows]
    err = [[max(0.0, v - (r["tx_per_s_min"] or v)) for v, r in zip(values, rows, strict=True)],
           [max(0.0, (r["tx_per_s_max"] or v) - v) for v, r in zip(values, rows, strict=True)]]
    bars = ax.bar(x, values, 0.6, yerr=err, capsize=3, color="tab:blue")
    ax.bar_label(bars, [f"{v:,.0f}" for v in values], fontsize=8, padding=2)
    ax.set_xticks(x, [f"n={r['nodes']}\n{r['request_txs']} tx/request" for r in rows],
                  fontsize=8)
    ax.set_ylim(0, max([*(v + e for v, e in zip(values, err[1], strict=True)), 1.0]) * 1.2)
    ax.set_ylabel("committed transactions per second")
    ax.set_title(header, fontsize=7, wrap=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
