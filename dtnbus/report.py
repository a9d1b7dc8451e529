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
           *(f"phase_{p}_ms" for p in PHASE_ORDER), "ledgers_identical")


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


def _label(row: dict[str, Any]) -> str:
    shaped = (f"{row['bandwidth_mbps']:g}Mb/{row['latency_ms']:g}ms"
              if row["bandwidth_mbps"] or row["latency_ms"] else "unshaped")
    return f"n={row['nodes']} tx={row['tx']}\n{shaped}"


def _plots(rows: Sequence[dict[str, Any]], out_dir: Path, stem: str, title: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [_label(r) for r in rows]
    x = range(len(rows))
    series = [("seconds_2f1", "ours (2f+1)"), ("seconds_f1", "ours (f+1)"),
              ("bound_seconds", "analytic bound"), ("reference_seconds", "reference")]
    series = [(k, name) for k, name in series if any(r.get(k) for r in rows)]
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows) + 2), 4.5))
    for i, (key, name) in enumerate(series):
        ax.bar([p + i * width for p in x], [r.get(key) or 0 for r in rows], width, label=name)
    ax.set_xticks([p + width * (len(series) - 1) / 2 for p in x], labels, fontsize=7)
    ax.set_ylabel("seconds to synchronize")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    main = out_dir / f"{stem}.png"
    fig.savefig(main, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.45 * len(rows) + 1)))
    left = [0.0] * len(rows)
    for phase in PHASE_ORDER:
        values = [r.get(f"phase_{phase}_ms") or 0.0 for r in rows]
        ax.barh(list(x), values, left=left, label=phase)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set_yticks(list(x), [lbl.replace("\n", " ") for lbl in labels], fontsize=7)
    ax.set_xlabel("mean ms per batch (nodes' own phase histograms)")
    ax.set_title(f"{title}: where the time goes")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    phases = out_dir / f"{stem}-phases.png"
    fig.savefig(phases, dpi=110)
    plt.close(fig)
    return [main, phases]
