"""Sync results as files a researcher keeps: CSV, a markdown table, and PNG charts.

One row per cell of a grid: each time the median over the cell's runs, with its min and
max (`<column>_min`, `<column>_max`; the markdown shows "median (min-max)"), beside the
strict floor and the expectation it is compared with; optionally one row per run in
`<stem>-runs.csv`. The phase times are the nodes' own metrics, so what lands in results/
and what Grafana shows agree.
"""

from __future__ import annotations

import contextlib
import csv
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dtnbus.sync import PHASE_ORDER, SyncResult
from dtnbus.sync_runs import SyncSeries, ratios

RANGED = ("seconds_f1", "seconds_2f1", "seconds_all", "ours_over_floor", "ours_over_expected",
          "ours_over_reference")
"""Columns given as the median over a cell's runs, with `<column>_min` and `<column>_max`."""

COLUMNS = ("nodes", "tx", "tx_bytes", "bandwidth_mbps", "latency_ms", "latency_dist",
           "tentative", "speculative", "runs", "seeds",
           "seconds_f1", "seconds_f1_min", "seconds_f1_max",
           "seconds_2f1", "seconds_2f1_min", "seconds_2f1_max",
           "seconds_all", "seconds_all_min", "seconds_all_max", "seconds_2f1_committed",
           "latency_floor_s", "latency_expected_s", "expected_dominant",
           "ours_over_floor", "ours_over_floor_min", "ours_over_floor_max",
           "ours_over_expected", "ours_over_expected_min", "ours_over_expected_max",
           "reference_seconds",
           "ours_over_reference", "ours_over_reference_min", "ours_over_reference_max",
           *(f"phase_{p}_ms" for p in PHASE_ORDER), "phase_other_ms", "ledgers_identical")


def series_row(series: SyncSeries, reference: float | None = None,
               **extra: Any) -> dict[str, Any]:
    """One flat row for a cell: each time and ratio the median over its runs, with min and
    max beside it; `reference` is the reference system's published figure, if any."""
    r = series.first
    row: dict[str, Any] = {
        "nodes": r.nodes, "tx": r.tx, "tx_bytes": r.tx_bytes,
        "bandwidth_mbps": r.bandwidth_mbps, "latency_ms": r.latency_ms,
        "latency_dist": r.extra.get("latency_dist", "constant"),
        "tentative": r.tentative, "speculative": r.speculative, "runs": len(series.runs),
        "seeds": " ".join(str(s) for s in series.seeds if s is not None) or None,
    }
    for key in ("seconds_f1", "seconds_2f1", "seconds_all"):
        stat = series.stat(key)
        row[key], row[f"{key}_min"], row[f"{key}_max"] = stat or (None, None, None)
    row["seconds_2f1_committed"] = series.median("seconds_2f1_committed")
    row.update(latency_floor_s=r.latency_floor_s, latency_expected_s=r.latency_expected_s,
               expected_dominant=r.expected_dominant, reference_seconds=reference)
    row.update(ratios(series, reference))
    row["ledgers_identical"] = series.ledgers_identical
    row["retransmissions"] = sum(run.retransmissions for run in series.runs)
    for phase, secs in series.phases().items():
        row[f"phase_{phase}_ms"] = secs * 1000
    shares = phase_shares(row)
    row["phase_other_ms"] = dict(shares)[OTHER] * 1000 if shares else None
    row.update(extra)
    return row


def result_row(result: SyncResult, reference: float | None = None,
               **extra: Any) -> dict[str, Any]:
    """One run's own row (a series of one: min = max = the value)."""
    return series_row(SyncSeries([result]), reference, **extra)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def write_results(rows: Sequence[dict[str, Any]], out_dir: Path, stem: str | None = None,
                  title: str = "dtnbus sync",
                  run_rows: Sequence[dict[str, Any]] | None = None,
                  notes: Sequence[str] = ()) -> list[Path]:
    """Write `<stem>.csv`, `<stem>.md` and `<stem>.png` (+ `<stem>-phases.png`); with
    `run_rows` (one row per run, `result_row`), also `<stem>-runs.csv`. `notes`: lines
    under the markdown's title (the machine, the date, the load)."""
    if not rows:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or time.strftime("sync-%Y%m%d-%H%M%S")
    columns = list(dict.fromkeys([*COLUMNS, *(k for r in rows for k in r)]))
    csv_path = out_dir / f"{stem}.csv"
    _write_csv(csv_path, columns, rows)
    paths = [csv_path]
    if run_rows:
        runs_path = out_dir / f"{stem}-runs.csv"
        _write_csv(runs_path, list(dict.fromkeys([*COLUMNS, *(k for r in run_rows for k in r)])),
                   run_rows)
        paths.append(runs_path)
    md_path = out_dir / f"{stem}.md"
    md_path.write_text(markdown_table(rows, columns, title, notes))
    paths.append(md_path)
    with contextlib.suppress(ImportError):  # matplotlib is a dev extra; CSV and md suffice
        paths += _plots(rows, out_dir, stem, title)
    return paths


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str,
                   notes: Sequence[str] = ()) -> str:
    """The rows as markdown; a ranged column shows "median (min-max)" in one cell when a
    cell ran more than once."""
    folded = {f"{c}_{end}" for c in RANGED for end in ("min", "max")}
    shown = [c for c in columns if c not in folded and any(r.get(c) is not None for r in rows)]
    lines = [f"# {title}", ""]
    if notes:
        lines += [*notes, ""]
    if any((r.get("runs") or 1) > 1 for r in rows):
        lines += ["Times and ratios: the median over a cell's runs (min-max); ratios are "
                  "ours (q replies) over the strict floor, the expectation and the reference.",
                  ""]
    lines += ["| " + " | ".join(shown) + " |", "|" + "|".join("---:" for _ in shown) + "|"]
    for r in rows:
        cells = []
        for c in shown:
            text = _fmt(r.get(c))
            lo, hi = r.get(f"{c}_min"), r.get(f"{c}_max")
            if c in RANGED and (r.get("runs") or 1) > 1 and lo is not None and hi is not None:
                text += f" ({_fmt(lo)}-{_fmt(hi)})"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def human_seconds(seconds: float | None) -> str:
    """A duration as a person reads it: '0.4 ms', '12 ms', '1.23 s', '2.5 min'."""
    if seconds is None:
        return "-"
    if seconds < 0.001:
        return f"{seconds * 1000:.2f} ms"
    if seconds < 0.1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.3g} s"
    return f"{seconds / 60:.1f} min"


def human_network(bandwidth_mbps: float, latency_ms: float) -> str:
    """'10 Mbps, 50 ms', 'unlimited, 20 ms' or 'unshaped'."""
    if not bandwidth_mbps and not latency_ms:
        return "unshaped"
    rate = f"{bandwidth_mbps:g} Mbps" if bandwidth_mbps else "unlimited"
    return f"{rate}, {latency_ms:g} ms"


def _label(row: dict[str, Any]) -> str:
    return (f"n={row['nodes']}, {row['tx']} tx\n"
            f"{human_network(row['bandwidth_mbps'], row['latency_ms'])}")


SERIES = (("seconds_f1", "ours: f+1 replies (client commit)"),
          ("seconds_2f1", "ours: q replies (reference's rule)"),
          ("latency_floor_s", "strict floor (no run can beat it)"),
          ("latency_expected_s", "expectation under the latency model"),
          ("reference_seconds", "reference (published)"))
RATIOS = (("ours_over_expected", "ours / expectation", "tab:gray"),
          ("ours_over_floor", "ours / strict floor", "tab:olive"))
OTHER = "queueing/other"


def phase_shares(row: dict[str, Any]) -> list[tuple[str, float]] | None:
    """The whole measured time (the client's f+1 time) split into the per-batch phases the
    nodes measured and what they do not cover: batches waiting behind others, the client,
    the network outside a phase. Returns (part, seconds) summing to the measured time."""
    total = row.get("seconds_f1")
    if not total:
        return None
    parts = [(p, (row.get(f"phase_{p}_ms") or 0.0) / 1000) for p in PHASE_ORDER]
    covered = sum(v for _, v in parts)
    if covered > total:  # means over nodes can overlap the client's clock: scale to fit
        parts = [(p, v * total / covered) for p, v in parts]
        covered = total
    return [*parts, (OTHER, total - covered)]


def _plots(rows: Sequence[dict[str, Any]], out_dir: Path, stem: str, title: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = out_dir / f"{stem}.png"
    fig = times_figure(rows, title)
    fig.savefig(main, dpi=110)
    plt.close(fig)
    paths = [main]
    fig = phases_figure(rows, title)
    if fig is not None:
        phases = out_dir / f"{stem}-phases.png"
        fig.savefig(phases, dpi=110)
        plt.close(fig)
        paths.append(phases)
    return paths


def _ratio(row: dict[str, Any], key: str) -> float | None:
    if row.get(key) is not None:
        return row[key]
    against = {"ours_over_expected": "latency_expected_s",
               "ours_over_floor": "latency_floor_s"}[key]
    ours, ref = row.get("seconds_2f1"), row.get(against)
    return ours / ref if ours and ref else None


def _whiskers(rows: Sequence[dict[str, Any]], key: str, values: list[float],
              scale: list[float] | None = None) -> list[list[float]] | None:
    """Error bars from `<key>_min`/`<key>_max` (a cell's range over its runs), if any."""
    if not any(r.get(f"{key}_min") is not None and (r.get("runs") or 1) > 1 for r in rows):
        return None
    lo, hi = [], []
    for i, (r, v) in enumerate(zip(rows, values, strict=True)):
        k = scale[i] if scale else 1.0
        a, b = r.get(f"{key}_min"), r.get(f"{key}_max")
        lo.append(max(0.0, v - a * k) if a is not None and v else 0.0)
        hi.append(max(0.0, b * k - v) if b is not None and v else 0.0)
    return [lo, hi]


def times_figure(rows: Sequence[dict[str, Any]], title: str) -> Any:
    """Seconds per cell on a linear axis from zero, each bar labelled in human units (the
    median; whiskers span the runs' range), beside the strict floor and the expectation;
    below it, our time as a multiple of each (the floor's ratio is always >= 1; 1 on the
    expectation = the network's average pace), readable when cells differ by orders of
    magnitude."""
    import matplotlib.pyplot as plt

    labels = [_label(r) for r in rows]
    series = [(k, name) for k, name in SERIES if any(r.get(k) for r in rows)]
    ratio_series = [(k, name, color, [_ratio(r, k) for r in rows]) for k, name, color in RATIOS]
    ratio_series = [s for s in ratio_series if any(v is not None for v in s[3])]
    with_ratio = bool(ratio_series)
    width = 0.8 / max(1, len(series))
    fig, axes = plt.subplots(2 if with_ratio else 1, 1, squeeze=False, layout="constrained",
                             figsize=(max(7.0, 1.5 * len(rows) + 2.5), 7.5 if with_ratio else 4.8),
                             height_ratios=[3, 2] if with_ratio else [1])
    ax = axes[0][0]
    x = list(range(len(rows)))
    tops = []
    for i, (key, name) in enumerate(series):
        values = [r.get(key) or 0.0 for r in rows]
        yerr = _whiskers(rows, key, values)
        bars = ax.bar([p + (i - (len(series) - 1) / 2) * width for p in x], values, width,
                      label=name, yerr=yerr, capsize=2 if yerr else 0)
        tops += [v + (yerr[1][j] if yerr else 0.0) for j, v in enumerate(values)]
        ax.bar_label(bars, [human_seconds(v) if v else "" for v in values], fontsize=7,
                     padding=2, rotation=90 if len(rows) * len(series) > 12 else 0)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("seconds to synchronize")
    ax.set_ylim(0, max([*tops, 1e-3]) * 1.25)
    ax.set_title(f"{title}: time to synchronize")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    if with_ratio:
        rax = axes[1][0]
        rwidth = 0.8 / len(ratio_series)
        rtops = [1.0]
        for i, (key, name, color, ratio) in enumerate(ratio_series):
            values = [v or 0.0 for v in ratio]
            yerr = _whiskers(rows, key, values)
            bars = rax.bar([p + (i - (len(ratio_series) - 1) / 2) * rwidth for p in x], values,
                           rwidth, color=color, label=name, yerr=yerr,
                           capsize=2 if yerr else 0)
            rtops += [v + (yerr[1][j] if yerr else 0.0) for j, v in enumerate(values)]
            rax.bar_label(bars, [f"{v:.2f}x" if v else "-" for v in values], fontsize=7,
                          padding=2)
        rax.axhline(1.0, color="tab:red", linewidth=1, linestyle="--", label="= 1")
        rax.set_ylim(0, max(rtops) * 1.25)
        rax.set_xticks(x, labels, fontsize=8)
        rax.set_ylabel("ours (q replies) / ...")
        rax.set_title("the same, as a multiple of the expectation and of the strict floor",
                      fontsize=10)
        rax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return fig


def phases_figure(rows: Sequence[dict[str, Any]], title: str) -> Any:
    """One bar per cell = 100 % of the measured time (the client's f+1 time), split into
    the nodes' per-batch phases and queueing/other; segments labelled in ms, the total at
    the end of each bar, the legend outside the bars."""
    import matplotlib.pyplot as plt

    shares = [(r, phase_shares(r)) for r in rows]
    shares = [(r, s) for r, s in shares if s is not None]
    if not shares:
        return None
    names = [*PHASE_ORDER, OTHER]
    colors = dict(zip(names, ["tab:blue", "tab:orange", "tab:green", "tab:red",
                              "lightgray"], strict=True))
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.55 * len(shares)), layout="constrained")
    y = list(range(len(shares)))
    left = [0.0] * len(shares)
    for name in names:
        seconds = [dict(s)[name] for _, s in shares]
        totals = [r["seconds_f1"] for r, _ in shares]
        pct = [100 * v / t for v, t in zip(seconds, totals, strict=True)]
        bars = ax.barh(y, pct, left=left, color=colors[name],
                       label=name.replace("_", " ") if name != OTHER else OTHER)
        ax.bar_label(bars, [human_seconds(v) if p >= 7 else "" for v, p in
                            zip(seconds, pct, strict=True)], label_type="center", fontsize=7)
        left = [a + b for a, b in zip(left, pct, strict=True)]
    for yi, (r, _) in zip(y, shares, strict=True):
        ax.text(101, yi, f"= {human_seconds(r['seconds_f1'])}", va="center", fontsize=8)
    ax.set_yticks(y, [_label(r).replace("\n", ", ") for r, _ in shares], fontsize=8)
    ax.set_xlim(0, 112)
    ax.invert_yaxis()  # the first cell on top, as in the table
    ax.set_xticks([0, 20, 40, 60, 80, 100])
    ax.set_xlabel("% of the measured time (until the client holds f+1 replies for "
                  "everything); phases are the nodes' mean per batch")
    ax.set_title(f"{title}: where the time goes")
    fig.legend(fontsize=8, ncols=len(names), loc="outside lower center")
    return fig
