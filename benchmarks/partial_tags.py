"""Aardvark's "Big MAC attack" on real nodes: honest clients beside a faulty one that spoils
its MAC authenticator (docs/faults.md, "A faulty client's partial authenticator").

    python -m benchmarks.partial_tags [--nodes 4] [--seconds 40] [--rate 50]
                                      [--curve both|on|off] [--spoil random|primary|current]
                                      [--streams 6] [--window 32]

Each cell is a fresh cluster of real node processes. `--streams` honest `RequestStream`s
(`--window` requests outstanding each, one transaction of 300 B per request) run for 2 s;
then the faulty client (the cluster file's first client, which never signs) sends
`--rate` requests a second to every replica, each with the tags of a random 1..n-1
replicas spoiled (`--spoil primary`: the first primary's tag alone; `current`: the
current primary's), for `--seconds`.
One more cell runs the streams alone. Reported per cell: the honest acknowledgements a
second while the faulty client ran, the longest time in which no honest request was
acknowledged (a stall), the views, the last executed sequence, and the clients each
node distrusts (`dtnbus_distrusted_clients`).
Writes results/partial-tags.csv.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import machine, print_table, write_csv
from dtnbus.bench import load_client_ids
from dtnbus.client import Client, new_session
from dtnbus.cluster import cluster_up, scrape_address, stop_nodes
from dtnbus.config import ClusterConfig
from dtnbus.fuzzrun import scrape
from dtnbus.messages import Request
from dtnbus.simulation.engine import spoil_tags
from dtnbus.stream import RequestStream

SAMPLE = 0.25  # seconds between looks at the honest acknowledgements


def spoiling_client(config: ClusterConfig, rate: float, stop: threading.Event,
                     pattern: str = "random", seed: int = 1) -> int:
    """The faulty client: MAC-tagged requests, `rate` a second, never signed, until
    `stop`, each with a random proper subset of its tags spoiled ("random"), the tag of
    the first primary alone ("primary") or of the current one ("current": it asks the
    cluster's view every second). Returns how many it sent."""
    spec = config.client()
    rng = random.Random(seed)
    n = len(config.nodes)
    sent = 0
    primary, looked = 0, 0.0
    with Client(config, spec.id) as client, Client(config, spec.id) as probe:
        sockets = list(client.sockets.values())
        session = new_session()
        while not stop.is_set():
            if pattern == "current" and time.monotonic() >= looked + 1.0:
                looked = time.monotonic()
                views = [s.view for s in probe.status(0.5).values()]
                primary = max(views, default=0) % n
            sent += 1
            frame, _ = client.codec.encode_request(
                Request(spec.id, session, sent, (b"spoiled-%d" % sent,)), "mac")
            spoiled = ([primary] if pattern in ("primary", "current")
                       else rng.sample(range(n), rng.randint(1, n - 1)))
            frame = spoil_tags(frame, spoiled)
            for sock in sockets:
                sock.send(frame)
            stop.wait(1.0 / rate)
    return sent


def run_cell(nodes: int, seconds: float, rate: float, curve: bool, streams: int,
             window: int, pattern: str = "random") -> dict:
    """One cluster, one attack (rate 0: none); the cell's row."""
    directory = Path(tempfile.mkdtemp(prefix="partial-tags-"))
    config = cluster_up(directory, nodes, fresh=True, extra_clients=streams, curve=curve)
    stop = threading.Event()
    sent: list[int] = []
    attack = threading.Thread(
        target=lambda: sent.append(spoiling_client(config, rate, stop, pattern)))
    honest = [RequestStream(config, window=window, client_id=c).start()
              for c in load_client_ids(streams)]
    try:
        time.sleep(2.0)  # the honest streams at their pace first
        if rate > 0:
            attack.start()
        start = last_change = time.monotonic()
        first = last = sum(s.accepted_count() for s in honest)
        longest_gap = 0.0
        while (now := time.monotonic()) < start + seconds:
            time.sleep(SAMPLE)
            count = sum(s.accepted_count() for s in honest)
            now = time.monotonic()
            if count != last:
                last, last_change = count, now
            longest_gap = max(longest_gap, now - last_change)
        elapsed = time.monotonic() - start
        stop.set()
        if rate > 0:
            attack.join()
        with Client(config) as probe:
            status = probe.status(2.0)
        distrusted = [int(scrape(scrape_address(spec)).get(
            ("dtnbus_distrusted_clients", ()), 0.0)) for spec in config.nodes]
    finally:
        stop.set()
        for s in honest:
            s.stop()
        stop_nodes(directory)
        shutil.rmtree(directory, ignore_errors=True)
    return {
        "nodes": nodes, "curve": curve, "faulty_rate": rate,
        "spoiled": pattern if rate > 0 else "-",
        "spoiled_sent": sent[0] if sent else 0, "seconds": round(elapsed, 1),
        "honest_acks_per_s": round((last - first) / elapsed),
        "longest_stall_s": round(longest_gap, 2),
        "views": ",".join(str(v) for v in sorted({s.view for s in status.values()})),
        "last_executed": max((s.last_executed for s in status.values()), default=0),
        "distrusted": ",".join(map(str, distrusted)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--rate", type=float, default=50.0, help="spoiled requests a second")
    parser.add_argument("--curve", choices=["both", "on", "off"], default="both")
    parser.add_argument("--spoil", choices=["random", "primary", "current"],
                        default="random",
                        help="which tags: a random proper subset per request, the first "
                             "primary's alone, or the current primary's alone")
    parser.add_argument("--streams", type=int, default=6)
    parser.add_argument("--window", type=int, default=32)
    args = parser.parse_args()
    print(f"dtnbus partial tags ({machine()})")
    curves = {"both": [False, True], "on": [True], "off": [False]}[args.curve]
    cells = [(False, 0.0)] + [(curve, args.rate) for curve in curves]
    rows = []
    for curve, rate in cells:
        row = run_cell(args.nodes, args.seconds, rate, curve, args.streams, args.window,
                       args.spoil)
        print(f"n={row['nodes']} curve={curve} faulty {rate:g}/s: "
              f"{row['honest_acks_per_s']} honest acks/s, longest stall "
              f"{row['longest_stall_s']} s, views {row['views']}", flush=True)
        rows.append(row)
    print_table(rows, list(rows[0]))
    print(f"wrote {write_csv('partial-tags.csv', rows)}")


if __name__ == "__main__":
    main()
