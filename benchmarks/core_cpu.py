"""CPU of the protocol core per request: 4 real replicas, the real codec (MAC-authenticated
requests and replies, signed votes), no sockets, no disk. What the nodes spend on top of
this is transport, SQLite and metrics (see docs/performance.md).

    python -m benchmarks.core_cpu [--requests 20000] [--batch 64] [--auth mac|signature]
"""

from __future__ import annotations

import argparse
import time
from collections import deque

from dtnbus.crypto import Signer, Verifier, generate_key, public_key_text
from dtnbus.effects import DURABLE, Broadcast, Forward, Send, SendClient
from dtnbus.messages import Request
from dtnbus.replica import Replica, ReplicaConfig
from dtnbus.storage import MemoryLedger
from dtnbus.wire import Codec


def run(n: int, requests: int, batch: int, auth: str) -> dict:
    rkeys = [generate_key() for _ in range(n)]
    ckey = generate_key()
    verifiers = {i: Verifier(k.public_key()) for i, k in enumerate(rkeys)}
    clients = {"c": Verifier(ckey.public_key())}
    codecs = [Codec(Signer(k), verifiers, clients, me=i) for i, k in enumerate(rkeys)]
    client = Codec(Signer(ckey), verifiers, {})
    reps = [Replica(ReplicaConfig(i, n, batch_max_requests=batch, pipeline=8),
                    codecs[i].encode, {"c": public_key_text(ckey.public_key())})
            for i in range(n)]
    ledgers = [MemoryLedger() for _ in range(n)]
    queue: deque = deque()
    now = 0.0
    frames = [client.encode_request(Request("c", 1, k + 1, (b"x" * 300,)), auth)[0]
              for k in range(requests)]
    t0 = time.process_time()
    sent = 0
    replies = 0
    while sent < requests or queue:
        while sent < requests and len(queue) < 4 * batch:
            for i in range(n):
                queue.append((i, frames[sent]))
            sent += 1
        while queue:
            dest, frame = queue.popleft()
            codec, r = codecs[dest], reps[dest]
            raw = codec.parse(frame)
            if r.admit(raw, now) is not None:
                continue
            effects = r.step(codec.authenticate(raw), now)
            ledgers[dest].write([e for e in effects if isinstance(e, DURABLE)])
            for e in effects:
                if isinstance(e, Broadcast):
                    queue.extend((j, e.frame) for j in range(n) if j != dest)
                elif isinstance(e, Send | Forward):
                    queue.append((e.to, e.frame))
                elif isinstance(e, SendClient):
                    codec.encode_reply(e.msg, clients["c"].raw_key)
                    replies += 1
        now += 0.001
        for i, r in enumerate(reps):
            for e in r.tick(now):
                if isinstance(e, Broadcast):
                    queue.extend((j, e.frame) for j in range(n) if j != i)
    cpu = time.process_time() - t0
    assert all(r.executed_txs == requests for r in reps), [r.executed_txs for r in reps]
    return {"n": n, "requests": requests, "batch": batch, "auth": auth,
            "cpu_us_per_request_all_replicas": round(cpu / requests * 1e6, 1),
            "per_replica": round(cpu / requests * 1e6 / n, 1), "replies": replies}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--auth", choices=["mac", "signature"], default="mac")
    args = parser.parse_args()
    print(run(args.nodes, args.requests, args.batch, args.auth))


if __name__ == "__main__":
    main()
