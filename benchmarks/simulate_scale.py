"""How far the simulator scales: n replicas (the real Replica code, in one process) commit
one batch; wall seconds, virtual seconds, messages, peak memory.

    python -m benchmarks.simulate_scale [--nodes 10,100,300,1000] [--authenticator mac]

Each size runs in its own process (`dtnbus simulate --json`), so its peak RSS and CPU
time are its own (CPU time says what the run costs when the machine is shared).
Writes results/simulate-scale.{csv,md,png}. The target of issue 11: 1,000 replicas commit
one batch in under 60 s on this machine (2 vCPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks.common import RESULTS, machine, print_table, write_csv

COLUMNS = ["authenticator", "replicas", "wall_s", "cpu_s", "virtual_s", "messages",
           "messages_per_batch", "protocol_messages_per_batch", "per_replica", "peak_rss_mb"]


def run_one(nodes: int, authenticator: str) -> dict:
    """One batch at `nodes` replicas, in a child process; its wall time and peak RSS."""
    args = [sys.executable, "-m", "dtnbus", "simulate", "--nodes", str(nodes), "--requests",
            "1", "--duration", "0", "--authenticator", authenticator, "--json"]
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out = proc.stdout.read() if proc.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        err = proc.stderr.read() if proc.stderr else ""
        raise SystemExit(f"n={nodes}: dtnbus simulate failed: {out[-500:]} {err[-500:]}")
    result = json.loads(out.strip().splitlines()[-1])
    batches = result["committed_batches"] or 1
    by_kind = result["messages_by_kind"]
    protocol = sum(v for k, v in by_kind.items() if k != "PeerStatus")
    return {"authenticator": authenticator, "replicas": nodes, "wall_s": round(wall, 2),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "virtual_s": result["last_execute_virtual_seconds"],
            "messages": result["messages"],
            "messages_per_batch": result["messages"] // batches,
            "protocol_messages_per_batch": protocol // batches,
            "per_replica": round(protocol / batches / nodes, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def chart(rows: list[dict]) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    for auth in sorted({r["authenticator"] for r in rows}):
        mine = [r for r in rows if r["authenticator"] == auth]
        xs = [r["replicas"] for r in mine]
        ax.plot(xs, [r["wall_s"] for r in mine], "o-", label=f"wall s ({auth})")
        ax.plot(xs, [r["cpu_s"] for r in mine], "x:", label=f"CPU s ({auth})")
        bx.plot(xs, [r["messages_per_batch"] for r in mine], "o-", label=f"all ({auth})")
        bx.plot(xs, [r["protocol_messages_per_batch"] for r in mine], "s--",
                label=f"without status heartbeats ({auth})")
    ax.axhline(60, color="grey", linestyle=":", label="target: 60 s at n = 1000")
    for a in (ax, bx):
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("replicas (n)")
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=8)
    ax.set_ylabel("seconds to commit one batch")
    bx.set_ylabel("messages per committed batch")
    fig.suptitle(f"dtnbus simulate: one batch, real Replica code ({machine()})", fontsize=10)
    fig.tight_layout()
    path = RESULTS / "simulate-scale.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="10,100,300,1000")
    parser.add_argument("--authenticator", default="mac",
                        help="mac, ed25519, or both (comma list)")
    args = parser.parse_args()
    sizes = [int(x) for x in args.nodes.split(",")]
    auths = ["mac", "ed25519"] if args.authenticator == "both" else \
        args.authenticator.split(",")
    rows = []
    for auth in auths:
        for n in sizes:
            row = run_one(n, auth)
            print(f"n={n} ({auth}): {row['wall_s']} s", file=sys.stderr, flush=True)
            rows.append(row)
    print_table(rows, COLUMNS)
    paths = [str(write_csv("simulate-scale.csv", rows))]
    md = RESULTS / "simulate-scale.md"
    md.write_text("| " + " | ".join(COLUMNS) + " |\n|" + "---:|" * len(COLUMNS) + "\n"
                  + "".join("| " + " | ".join(str(r[c]) for c in COLUMNS) + " |\n" for r in rows)
                  + f"\n{machine()}; one batch of one request, links 10 ms, no faults.\n")
    paths.append(str(md))
    png = chart(rows)
    if png:
        paths.append(png)
    for path in paths:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
