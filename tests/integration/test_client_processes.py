"""Issue 10 with real processes and sockets: many independent clients at once, exactly
once, replies that prove what they answer, identities and admission."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import zmq
from integration_support import RunningCluster, scrape, wait_until

from dtnbus.client import Client
from dtnbus.crypto import Signer, generate_key
from dtnbus.export import transactions
from dtnbus.messages import Outcome, Reply, Request
from dtnbus.storage import compare_ledgers
from dtnbus.transport import waiting_frames
from dtnbus.wire import Codec


def _submit_cmd(directory: Path, out: Path, client: str | None, count: int,
                seed: int) -> list[str]:
    txs = out / f"txs-{seed}.txt"
    if not txs.exists():
        from dtnbus.sync import make_transactions
        txs.write_bytes(b"".join(t + b"\n" for t in make_transactions(count, 120, seed=seed)))
    cmd = [sys.executable, "-m", "dtnbus", "submit", "--dir", str(directory), "--file", str(txs),
           "--request-txs", "1", "--timeout", "120", "--json"]
    return cmd + (["--client", client] if client else [])


def _committed(proc: subprocess.CompletedProcess[str]) -> dict:
    last = proc.stdout.strip().splitlines()[-1]
    return json.loads(last)


def test_many_concurrent_submitters_lose_nothing_and_duplicate_nothing(
        start_cluster: Callable[..., RunningCluster], tmp_path: Path) -> None:
    """8 submitters at once (4 with keys of their own, 4 sharing the default key), 1
    transaction per request, plus one killed with SIGKILL mid-run and started again over
    the same transactions. Before issue 10, four such submitters left 14 acknowledged
    transactions in no ledger."""
    c = start_cluster(4, extra_clients=5)
    per = 150
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = []
    for k in range(8):
        client = f"client-{k + 1}" if k < 4 else None
        procs.append(subprocess.Popen(_submit_cmd(c.directory, tmp_path, client, per, k),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env))
    victim_cmd = _submit_cmd(c.directory, tmp_path, "client-5", 400, 99)
    victim = subprocess.Popen(victim_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env)

    def victim_started() -> bool:  # some of its requests committed: kill it mid-run
        return any(r["client"] == "client-5" for r in _executed(c, 0))

    wait_until(victim_started, 60, "the victim submitter to commit something")
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    again = subprocess.run(victim_cmd, capture_output=True, text=True, timeout=180, env=env)
    results = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = _committed(again)
    assert resumed["resumed"] and resumed["committed_txs"] == 400
    reported = sum(r["committed_txs"] for r in results) + resumed["committed_txs"]
    assert reported == 8 * per + 400

    def all_executed() -> bool:
        return all(len(_executed(c, i)) >= reported for i in range(c.n))

    wait_until(all_executed, 60, "every node to execute every acknowledged transaction")
    _, error = compare_ledgers([s.ledger for s in c.config.nodes])
    assert error is None, error
    for i in range(c.n):
        txs = Counter(r["tx"] for r in _executed(c, i))
        assert len(txs) == reported, f"node {i}: {len(txs)} distinct, {reported} reported"
        assert max(txs.values()) == 1, f"node {i} holds a transaction twice"


def _executed(c: RunningCluster, node: int) -> list[dict]:
    return [r for r in transactions(c.config.node(node).ledger) if r["outcome"] == "executed"]


def test_a_reused_identity_is_refused_never_answered_with_the_first_result(
        cluster: RunningCluster) -> None:
    """Five times, the second request right after the first's earliest answers: a later
    answer to the first (its tentative reply after the speculative one) must not take the
    connection the second needs (it did: one replica never answered the second)."""
    config = cluster.config
    spec = config.client()
    codec = Codec(config.client_signer(spec.id), config.replica_verifiers(), {})
    ctx = zmq.Context()
    try:
        socks = {s.id: ctx.socket(zmq.DEALER) for s in config.nodes}
        for node_id, sock in socks.items():
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(config.node(node_id).router)
        for attempt in range(5):
            session = time.time_ns() + attempt
            first = Request(spec.id, session, 1, (b"the first request",))
            second = Request(spec.id, session, 1, (b"a different request, same identity",))
            answers_first = _exchange(codec, socks, first)
            assert {m.outcome for m in answers_first.values()} == {Outcome.EXECUTED}
            answers_second = _exchange(codec, socks, second)
            digest_second = codec.encode_with_digest(second)[1]
            assert {m.outcome for m in answers_second.values()} == {Outcome.CONFLICT}
            assert {m.request for m in answers_second.values()} == {digest_second}
    finally:
        ctx.destroy(linger=0)


def _exchange(codec: Codec, socks: dict[int, zmq.Socket], req: Request,
              timeout: float = 10.0) -> dict[int, Reply]:
    frame, digest = codec.encode_with_digest(req)
    for sock in socks.values():
        sock.send(frame)
    poller = zmq.Poller()
    for sock in socks.values():
        poller.register(sock, zmq.POLLIN)
    replies: dict[int, Reply] = {}
    deadline = time.monotonic() + timeout
    while len(replies) < len(socks) and time.monotonic() < deadline:
        for sock, _ in poller.poll(100):
            for reply_frame in waiting_frames(sock):  # a loop's replies come as one bundle
                msg = codec.decode(reply_frame).msg
                if isinstance(msg, Reply) and msg.number == req.number \
                        and msg.request == digest:
                    replies[msg.replica] = msg  # tentative or committed: one per replica
    assert len(replies) == len(socks), f"replies from {sorted(replies)} only"
    return replies


def test_a_key_the_cluster_does_not_admit_is_refused_and_counted(
        cluster: RunningCluster, run_cli: Callable[..., subprocess.CompletedProcess[str]],
        tmp_path: Path) -> None:
    config = cluster.config
    stranger = Codec(Signer(generate_key()), config.replica_verifiers(), {})
    before = {i: cluster.metrics(i) for i in range(cluster.n)}
    ctx = zmq.Context()
    try:
        socks = {s.id: ctx.socket(zmq.DEALER) for s in config.nodes}
        for node_id, sock in socks.items():
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(config.node(node_id).router)
        answers = _exchange(stranger, socks, Request("mallory", 1, 1, (b"let me in",)))
    finally:
        ctx.destroy(linger=0)
    assert {m.outcome for m in answers.values()} == {Outcome.REFUSED}
    for i in range(cluster.n):
        key = ("dtnbus_peer_drops_total", (("peer", "client"), ("reason", "unknown_sender")))
        assert scrape(config.node(i).metrics).get(key, 0) > before[i].get(key, 0)
    # admitted at run time, the same key's requests commit; removed, they are refused
    assert run_cli("client", "new", "--dir", cluster.directory, "--name", "carol").returncode == 0
    ok = run_cli("submit", "--dir", cluster.directory, "--client", "carol", "--count", "3",
                 "--request-txs", "1", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout.strip().splitlines()[-1])["committed_txs"] == 3
    assert run_cli("client", "remove", "--dir", cluster.directory,
                   "--name", "carol").returncode == 0
    refused = run_cli("submit", "--dir", cluster.directory, "--client", "carol", "--count", "2",
                      "--request-txs", "1", "--json", "--seed", "5")
    assert refused.returncode == 1
    summary = json.loads(refused.stdout.strip().splitlines()[-1])
    assert summary["refused"] == {"refused": 2} and summary["committed_txs"] == 0
    assert "were not committed: refused 2" in refused.stderr


def test_the_library_and_the_command_line_say_the_same_thing(
        cluster: RunningCluster, run_cli: Callable[..., subprocess.CompletedProcess[str]],
        tmp_path: Path) -> None:
    txs = tmp_path / "txs.txt"
    txs.write_bytes(b"alpha\nbeta\ngamma\n")
    cli = run_cli("submit", "--dir", cluster.directory, "--file", txs, "--request-txs", "1",
                  "--json")
    assert cli.returncode == 0, cli.stderr
    from_cli = json.loads(cli.stdout.strip().splitlines()[-1])
    with Client(cluster.config) as client:
        summary = client.submit([(b"delta",), (b"epsilon",), (b"zeta",)]).summary()
    assert set(summary) <= set(from_cli)
    for key in ("transactions", "committed_txs", "refused", "undecided_requests"):
        assert summary[key] == from_cli[key], key
    exported = run_cli("ledger", "export", "--dir", cluster.directory)
    assert exported.stdout.encode().splitlines() == [b"alpha", b"beta", b"gamma", b"delta",
                                                     b"epsilon", b"zeta"]
