"""What CurveZMQ costs: `dtnbus sync` with and without --curve, and the socket-level costs.

    python -m benchmarks.curve_cost [--repeat 5] [--part sync|sockets|all]

sync: each cell (n = 4 and 16 unshaped with 100 and 1000 tx; n = 10, 100 tx, 30 Mbps,
300 ms shaped) runs --repeat times with CURVE and as many without, alternating
(curve, plain, curve, ...) so that drift of a shared machine falls on both alike. Each
run is a fresh cluster of real node processes (start-up not timed). Reported: median
(min-max) of the time to f+1 matching replies and to a commit quorum, and the ratio of
the medians.

sockets: in one process over loopback TCP, with and without CURVE: a DEALER/ROUTER
round trip (200 B and 20 kB), one-way throughput (200 B and 64 KiB), and the time from
connect() to the first delivered frame (a handshake, ZAP included), with our ZAP
thread (dtnbus.zap) and with pyzmq's ThreadAuthenticator for comparison.

Writes results/curve_cost_sync.csv, results/curve_cost_sockets.csv and a markdown
table of both to results/curve_cost.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import zmq

from benchmarks.common import RESULTS, machine, print_table, write_csv
from dtnbus.curve import DOMAIN_MEMBERS, CurveEnd, serve
from dtnbus.sync import synchronize
from dtnbus.zap import ZapGuard

# (nodes, tx, Mbps, ms)
SYNC_CELLS = [(4, 100, 0.0, 0.0), (4, 1000, 0.0, 0.0), (16, 100, 0.0, 0.0),
              (16, 1000, 0.0, 0.0), (10, 100, 30.0, 300.0)]


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def bench_sync(repeat: int, cells: list[tuple[int, int, float, float]]) -> list[dict]:
    rows = []
    for n, tx, mbps, ms in cells:
        times: dict[bool, dict[str, list[float]]] = {
            c: {"f1": [], "2f1": []} for c in (True, False)}
        for i in range(repeat):
            for curve in (True, False) if i % 2 == 0 else (False, True):
                r = synchronize(n, tx, mbps, ms, curve=curve, wait_all=5.0)
                if not r.ledgers_identical or r.seconds_f1 is None or r.seconds_2f1 is None:
                    raise SystemExit(f"n={n} tx={tx} curve={curve}: run failed ({r.ledger_error})")
                times[curve]["f1"].append(r.seconds_f1)
                times[curve]["2f1"].append(r.seconds_2f1)
        shaped = f"{mbps:g} Mbps, {ms:g} ms" if mbps or ms else "unshaped"
        med = {c: statistics.median(times[c]["2f1"]) for c in (True, False)}
        rows.append({
            "nodes": n, "tx": tx, "network": shaped, "runs": repeat,
            "plain_f1_s": _spread(times[False]["f1"]), "curve_f1_s": _spread(times[True]["f1"]),
            "plain_2f1_s": _spread(times[False]["2f1"]),
            "curve_2f1_s": _spread(times[True]["2f1"]),
            "curve_over_plain_2f1": med[True] / med[False],
        })
        print(f"  n={n} tx={tx} {shaped}: 2f+1 plain {rows[-1]['plain_2f1_s']} "
              f"curve {rows[-1]['curve_2f1_s']}", flush=True)
    return rows


# ---------------------------------------------------------------- socket level


class Pair:
    """A ROUTER (server) and a DEALER (client) on loopback, optionally under CURVE."""

    def __init__(self, curve: bool, authenticator: str = "dtnbus") -> None:
        self.ctx = ctx = zmq.Context()  # one each: the ZAP endpoint is per context
        self.guard: ZapGuard | None = None
        self.auth = None
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        for sock_opt in (zmq.SNDHWM, zmq.RCVHWM):
            self.router.setsockopt(sock_opt, 0)
        self.keys = zmq.curve_keypair(), zmq.curve_keypair()
        (spub, ssec), (cpub, _csec) = self.keys
        if curve:
            end = CurveEnd("node:0", spub, ssec, {0: spub}, {cpub: "client:c"})
            serve(self.router, end, DOMAIN_MEMBERS)
            if authenticator == "dtnbus":
                self.guard = ZapGuard(ctx, end)
                self.guard.watch(self.router, "ROUTER")
                self.guard.start()
            else:
                from zmq.auth.thread import ThreadAuthenticator

                class Keys:
                    def callback(self, domain: str, key: bytes) -> bool:
                        return key == cpub

                self.auth = ThreadAuthenticator(ctx)
                self.auth.start()
                self.auth.configure_curve_callback(DOMAIN_MEMBERS, Keys())
        self.port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.curve = curve

    def dealer(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        if self.curve:
            (spub, _), (cpub, csec) = self.keys
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = spub, cpub, csec
        sock.connect(f"tcp://127.0.0.1:{self.port}")
        return sock

    def close(self) -> None:
        if self.guard is not None:
            self.guard.stop()
        if self.auth is not None:
            self.auth.stop()
        self.router.close(linger=0)
        self.ctx.destroy(linger=0)


def _round_trip_us(pair: Pair, size: int, count: int) -> float:
    dealer = pair.dealer()
    payload = b"x" * size
    for _ in range(200):  # warm-up, handshake included
        dealer.send(payload)
        ident, msg = pair.router.recv_multipart()
        pair.router.send_multipart([ident, msg])
        dealer.recv()
    samples = []
    for _ in range(count):
        t0 = time.perf_counter_ns()
        dealer.send(payload)
        ident, msg = pair.router.recv_multipart()
        pair.router.send_multipart([ident, msg])
        dealer.recv()
        samples.append((time.perf_counter_ns() - t0) / 1000)
    dealer.close(linger=0)
    return statistics.median(samples)


def _throughput(pair: Pair, size: int, count: int) -> float:
    dealer = pair.dealer()
    payload = b"x" * size
    dealer.send(payload)
    pair.router.recv_multipart()  # connected, handshake done
    t0 = time.perf_counter()
    for _ in range(count):
        dealer.send(payload, copy=size < 65536)
    for _ in range(count):
        pair.router.recv_multipart(copy=False)
    elapsed = time.perf_counter() - t0
    dealer.close(linger=0)
    return count / elapsed


def _handshake_ms(pair: Pair, count: int) -> float:
    samples = []
    for _ in range(count):
        t0 = time.perf_counter_ns()
        dealer = pair.dealer()
        dealer.send(b"hello")
        pair.router.recv_multipart()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
        dealer.close(linger=0)
    return statistics.median(samples)


def _median_of(repeat: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(repeat))


def bench_sockets(repeat: int) -> list[dict]:
    rows = []
    setups = [("plain", False, "dtnbus"), ("curve (dtnbus.zap)", True, "dtnbus"),
              ("curve (ThreadAuthenticator)", True, "pyzmq")]
    for name, curve, auth in setups:
        def fresh(curve: bool = curve, auth: str = auth) -> Pair:
            return Pair(curve, auth)

        def measured(fn: Callable[[Pair], float]) -> float:
            def once() -> float:
                pair = fresh()
                try:
                    return fn(pair)
                finally:
                    pair.close()
            return _median_of(repeat, once)

        t_start = time.perf_counter()
        fresh().close()
        setup_ms = (time.perf_counter() - t_start) * 1000
        rows.append({
            "setup": name,
            "rtt_200B_us": measured(lambda p: _round_trip_us(p, 200, 3000)),
            "rtt_20kB_us": measured(lambda p: _round_trip_us(p, 20_000, 2000)),
            "msgs_per_s_200B": measured(lambda p: _throughput(p, 200, 100_000)),
            "MB_per_s_64KiB": measured(lambda p: _throughput(p, 65536, 5000)) * 65536 / 1e6,
            "handshake_ms": measured(lambda p: _handshake_ms(p, 50)),
            "server_setup_ms": setup_ms,
        })
        print(f"  {name}: {rows[-1]}", flush=True)
    return rows


def _markdown(title: str, rows: list[dict]) -> str:
    cols = list(rows[0])
    out = [f"### {title}", "", "| " + " | ".join(cols) + " |",
           "|" + "|".join("---" for _ in cols) + "|"]
    for row in rows:
        out.append("| " + " | ".join(
            f"{v:.3f}" if isinstance(v, float) and v < 1000 else
            f"{v:,.0f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--part", choices=["sync", "sockets", "all"], default="all")
    args = parser.parse_args()
    print(f"dtnbus CURVE cost ({machine()})")
    markdown = []
    if args.part in ("sockets", "all"):
        rows = bench_sockets(args.repeat)
        print_table(rows, list(rows[0]))
        print(f"wrote {write_csv('curve_cost_sockets.csv', rows)}")
        markdown.append(_markdown("Sockets, loopback, one process", rows))
    if args.part in ("sync", "all"):
        with tempfile.TemporaryDirectory():
            rows = bench_sync(args.repeat, SYNC_CELLS)
        print_table(rows, list(rows[0]))
        print(f"wrote {write_csv('curve_cost_sync.csv', rows)}")
        markdown.append(_markdown("dtnbus sync, seconds, median (min-max)", rows))
    RESULTS.mkdir(exist_ok=True)
    path = Path(RESULTS) / "curve_cost.md"
    path.write_text(f"CURVE cost, {machine()}\n\n" + "\n".join(markdown))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
