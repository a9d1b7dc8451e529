"""The CPU budget of one request on this machine, piece by piece (CPU time, so a busy
machine does not distort it), and the ceiling it implies for n replicas on the cores here.

    python -m benchmarks.budget [--nodes 4] [--batch 64]

Per request, at every replica: receive it (zmq), parse it, check its MAC tag, pool it,
execute it (client table, outcome, block hash share), store it (one SQLite row in the
block's transaction), answer it (encode, MAC, send). Per batch, amortized over `--batch`
requests: the PRE-PREPARE, the votes (sign one PREPARE and one COMMIT, check q-1 of
each), the durable commit (fsync: kernel CPU). At the client: build, MAC for n replicas,
send n copies, receive and check the f+1 replies it needs.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable

import zmq

from dtnbus.clients import ClientTable
from dtnbus.crypto import Signer, Verifier, generate_key
from dtnbus.messages import Commit, Reply, Request, block_hash, commit_quorum, reply_quorum
from dtnbus.pool import RequestPool
from dtnbus.wire import Codec


def cpu_us(fn: Callable[[], object], repeat: int) -> float:
    t0 = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - t0) / repeat * 1e6


def measure(n: int, batch: int) -> dict[str, float]:
    keys = [generate_key() for _ in range(n)]
    ckey = generate_key()
    verifiers = {i: Verifier(k.public_key()) for i, k in enumerate(keys)}
    clients = {"c": Verifier(ckey.public_key())}
    node = Codec(Signer(keys[0]), verifiers, clients, me=0)
    client = Codec(Signer(ckey), verifiers, {})
    req = Request("c", 1, 1, (b"x" * 300,))
    frame, digest = client.encode_request(req)
    reply = Reply(0, 0, "c", 1, 1, digest, 1, 0, b"h" * 32, 0)
    out: dict[str, float] = {}
    ctx = zmq.Context()  # tcp on loopback, as between node processes (its I/O thread's
    a, b = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)  # CPU is in process_time too)
    port = a.bind_to_random_port("tcp://127.0.0.1")
    b.connect(f"tcp://127.0.0.1:{port}")
    a.send(frame)
    b.recv()
    out["zmq send+recv"] = cpu_us(lambda: (a.send(frame), b.recv()), 20000)
    out["parse"] = cpu_us(lambda: node.parse(frame), 20000)
    raw = node.parse(frame)
    out["MAC check"] = cpu_us(lambda: node.authenticate(raw), 20000)
    pool = RequestPool(10**9, 10**12)
    k = iter(range(10**9))
    out["pool add"] = cpu_us(lambda: pool.add(next(k).to_bytes(32, "big"), req, frame, 0.0),
                             20000)
    table = ClientTable()
    entries = [("c", 1, i + 1, i.to_bytes(32, "big"), req.txs) for i in range(batch)]
    nums = iter(range(0, 10**9, batch))

    def execute() -> None:
        base = next(nums)
        table.execute_batch([(c, s, base + m, d, t) for c, s, m, d, t in entries])
        block_hash(b"p" * 32, 1, b"d" * 32, bytes(batch))
    out["execute (client table, hash)"] = cpu_us(execute, 400) / batch
    db_path = tempfile.mktemp(suffix=".sqlite")
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("CREATE TABLE r (seq, position, client, session, number, digest, frame, "
               "tx_count, outcome)")
    rows = [(1, i, "c", 1, i, digest, frame, 1, 0) for i in range(batch)]

    def store() -> None:
        db.execute("BEGIN")
        db.executemany("INSERT INTO r VALUES (?,?,?,?,?,?,?,?,?)", rows)
        db.execute("COMMIT")
    out["store (SQLite row)"] = cpu_us(store, 200) / batch
    db.close()
    os.unlink(db_path)
    out["reply encode+MAC"] = cpu_us(lambda: node.encode_reply(reply, clients["c"].raw_key),
                                     20000)
    per_replica = sum(out.values()) + out["zmq send+recv"]  # the reply goes out too
    signer = Signer(keys[1])
    vote = Commit(0, 1, 1, b"d" * 32)
    vframe = Codec(signer, verifiers, clients).encode(vote)
    vraw = node.parse(vframe)
    sign = cpu_us(lambda: signer.sign(b"d" * 32), 3000)
    check = cpu_us(lambda: node.authenticate(vraw), 3000)
    q = commit_quorum(n)
    per_batch = 2 * sign + 2 * (q - 1) * check + 2 * (n - 1) * out["zmq send+recv"]
    fsync_cpu = _fsync_cpu()
    per_batch += 4 * fsync_cpu  # pre-prepare/prepare/commit/execute land in ~4 commits
    out["per batch: votes, fsync (amortized)"] = per_batch / batch
    client_side = (out["parse"] + cpu_us(lambda: client.encode_request(req), 5000)
                   + n * out["zmq send+recv"] / 2
                   + reply_quorum(n) * (out["zmq send+recv"] / 2 + out["parse"] + 1.0))
    result = {name: round(v, 1) for name, v in out.items()}
    result["= per replica per request"] = round(per_replica + per_batch / batch, 1)
    result["client per request"] = round(client_side, 1)
    total = n * result["= per replica per request"] + client_side
    result[f"= whole machine per request (n={n})"] = round(total, 1)
    result["ceiling tx/s on the cores here"] = round((os.cpu_count() or 1) * 1e6 / total)
    result["fsync CPU per commit"] = round(fsync_cpu, 1)
    ctx.destroy(linger=0)
    return result


def _fsync_cpu() -> float:
    path = tempfile.mktemp(suffix=".sqlite", dir=os.getcwd())
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (a BLOB)")

    def commit() -> None:
        db.execute("BEGIN")
        db.execute("INSERT INTO t VALUES (?)", (b"x" * 200,))
        db.execute("COMMIT")
    r0 = os.times()
    for _ in range(200):
        commit()
    r1 = os.times()
    db.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    return ((r1.user - r0.user) + (r1.system - r0.system)) / 200 * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    for name, value in measure(args.nodes, args.batch).items():
        print(f"{name:42s} {value:>10}")


if __name__ == "__main__":
    main()
