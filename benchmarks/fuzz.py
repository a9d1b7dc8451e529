"""Fuzz real nodes with 1,000,000 hostile frames and account for every one.

    python -m benchmarks.fuzz [--frames 1000000] [--seed 0] [--no-view-change]

One 4-node cluster; frames captured from it (through a view change and a restart unless
--no-view-change), mutated (`dtnbus.fuzzing`) and sent to nodes 0-2 over their ROUTER (as
a client and as a replica) and their SUB (from node 3's PUB endpoint, bound by a rogue
holding node 3's key), then garbage below the frame level at every bound port
(`dtnbus.fuzzrun`). Prints what the decoder and the nodes made of them, per node: frames
delivered and counted, drops by reason; writes results/fuzz.csv (one row per node and
reason) and results/fuzz.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

from benchmarks.common import RESULTS, machine, print_table, write_csv
from dtnbus.fuzzrun import FuzzPlan, FuzzResult, run_fuzz


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--raw", type=int, default=300,
                        help="raw TCP connections per node and port")
    parser.add_argument("--no-view-change", action="store_true",
                        help="capture without killing the primary (no real VIEW-CHANGEs)")
    args = parser.parse_args()
    started = time.monotonic()
    plan = FuzzPlan(frames=args.frames, seed=args.seed, raw_connections=args.raw,
                    oversized=2, capture_view_change=not args.no_view_change, chunk=20_000)
    result = run_fuzz(plan, log=lambda line: print(line, flush=True))
    wall = time.monotonic() - started
    print(f"dtnbus fuzz, {args.frames:,} frames, seed {args.seed} ({machine()})")
    print(f"corpus kinds: {', '.join(result.corpus_kinds)} "
          f"(captured off the wire: {', '.join(result.captured_kinds)})")
    print(f"paths: {result.by_path}")
    print(f"mutations: {result.by_mutation}")
    print(f"decoder alone: {result.parse_verdicts}; well-signed (re-signed by the rogue): "
          f"{result.well_signed}")
    rows = []
    for node in sorted(result.delivered):
        rows.append({"node": node, "delivered": result.delivered[node],
                     "counted": result.counted[node], **result.drops[node],
                     "received_unneeded": sum(result.received[node].values())})
    reasons = sorted({r for d in result.drops.values() for r in d})
    print_table(rows, ["node", "delivered", "counted", *reasons, "received_unneeded"])
    print(f"raw garbage: {result.raw_connections} connections, frames libzmq made of it: "
          f"{result.raw_frames}")
    print(f"fuzz: {result.fuzz_seconds:.1f} s ({result.frames_per_second:,.0f} frames/s "
          f"to each of 3 nodes); afterwards {result.committed_after} requests committed, "
          f"ledgers agree: {result.ledgers_agree}; wall {wall:.0f} s")
    print("every check held" if result.ok else "VIOLATIONS:\n  " + "\n  ".join(result.violations))
    csv_rows = [{"node": n, "reason": r, "frames": c, "seed": args.seed, "frames_sent": args.frames}
                for n, d in sorted(result.drops.items()) for r, c in sorted(d.items())]
    csv_rows += [{"node": n, "reason": f"received:{k}", "frames": c, "seed": args.seed,
                  "frames_sent": args.frames}
                 for n, d in sorted(result.received.items()) for k, c in sorted(d.items())]
    print(f"wrote {write_csv('fuzz.csv', csv_rows)}")
    (RESULTS / "fuzz.json").write_text(json.dumps(result.to_json(), indent=1, default=str))
    with contextlib.suppress(ImportError):
        print(f"wrote {_chart(result)}")
    if not result.ok:
        raise SystemExit(1)


def _chart(result: FuzzResult) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    reasons = sorted({r for d in result.drops.values() for r in d})
    width = 0.8 / max(1, len(result.drops))
    for i, (node, drops) in enumerate(sorted(result.drops.items())):
        ax.bar([x + i * width for x in range(len(reasons))], [drops.get(r, 0) for r in reasons],
               width, label=f"node {node}")
    ax.set_xticks([x + width for x in range(len(reasons))], reasons, rotation=20)
    ax.set_yscale("log")
    ax.set_ylabel("frames dropped")
    ax.set_title(f"{result.frames:,} fuzzed frames: what each node dropped them for")
    ax.legend()
    fig.tight_layout()
    path = RESULTS / "fuzz.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


if __name__ == "__main__":
    main()
