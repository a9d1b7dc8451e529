"""Sync results as files a researcher keeps: CSV, a markdown table, and PNG charts.

One row per sync run (one cell of a grid). The columns are the same in the CSV and
the markdown, and the phase times are the nodes' own metrics, so what lands in
results/ and what Grafana shows agree.
"""

from __future__ import annotations

import contextlib
import csv
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dtnbus.sync import PHASE_ORDER, SyncResult

COLUMNS = ("nodes", "tx", "tx_bytes", "bandwidth_mbps", "latency_ms", "latency_dist",
           "tentative", "seconds_f1", "seconds_2f1", "seconds_all", "seconds_2f1_committed",
           "bound_seconds", "bound_dominant",
           "ours_over_bound", "reference_seconds", "ours_over_reference",
           *(f"phase_{p}_ms" for p in PHASE_ORDER), "phase_other_ms", "ledgers_identical")


def result_row(result: SyncResult, reference: float | None = None,
               **extra: Any) -> dict[str, Any]:
    """One flat row; `reference` is the reference system's published figure, if any."""
    ours = result.seconds_2f1
    row: dict[str, Any] = {
        "nodes": result.nodes, "tx": result.tx, "tx_bytes": result.tx_bytes,
        "bandwidth_mbps": result.bandwidth_mbps, "latency_ms": result.latency_ms,
        "latency_dist": result.extra.get("latency_dist", "constant"),
        "tentative": result.tentative,
        "seconds_f1": result.seconds_f1, "seconds_2f1": ours,
        "seconds_all": result.seconds_all, "bound_seconds": result.bound_seconds,
        "seconds_2f1_committed": result.seconds_2f1_committed,
        "bound_dominant": result.bound_dominant,
        "ours_over_bound": (ours / result.bound_seconds
                            if ours and result.bound_seconds else None),
        "reference_seconds": reference,
        "ours_over_reference": ours / reference if ours and reference else None,
        "ledgers_identical": result.ledgers_identical,
        "retransmissions": result.retransmissions,
    }
    for phase in PHASE_ORDER:
        secs = result.phases.get(phase)
        row[f"phase_{phase}_ms"] = None if secs is None else secs * 1000
    shares = phase_shares(row)
    row["phase_other_ms"] = dict(shares)[OTHER] * 1000 if shares else None
    row.update(extra)
    return row


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def write_results(rows: Sequence[dict[str, Any]], out_dir: Path, stem: str | None = None,
                  title: str = "dtnbus sync") -> list[Path]:
    """Write `<stem>.csv`, `<stem>.md` and `<stem>.png` (+ `<stem>-phases.png`)."""
    if not rows:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or time.strftime("sync-%Y%m%d-%H%M%S")
    columns = list(dict.fromkeys([*COLUMNS, *(k for r in rows for k in r)]))
    csv_path = out_dir / f"{stem}.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    md_path = out_dir / f"{stem}.md"
    shown = [c for c in columns if any(r.get(c) is not None for r in rows)]
    lines = [f"# {title}", "", "| " + " | ".join(shown) + " |",
             "|" + "|".join("---:" for _ in shown) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in shown) + " |" for r in rows]
    md_path.write_text("\n".join(lines) + "\n")
    paths = [csv_path, md_path]
    with contextlib.suppress(ImportError):  # matplotlib is a dev extra; CSV and md suffice
        paths += _plots(rows, out_dir, stem, title)
    return paths


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
          ("bound_seconds", "analytic lower bound"),
          ("reference_seconds", "reference (published)"))
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


def times_figure(rows: Sequence[dict[str, Any]], title: str) -> Any:
    """Seconds per cell on a linear axis from zero, each bar labelled in human units; below
    it, where a bound exists, our time as a multiple of the bound (1 = as fast as the
    emulated network allows), which stays readable when cells differ by orders of
    magnitude."""
    import matplotlib.pyplot as plt

    labels = [_label(r) for r in rows]
    series = [(k, name) for k, name in SERIES if any(r.get(k) for r in rows)]
    ratios = [(r["seconds_2f1"] / r["bound_seconds"]) if r.get("seconds_2f1")
              and r.get("bound_seconds") else None for r in rows]
    with_ratio = any(v is not None for v in ratios)
    width = 0.8 / max(1, len(series))
    fig, axes = plt.subplots(2 if with_ratio else 1, 1, squeeze=False, layout="constrained",
                             figsize=(max(7.0, 1.5 * len(rows) + 2.5), 7.5 if with_ratio else 4.8),
                             height_ratios=[3, 2] if with_ratio else [1])
    ax = axes[0][0]
    x = list(range(len(rows)))
    for i, (key, name) in enumerate(series):
        values = [r.get(key) or 0.0 for r in rows]
        bars = ax.bar([p + (i - (len(series) - 1) / 2) * width for p in x], values, width,
                      label=name)
        ax.bar_label(bars, [human_seconds(v) if v else "" for v in values], fontsize=7,
                     padding=2, rotation=90 if len(rows) * len(series) > 12 else 0)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("seconds to synchronize")
    ax.set_ylim(0, max([*(r.get(k) or 0 for r in rows for k, _ in series), 1e-3]) * 1.25)
    ax.set_title(f"{title}: time to synchronize")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    if with_ratio:
        rax = axes[1][0]
        values = [v or 0.0 for v in ratios]
        bars = rax.bar(x, values, 0.5, color="tab:gray")
        rax.bar_label(bars, [f"{v:.2f}x" if v else "-" for v in values], fontsize=8, padding=2)
        rax.axhline(1.0, color="tab:red", linewidth=1, linestyle="--", label="= the bound")
        rax.set_ylim(0, max([*values, 1.0]) * 1.25)
        rax.set_xticks(x, labels, fontsize=8)
        rax.set_ylabel("ours (q replies) / bound")
        rax.set_title("the same, as a multiple of the analytic lower bound", fontsize=10)
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
