"""Floods against real nodes: from one member (every kind), and from clients (10x capacity).

    python -m benchmarks.flood [--member-kinds all|KIND,...] [--count 10000]
                               [--ledger-txs 20000] [--client-seconds 60] [--factor 10]
                               [--skip-member] [--skip-client]

Member floods (`dtnbus.flood.run_member_floods`): node 3 is played by a rogue holding its
key; for each kind, `count` frames to each honest node as fast as they are taken, then
the patient variants (StateRequest and Fetch at their budget's rate for 10 s). Per kind:
RSS before and at peak on the honest nodes, client acknowledgements per second before
and during, drops by reason counted against member 3. Client flood
(`run_client_flood`): capacity measured closed-loop, then open-loop clients offering
`factor` times it for `client-seconds`; peak RSS, BUSY answers, throughput during and
after, every acknowledged request checked in every ledger. Writes
results/flood-member.csv, results/flood-client.csv and results/flood.png. Every run
stops a flood whose node passes 1 GiB of RSS (the machine is shared).
"""

from __future__ import annotations

import argparse
import contextlib
import json

from benchmarks.common import RESULTS, machine, print_table, write_csv
from dtnbus.flood import KindResult, run_client_flood, run_member_floods
from dtnbus.rogue import FLOOD_KINDS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--member-kinds", default="all")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--ledger-txs", type=int, default=20_000)
    parser.add_argument("--client-seconds", type=float, default=60.0)
    parser.add_argument("--factor", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--skip-member", action="store_true")
    parser.add_argument("--skip-client", action="store_true")
    args = parser.parse_args()
    kinds = FLOOD_KINDS if args.member_kinds == "all" else tuple(args.member_kinds.split(","))
    print(f"dtnbus floods ({machine()})", flush=True)
    failed = False
    rows: list[dict] = []
    if not args.skip_member:
        fast = run_member_floods(kinds, count=args.count, ledger_txs=args.ledger_txs,
                                 log=lambda line: print(line, flush=True))
        rows += [_row(k, "as fast as taken", fast.ledger_txs) for k in fast.kinds]
        patient_kinds = tuple(k for k in ("state_request", "fetch") if k in kinds)
        patient = run_member_floods(patient_kinds, count=250, ledger_txs=args.ledger_txs // 4,
                                    rate=25.0, stream_txs=16,
                                    log=lambda line: print(line, flush=True)) \
            if patient_kinds else None
        if patient is not None:
            rows += [_row(k, "25/s for 10 s", patient.ledger_txs) for k in patient.kinds]
        print_table(rows, ["kind", "pace", "count", "seconds", "rss_before_mib",
                           "rss_peak_mib", "growth_mib", "acks_per_s_before",
                           "acks_per_s_during", "progress_s", "drops_member_3"])
        print(f"wrote {write_csv('flood-member.csv', rows)}")
        for result in (fast, patient):
            if result is not None and result.violations:
                failed = True
                print("member flood violations:\n  " + "\n  ".join(result.violations))
    client = None
    if not args.skip_client:
        client = run_client_flood(seconds=args.client_seconds, factor=args.factor,
                                  clients=args.clients,
                                  log=lambda line: print(line, flush=True))
        data = client.to_json()
        data["rss_before_mib"] = max(client.rss_before_mib.values())
        data["rss_peak_mib"] = max(client.rss_peak_mib.values())
        print(json.dumps({k: v for k, v in data.items() if k != "directory"}, indent=1,
                         default=str))
        print(f"wrote {write_csv('flood-client.csv', [data])}")
        if client.violations:
            failed = True
            print("client flood violations:\n  " + "\n  ".join(client.violations))
    with contextlib.suppress(ImportError):
        if rows:
            print(f"wrote {_chart(rows)}")
    if failed:
        raise SystemExit(1)


def _row(k: KindResult, pace: str, ledger_txs: int) -> dict:
    return {"kind": k.kind, "pace": pace, "count": k.sent, "ledger_txs": ledger_txs,
            "seconds": round(k.seconds, 2),
            "rss_before_mib": round(max(k.rss_before_mib.values()), 1),
            "rss_peak_mib": round(max(k.rss_peak_mib.values()), 1),
            "growth_mib": round(k.growth_mib, 1),
            "acks_per_s_before": round(k.rate_before, 1),
            "acks_per_s_during": round(k.rate_during, 1),
            "progress_s": None if k.progress_seconds is None else round(k.progress_seconds, 3),
            "drops_member_3": " ".join(f"{r}={c}" for r, c in sorted(k.member_drops[0].items())),
            "taken": k.taken[0], "internal_errors": k.internal_errors}


def _chart(rows: list[dict]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    labels = [f"{r['kind']}\n({r['pace'].split()[0]})" for r in rows]
    ax.bar(range(len(rows)), [r["growth_mib"] for r in rows], color="tab:red")
    ax.axhline(64, color="grey", ls="--", lw=1, label="test bound (64 MiB)")
    ax.set_xticks(range(len(rows)), labels, rotation=60, fontsize=7)
    ax.set_ylabel("honest node RSS growth (MiB, peak)")
    ax.set_title("one member's flood, per kind: what it costs an honest node")
    ax.legend()
    fig.tight_layout()
    path = RESULTS / "flood.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


if __name__ == "__main__":
    main()
