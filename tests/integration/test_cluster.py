"""Integration: real node processes on loopback, real ZeroMQ sockets, real SQLite ledgers.

n = 4, f = 1 throughout. Every cluster is started by the `cluster`/`start_cluster`
fixtures (conftest.py), which stop it in teardown and fail if a node process survives.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
import zmq
from integration_support import (
    RunningCluster,
    dropped,
    pid_alive,
    processes_mentioning,
    wait_until,
)
from zmq.utils.monitor import recv_monitor_message

from dtnbus.cluster import kill_node, running_pids, stop_nodes
from dtnbus.crypto import Signer, generate_key
from dtnbus.messages import Commit, Prepare, Reply, Request
from dtnbus.simulation.engine import spoil_tags
from dtnbus.storage import compare_ledgers
from dtnbus.sync import make_transactions
from dtnbus.transport import waiting_frames
from dtnbus.wire import DEFAULT_MAX_FRAME, Codec

# ------------------------------------------------------------------ helpers


def _dealer(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def _wait_exit(pid: int, timeout: float) -> int:
    """Reap our child `pid` (bounded); return its raw wait status."""
    result: list[int] = []

    def exited() -> bool:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got == pid:
            result.append(status)
        return bool(result)

    wait_until(exited, timeout, f"pid {pid} to exit")
    return result[0]


def _status_lines(stdout: str) -> dict[int, str]:
    """`cluster status` table rows by node id."""
    rows = {}
    for line in stdout.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0].isdigit():
            rows[int(fields[0])] = line
    return rows


def _assert_ledgers_identical(rc: RunningCluster, nodes: list[int], txs: int) -> None:
    reports, error = compare_ledgers([rc.config.node(i).ledger for i in nodes])
    assert error is None, error
    assert len({r.head for r in reports}) == 1, [r.head.hex() for r in reports]
    assert len({r.height for r in reports}) == 1, [r.height for r in reports]
    assert [r.transactions for r in reports] == [txs] * len(nodes)
    assert [rc.ledger_txs(i) for i in nodes] == [txs] * len(nodes)


# ------------------------------------------------------------------ commit and agreement


def test_four_nodes_commit_1000_transactions_with_identical_ledgers(
        cluster: RunningCluster, run_cli: Callable) -> None:
    result = cluster.submit(1000, request_txs=100, tx_bytes=300)

    assert result.requests == 10 and result.transactions == 1000
    assert result.seconds_f1 is not None, "not every request got f+1 matching replies"
    assert len(result.results) == result.requests  # f+1 matching replies for every request
    assert result.mismatched_replies == 0
    assert len({seq for seq, _ in result.results.values()}) >= 1

    statuses = cluster.wait_executed(1000)  # all n, not only the f+1 the client waited for
    assert len({s.head for s in statuses.values()}) == 1
    assert len({s.last_executed for s in statuses.values()}) == 1
    # What f+1 replicas told the client is what every ledger holds: the reply's result is
    # the hash of the block that executed the request.
    for node in range(cluster.n):
        hashes = cluster.block_hashes(node)
        for seq, block in result.results.values():
            assert hashes[seq] == block, f"node {node} block {seq} differs from the reply"

    _assert_ledgers_identical(cluster, list(range(cluster.n)), 1000)
    for flag, value in (("--dir", cluster.directory),
                        ("--config", cluster.directory / "cluster.toml")):
        out = run_cli("ledger", "verify", flag, value)
        assert out.returncode == 0, out.stderr
        assert "valid and identical" in out.stdout
        assert out.stdout.count(" txs 1000 ") == cluster.n, out.stdout


def test_three_nodes_still_commit_after_a_backup_is_killed(
        cluster: RunningCluster, run_cli: Callable) -> None:
    first = cluster.submit(200, seed=1)
    assert len(first.results) == first.requests == 2
    cluster.wait_executed(200)

    pid = cluster.pids[3]
    kill_node(cluster.directory, 3)  # SIGKILL: a crash, not a clean stop
    assert not pid_alive(pid)
    assert 3 not in running_pids(cluster.directory)

    second = cluster.submit(300, seed=2, timeout=30)
    assert second.seconds_f1 is not None, f"only {len(second.results)} of 3 requests accepted"
    assert len(second.results) == second.requests == 3
    assert second.mismatched_replies == 0
    statuses = cluster.wait_executed(500, nodes=[0, 1, 2])
    assert 3 not in statuses
    _assert_ledgers_identical(cluster, [0, 1, 2], 500)
    assert cluster.ledger_txs(3) == 200  # the crashed node's ledger is a valid prefix

    out = run_cli("cluster", "status", "--dir", cluster.directory, "--timeout", "1")
    assert out.returncode == 1, (out.stdout, out.stderr)
    rows = _status_lines(out.stdout)
    assert sorted(rows) == [0, 1, 2, 3], out.stdout
    assert re.fullmatch(r"\s*3\s+down\s*", rows[3]), rows[3]
    for node in (0, 1, 2):  # node state height lag view checkpoint pending txs head
        fields = rows[node].split()
        assert fields[1] == "ready", rows[node]
        assert fields[2] == str(statuses[node].last_executed), rows[node]
        assert fields[3] == "0", rows[node]  # not behind the quorum
        assert fields[4] == "0", rows[node]  # no view change: still view 0
        assert fields[7] == "500", rows[node]
        assert fields[8] == statuses[node].head.hex()[:16], rows[node]

    out = run_cli("ledger", "verify", "--dir", cluster.directory)
    assert out.returncode == 0, out.stderr  # identical up to the shortest (node 3's)


# ------------------------------------------------------------------ process lifecycle


def test_cli_cluster_up_status_submit_down_leaves_no_process(
        run_cli: Callable, tmp_path: Path) -> None:
    directory = tmp_path / "cli-cluster"
    pids: list[int] = []
    try:
        up = run_cli("cluster", "up", "--nodes", "4", "--dir", directory)
        assert up.returncode == 0, up.stderr
        assert "ready" in up.stdout
        pids = list(json.loads((directory / "pids.json").read_text()).values())
        assert len(pids) == 4 and all(pid_alive(p) for p in pids)

        status = run_cli("cluster", "status", "--dir", directory)
        assert status.returncode == 0, (status.stdout, status.stderr)
        rows = _status_lines(status.stdout)
        assert sorted(rows) == [0, 1, 2, 3]
        assert all(row.split()[1] == "ready" for row in rows.values()), status.stdout

        sub = run_cli("submit", "--dir", directory, "--count", "50", "--request-txs", "10",
                      "--timeout", "30")
        assert sub.returncode == 0, sub.stderr
        assert sub.stdout.startswith("50/50 transactions committed in 5/5 requests"), sub.stdout

        down = run_cli("cluster", "down", "--dir", directory)
        assert down.returncode == 0, down.stderr
        assert "stopped 4 node(s)" in down.stdout
        left = [p for p in pids if pid_alive(p)]
        assert not left, f"processes left after 'cluster down': {left}"
        assert running_pids(directory) == {}
        assert processes_mentioning(str(directory)) == []

        status = run_cli("cluster", "status", "--dir", directory, "--timeout", "0.3")
        assert status.returncode == 1
        assert all("down" in row for row in _status_lines(status.stdout).values())
    finally:
        stop_nodes(directory, timeout=5)
        assert not [p for p in pids if pid_alive(p)]
        assert processes_mentioning(str(directory)) == []


def test_sigterm_and_sigint_stop_a_node_cleanly(cluster: RunningCluster) -> None:
    result = cluster.submit(100)
    assert len(result.results) == result.requests
    cluster.wait_executed(100)
    for node, sig in ((2, signal.SIGTERM), (1, signal.SIGINT)):
        pid = cluster.pids[node]
        os.kill(pid, sig)
        status = _wait_exit(pid, timeout=10)
        assert os.WIFEXITED(status), f"node {node} died of a signal: {status:#x}"
        assert os.WEXITSTATUS(status) == 0, f"node {node} exit status {os.WEXITSTATUS(status)}"
        log = cluster.log(node)
        assert re.search(rf"node {node} stopped at seq \d+", log), log[-2000:]
        assert "Traceback" not in log
        ledger = cluster.config.node(node).ledger
        # The last connection closing checkpoints WAL mode's log away: the db was closed.
        assert not Path(f"{ledger}-wal").exists(), f"node {node} left its WAL behind"
        assert cluster.ledger_txs(node) == 100


# ------------------------------------------------------------------ hostile input


def _hostile_frames(cluster: RunningCluster) -> tuple[list[list[bytes]], dict[str, int]]:
    """Frames (as multipart messages) a non-member might send, and the drops they cause."""
    stranger = Codec(Signer(generate_key("ed25519")), {}, {})
    client_id = cluster.config.client().id
    ts = time.time_ns() // 1000
    digest = bytes(32)
    malformed = [
        [b""],
        [b"\xc1"],  # a byte msgpack never uses
        [b"this is not msgpack \xff\xfe\x00"],
        [os.urandom(1000)],
        [msgpack.packb([1, 2, 3])],  # not [payload, signature]
        [msgpack.packb({"a": 1})],
        [msgpack.packb([b"\x93\x01\x02", b"sig"])],  # payload is a truncated array
        [msgpack.packb([msgpack.packb([99, 1]), b"sig"])],  # unknown kind
        [msgpack.packb([msgpack.packb([1, client_id, 1, -5, [b"x"]]), b"sig"])],  # negative no.
        [msgpack.packb([msgpack.packb([3, 0, 1, 2]), b"sig"])],  # wrong field count
        [b"part one", b"part two"],  # multipart: not one frame
        [b"\x92\x00\xc1"],  # a bundle's start, then garbage
        [msgpack.packb([0, [b"x", 5]])],  # a bundle with a part that is no frame
        [msgpack.packb([0, [b"not a frame"]])],  # a bundle of one malformed frame
        # oversized-looking: a bin32 header claiming 2 GiB, followed by a few bytes
        [b"\x92\xc6\x7f\xff\xff\xff" + b"x" * 16],
        # a valid outer frame whose payload claims an array of 2**32-1 items
        [msgpack.packb([b"\xdd\xff\xff\xff\xff" + b"\x01" * 8, b"sig"])],
    ]
    forged = [  # well-formed, signed by a key that is not the claimed member's
        [stranger.encode(Request(client_id, ts, 1, (b"forged transaction",)))],
        [stranger.encode(Prepare(0, 1, 2, digest))],
    ]
    unknown = [  # well-formed, from a member that does not exist
        [stranger.encode(Request("mallory", ts, 1, (b"who am I",)))],
        [stranger.encode(Commit(0, 1, 7, digest))],
    ]
    frames = malformed + forged + unknown
    return frames, {"malformed": len(malformed), "bad_signature": len(forged),
                    "unknown_sender": len(unknown)}


def test_hostile_frames_are_dropped_counted_and_the_node_keeps_working(
        cluster: RunningCluster) -> None:
    frames, expected = _hostile_frames(cluster)
    before = {i: cluster.metrics(i) for i in range(cluster.n)}
    for i in range(cluster.n):
        for reason in (*expected, "oversized"):
            assert ("dtnbus_dropped_messages_total", (("reason", reason),)) in before[i], \
                f"node {i} does not export the {reason} drop counter before any drop"
    target = 1
    ctx = zmq.Context()
    try:
        socks = [_dealer(ctx, spec.router) for spec in cluster.config.nodes]
        for sock in socks:
            for parts in frames:
                sock.send_multipart(parts)
        socks[target].send(b"\x00" * (DEFAULT_MAX_FRAME + 1))  # over the decoder's cap
        expected_target = {**expected, "oversized": 1}

        for i in range(cluster.n):
            want = expected_target if i == target else expected

            def counted(i: int = i, want: dict[str, int] = want) -> bool:
                now = cluster.metrics(i)
                return all(dropped(now, r) - dropped(before[i], r) >= k for r, k in want.items())

            wait_until(counted, 20, f"node {i} to count {want} dropped frames")
        # Larger than the socket's MAXMSGSIZE: libzmq cuts the connection before buffering.
        big = ctx.socket(zmq.DEALER)
        big.setsockopt(zmq.LINGER, 0)
        monitor = big.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        big.connect(cluster.config.node(target).router)
        big.send(b"\x00" * (DEFAULT_MAX_FRAME + 8192))
        assert monitor.poll(20_000), "the node did not cut the connection of an over-cap frame"
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
    finally:
        ctx.destroy(linger=0)

    for i in range(cluster.n):
        assert pid_alive(cluster.pids[i]), f"node {i} died: {cluster.log(i)[-2000:]}"
    statuses = cluster.status(timeout=2.0)
    assert sorted(statuses) == list(range(cluster.n))
    assert all(s.ready for s in statuses.values())

    result = cluster.submit(100, seed=3)
    assert len(result.results) == result.requests == 1
    cluster.wait_executed(100)  # the forged request was never executed
    _assert_ledgers_identical(cluster, list(range(cluster.n)), 100)
    for i in range(cluster.n):
        assert "Traceback" not in cluster.log(i)


def _collect_replies(codec: Codec, socks: dict[int, zmq.Socket], frame: bytes,
                     number: int, timeout: float = 10.0) -> dict[int, Reply]:
    """Send `frame` to every replica and wait (bounded) for a Reply from each."""
    for sock in socks.values():
        sock.send(frame)
    poller = zmq.Poller()
    for sock in socks.values():
        poller.register(sock, zmq.POLLIN)
    replies: dict[int, Reply] = {}
    deadline = time.monotonic() + timeout
    while len(replies) < len(socks):
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"replies from {sorted(replies)} only, within {timeout}s")
        for sock, _ in poller.poll(int(left * 1000) + 1):
            for reply_frame in waiting_frames(sock):  # a loop's replies come as one bundle
                env = codec.decode(reply_frame)
                if isinstance(env.msg, Reply) and env.msg.number == number:
                    replies[env.msg.replica] = env.msg
    return replies


def test_replayed_request_is_answered_from_the_reply_cache_not_executed_twice(
        cluster: RunningCluster) -> None:
    config = cluster.config
    spec = config.client()
    codec = Codec(config.signer(spec.key_file, "client"), config.replica_verifiers(),
                  config.client_verifiers())
    ts = time.time_ns() // 1000  # the session
    frame = codec.encode(Request(spec.id, ts, 1, tuple(make_transactions(10, 300, seed=7))))
    ctx = zmq.Context()
    try:
        socks = {s.id: _dealer(ctx, s.router) for s in config.nodes}
        first = _collect_replies(codec, socks, frame, 1)
        answers = {(r.seq, r.result) for r in first.values()}
        assert len(answers) == 1, first
        cluster.wait_executed(10)

        replayed = _collect_replies(codec, socks, frame, 1)  # the exact same signed bytes
        assert {(r.seq, r.result) for r in replayed.values()} == answers

        # A new request behind the replay on the same connections: once it has executed
        # everywhere, each node has certainly handled the replay before it.
        frame2 = codec.encode(Request(spec.id, ts, 2, tuple(make_transactions(5, 300, seed=8))))
        second = _collect_replies(codec, socks, frame2, 2)
        assert len({(r.seq, r.result) for r in second.values()}) == 1
    finally:
        ctx.destroy(linger=0)

    cluster.wait_executed(15)
    for i in range(cluster.n):
        assert cluster.ledger_txs(i) == 15, f"node {i} executed the replay"
        executed = cluster.ledger_requests(i)
        assert executed.count((spec.id, ts, 1)) == 1, executed
        assert executed.count((spec.id, ts, 2)) == 1, executed
    _assert_ledgers_identical(cluster, list(range(cluster.n)), 15)


def test_a_request_whose_tags_hold_at_two_replicas_only_executes_everywhere(
        cluster: RunningCluster) -> None:
    """Aardvark's "Big MAC attack" on real nodes: a client spoils its MAC tags for f + 1
    backups. They count it dropped, yet take it for the batch the primary and the third
    backup vouch for; nothing stalls and no ledger falls behind."""
    config = cluster.config
    spec = config.client()
    codec = Codec(config.signer(spec.key_file, "client"), config.replica_verifiers(),
                  config.client_verifiers())
    ts = time.time_ns() // 1000
    frame, _ = codec.encode_request(
        Request(spec.id, ts, 1, tuple(make_transactions(3, 300, seed=5))), "mac")
    spoilt = spoil_tags(frame, (1, 2))
    before = {i: dropped(cluster.metrics(i), "bad_signature") for i in (1, 2)}
    ctx = zmq.Context()
    try:
        socks = {s.id: _dealer(ctx, s.router) for s in config.nodes}
        for sock in socks.values():
            sock.send(spoilt)
        cluster.wait_executed(3)
        good, _ = codec.encode_request(
            Request(spec.id, ts, 2, tuple(make_transactions(2, 300, seed=6))), "mac")
        assert len({(r.seq, r.result) for r in _collect_replies(codec, socks, good, 2)
                    .values()}) == 1
    finally:
        ctx.destroy(linger=0)
    cluster.wait_executed(5)
    for i in (1, 2):
        assert dropped(cluster.metrics(i), "bad_signature") - before[i] >= 1
    for i in range(cluster.n):
        assert cluster.ledger_requests(i).count((spec.id, ts, 1)) == 1
    _assert_ledgers_identical(cluster, list(range(cluster.n)), 5)


def test_a_full_request_pool_answers_busy_the_client_backs_off_and_nothing_is_lost(
        start_cluster: Callable[..., RunningCluster]) -> None:
    """A bounded pool sheds load (max_requests bounds what waits to be ordered): it answers
    BUSY, counts the drop, never dies; the client backs off and sends again, and every
    request commits in the end."""
    rc = start_cluster(4, protocol={"max_requests": 8})
    before = {i: rc.metrics(i) for i in range(rc.n)}
    with rc.client() as client:
        result = client.submit([(b"tx-%03d" % i,) for i in range(100)], timeout=90.0,
                               retry_after=60.0)
    dead = {i: rc.log(i).strip().splitlines()[-1] for i in range(rc.n)
            if not pid_alive(rc.pids[i])}
    assert not dead, f"nodes died when their request pool filled up: {dead}"
    assert result.busy_answers > 0 and result.backed_off_seconds > 0
    assert len(result.results) == 100 and not result.refused  # none lost
    statuses = rc.status(timeout=2.0)
    assert sorted(statuses) == list(range(rc.n))
    for i in range(rc.n):
        now = rc.metrics(i)
        total = sum(v - before[i].get(k, 0.0) for k, v in now.items()
                    if k[0] == "dtnbus_dropped_messages_total")
        assert total >= 4, f"node {i} did not count the 4 requests it had no room for"
