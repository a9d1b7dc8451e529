"""Unshaped throughput: committed transactions per second at n = 4 and 16.

    python -m benchmarks.throughput [--nodes 4 16] [--tx 50000] [--repeat 3]

Each run starts a fresh local cluster of real node processes (not timed), offers
TX transactions of 300 bytes at once in signed requests of 256, and divides TX by
the time until 2f+1 nodes have executed them all (replies are sent only after the
block is durable). The median of --repeat runs is reported; CSV in results/.
"""

from __future__ import annotations

import argparse
import statistics

from benchmarks.common import machine, print_table, write_csv
from dtnbus.sync import synchronize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--tx", type=int, default=50_000)
    parser.add_argument("--tx-bytes", type=int, default=300)
    parser.add_argument("--request-txs", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for n in args.nodes:
        runs = [synchronize(n, args.tx, tx_bytes=args.tx_bytes, request_txs=args.request_txs)
                for _ in range(args.repeat)]
        t2 = statistics.median(r.seconds_2f1 or float("inf") for r in runs)
        t1 = statistics.median(r.seconds_f1 or float("inf") for r in runs)
        rows.append({
            "nodes": n, "tx": args.tx, "tx_bytes": args.tx_bytes, "runs": args.repeat,
            "seconds_f1": t1, "seconds_2f1": t2, "tx_per_s_2f1": args.tx / t2,
            "mb_per_s_2f1": args.tx * args.tx_bytes / t2 / 1e6,
            "identical_ledgers": all(r.ledgers_identical for r in runs),
        })
    print(f"dtnbus throughput, unshaped, loopback ({machine()})")
    print_table(rows, ["nodes", "tx", "seconds_f1", "seconds_2f1", "tx_per_s_2f1",
                       "mb_per_s_2f1", "identical_ledgers"])
    print(f"wrote {write_csv('throughput.csv', rows)}")


if __name__ == "__main__":
    main()
