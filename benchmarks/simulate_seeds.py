"""Every Byzantine mode with f faulty replicas, many seeds: the long run of what `make
test` samples (tests/protocol/test_simulator.py runs 200 seeds per cell).

    python -m benchmarks.simulate_seeds [--seeds 10000] [--nodes 4,7] [--modes ...] [--jobs 2]

The scenario is `dtnbus.simulation.scenario.standard` (loss 5 %, duplication 2 %,
reordering, one random partition, one crash-restart, then healing; 2 clients x 2
requests). Prints one row per cell (n x mode) with the violations by kind and the first
failing seeds (each replays with the `dtnbus simulate` command printed for it), and writes
results/simulate-seeds.{csv,md}; results/simulate-seeds-failures.txt lists every failing
seed with its replay command.
"""

from __future__ import annotations

import argparse
import sys

from benchmarks.common import RESULTS, machine, print_table, write_csv
from dtnbus.simulation.scenario import MODES, run_seeds, standard

COLUMNS = ["n", "mode", "seeds", "violations", "kinds", "first_failing", "batches",
           "messages_per_batch", "worst_decide_s", "wall_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10_000)
    parser.add_argument("--first", type=int, default=0, help="first seed")
    parser.add_argument("--nodes", default="4,7")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    rows = []
    failures: list[str] = []
    for n in (int(x) for x in args.nodes.split(",")):
        for mode in args.modes.split(","):
            options = standard(n, mode)
            summary = run_seeds(options, range(args.first, args.first + args.seeds),
                                jobs=args.jobs, explain=0)
            worst = max(summary.decided_after_heal, default=0.0)
            row = {"n": n, "mode": mode, "seeds": summary.seeds,
                   "violations": summary.runs_with_violations,
                   "kinds": " ".join(f"{k}:{v}" for k, v in sorted(summary.violations.items()))
                   or "-",
                   "first_failing": " ".join(map(str, summary.failing_seeds[:6])) or "-",
                   "batches": summary.committed_batches,
                   "messages_per_batch": round(summary.messages_per_batch or 0, 1),
                   "worst_decide_s": round(worst, 2),
                   "wall_s": round(summary.wall_seconds, 1)}
            rows.append(row)
            failures += [f"n={n} {mode} seed {s}: {options.command(s)}"
                         for s in summary.failing_seeds]
            print(f"n={n} {mode}: {row['violations']} of {row['seeds']} seeds violate "
                  f"({row['kinds']}) in {row['wall_s']} s", file=sys.stderr, flush=True)
    print_table(rows, COLUMNS)
    paths = [write_csv("simulate-seeds.csv", rows)]
    md = RESULTS / "simulate-seeds.md"
    md.write_text("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
                  + "".join("| " + " | ".join(str(r[c]) for c in COLUMNS) + " |\n"
                            for r in rows)
                  + f"\n{machine()}; seeds {args.first}..{args.first + args.seeds - 1}; "
                  "scenario dtnbus.simulation.scenario.standard; cheap authenticator.\n")
    paths.append(md)
    listing = RESULTS / "simulate-seeds-failures.txt"
    listing.write_text("\n".join(failures) + ("\n" if failures else ""))
    paths.append(listing)
    for path in paths:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
