"""CurveZMQ with real sockets and real node processes: without the right key a peer
cannot connect, subscribe or send, every refusal is counted and logged, and a CURVE
cluster commits with identical ledgers."""

from __future__ import annotations

import dataclasses
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq
from integration_support import RunningCluster, dropped, wait_until
from test_cli import assert_one_line_error

from dtnbus.client import Client
from dtnbus.cluster import stop_nodes
from dtnbus.config import ClusterConfig, generate_cluster, load_cluster
from dtnbus.curve import CurveKeys, CurveMember, new_curve_key_file
from dtnbus.messages import Request
from dtnbus.simulation.engine import spoil_tags
from dtnbus.sync import chunk, make_transactions
from dtnbus.transport import FROM_REPLICA, FROM_ROUTER, REPLICA_IDENTITY, Endpoints, Transport

RunCli = Callable[..., subprocess.CompletedProcess[str]]


# ---------------------------------------------------------------- one node's sockets


class Node0:
    """Node 0's real Transport under CURVE, polled on demand, and what it refused."""

    def __init__(self, config: ClusterConfig) -> None:
        assert config.curve is not None
        self.config = config
        spec = config.node(0)
        self.refusals: list[str] = []
        self._lock = threading.Lock()
        self.transport = Transport(Endpoints(spec.pub, spec.router, 0), {},
                                   curve=config.curve.node_end(0), on_refusal=self._refused)
        self.received: list[tuple[int, bytes | None, bytes, str | None]] = []

    def _refused(self, reason: str) -> None:  # called from the ZAP thread too
        with self._lock:
            self.refusals.append(reason)

    def refused(self, reason: str) -> int:
        self.pump()
        with self._lock:
            return self.refusals.count(reason)

    def pump(self) -> None:
        self.received.extend(self.transport.poll(10))

    def frames(self) -> list[bytes]:
        return [frame for _s, _i, frame, _m in self.received]

    def wait_frame(self, frame: bytes) -> tuple[int, bytes | None, bytes, str | None]:
        def seen() -> tuple | None:
            self.pump()
            return next((r for r in self.received if r[2] == frame), None)
        return wait_until(seen, 10.0, f"node 0 to receive {frame!r}")


@pytest.fixture
def node0(tmp_path: Path) -> Iterator[Node0]:
    node = Node0(load_cluster(generate_cluster(tmp_path / "c", 4, curve=True)))
    yield node
    node.transport.close()


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def _socket(ctx: zmq.Context, kind: int, keys: tuple[bytes, bytes] | None = None,
            server: bytes | None = None, identity: bytes | None = None) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    if keys is not None:
        sock.curve_publickey, sock.curve_secretkey = keys
        sock.curve_serverkey = server
    if kind == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    return sock


def _keys(config: ClusterConfig, member: str) -> tuple[bytes, bytes]:
    assert config.curve is not None
    if member == "client":
        end = config.curve.client_end("client")
    else:
        end = config.curve.node_end(int(member))
    return end.public_key, end.secret_key


def _server(config: ClusterConfig) -> bytes:
    return config.curve.nodes[0].public_key.encode()  # type: ignore[union-attr]


def _admitted_client_says(node0: Node0, ctx: zmq.Context, frame: bytes) -> None:
    """A control: an admitted client's frame does arrive (so 'nothing arrived' means
    something), tagged with its member."""
    cfg = node0.config
    sock = _socket(ctx, zmq.DEALER, _keys(cfg, "client"), _server(cfg), b"client-ctl")
    sock.connect(cfg.node(0).router)
    sock.send(frame)
    source, _identity, _frame, member = node0.wait_frame(frame)
    assert (source, member) == (FROM_ROUTER, "client:client")


def test_dealer_without_curve_gets_nowhere(node0: Node0, ctx: zmq.Context) -> None:
    plain = _socket(ctx, zmq.DEALER)
    plain.connect(node0.config.node(0).router)
    plain.send(b"from a plain socket")
    wait_until(lambda: node0.refused("no_curve") + node0.refused("handshake_aborted"), 10.0,
               "the refusal of a plain DEALER")
    _admitted_client_says(node0, ctx, b"control")
    assert b"from a plain socket" not in node0.frames()


def test_dealer_with_an_unknown_key_gets_nowhere(node0: Node0, ctx: zmq.Context) -> None:
    stranger = _socket(ctx, zmq.DEALER, zmq.curve_keypair(), _server(node0.config))
    stranger.connect(node0.config.node(0).router)
    stranger.send(b"from a stranger")
    wait_until(lambda: node0.refused("unknown_key"), 10.0, "the refusal of an unknown key")
    _admitted_client_says(node0, ctx, b"control")
    assert b"from a stranger" not in node0.frames()


def test_a_public_key_without_its_secret_gets_nowhere(node0: Node0, ctx: zmq.Context) -> None:
    """Presenting the admitted client's public key with another secret fails the
    handshake's proof (the vouch) before ZAP is even asked."""
    public, _secret = _keys(node0.config, "client")
    forger = _socket(ctx, zmq.DEALER, (public, zmq.curve_keypair()[1]), _server(node0.config))
    forger.connect(node0.config.node(0).router)
    forger.send(b"from a forger")
    wait_until(lambda: node0.refused("bad_handshake"), 10.0, "the refusal of a forged key")
    _admitted_client_says(node0, ctx, b"control")
    assert b"from a forger" not in node0.frames()


def test_a_client_cannot_subscribe_to_replica_traffic(node0: Node0, ctx: zmq.Context) -> None:
    cfg = node0.config
    pub = cfg.node(0).pub
    plain = _socket(ctx, zmq.SUB)
    stranger = _socket(ctx, zmq.SUB, zmq.curve_keypair(), _server(cfg))
    client = _socket(ctx, zmq.SUB, _keys(cfg, "client"), _server(cfg))
    replica = _socket(ctx, zmq.SUB, _keys(cfg, "1"), _server(cfg))
    for sock in (plain, stranger, client, replica):
        sock.connect(pub)

    def replica_hears() -> bool:  # publish until a subscription is up (slow joiner)
        node0.transport.publish(b"vote")
        return bool(replica.poll(20))

    wait_until(replica_hears, 10.0, "node 1's SUB to receive node 0's PUB")
    for reasons in (("no_curve", "handshake_aborted"), ("unknown_key",), ("not_a_replica",)):
        wait_until(lambda r=reasons: sum(node0.refused(x) for x in r), 10.0,
                   f"a {' or '.join(reasons)} refusal on the PUB")
    for _ in range(5):
        node0.transport.publish(b"vote")
    assert replica.recv() == b"vote"
    for sock in (plain, stranger, client):
        assert sock.poll(200) == 0, "a refused subscriber received a publication"


def test_a_client_cannot_pose_as_a_replica(node0: Node0, ctx: zmq.Context) -> None:
    cfg = node0.config
    liar = _socket(ctx, zmq.DEALER, _keys(cfg, "client"), _server(cfg), REPLICA_IDENTITY + b"1")
    liar.connect(cfg.node(0).router)
    liar.send(b"I am replica 1")
    wait_until(lambda: node0.refused("identity_mismatch"), 10.0,
               "the refusal of a client claiming a replica's routing identity")
    replica = _socket(ctx, zmq.DEALER, _keys(cfg, "1"), _server(cfg))
    replica.connect(cfg.node(0).router)
    replica.send(b"replica 1 indeed")
    source, _identity, _frame, member = node0.wait_frame(b"replica 1 indeed")
    assert (source, member) == (FROM_REPLICA, "node:1")  # known by its key, not a name
    assert b"I am replica 1" not in node0.frames()


def test_a_member_cannot_take_over_anothers_routing_identity(node0: Node0,
                                                             ctx: zmq.Context) -> None:
    cfg = node0.config
    owner = _socket(ctx, zmq.DEALER, _keys(cfg, "client"), _server(cfg), b"alice-1")
    owner.connect(cfg.node(0).router)
    owner.send(b"mine")
    node0.wait_frame(b"mine")
    thief = _socket(ctx, zmq.DEALER, _keys(cfg, "2"), _server(cfg), b"alice-1")
    thief.connect(cfg.node(0).router)
    thief.send(b"now mine")
    wait_until(lambda: node0.refused("identity_mismatch"), 10.0, "the takeover's refusal")
    assert b"now mine" not in node0.frames()


# ---------------------------------------------------------------- node processes


def _stranger(config: ClusterConfig, key_file: Path) -> ClusterConfig:
    """The same cluster file, but our client holds a CURVE key the nodes never heard of."""
    assert config.curve is not None
    public = new_curve_key_file(key_file)
    curve = CurveKeys(config.curve.path, config.curve.nodes,
                      {"client": CurveMember(public, key_file)})
    return dataclasses.replace(config, curve=curve)


def _refused(cluster: RunningCluster, node: int, reason: str) -> float:
    return cluster.metrics(node).get(
        ("dtnbus_curve_refused_total", (("reason", reason),)), 0.0)


def test_curve_cluster_commits_and_refuses_strangers(
        start_cluster: Callable[..., RunningCluster], tmp_path: Path) -> None:
    cluster = start_cluster(4, curve=True)
    assert cluster.config.curve is not None
    result = cluster.submit(300, request_txs=50)
    assert result.seconds_f1 is not None and len(result.results) == 6
    cluster.wait_executed(300)
    heads = [cluster.block_hashes(i) for i in range(4)]
    assert heads[0] and all(h == heads[0] for h in heads), "ledgers differ"

    # a client with an unknown CURVE key, and one without CURVE, get nowhere
    stranger = _stranger(cluster.config, tmp_path / "stranger.curve.key")
    plain = dataclasses.replace(cluster.config, curve=None)
    for config in (stranger, plain):
        with Client(config) as client:
            assert client.status(timeout=0.5) == {}
            sent = client.submit(chunk(make_transactions(20, 100, seed=7), 10), timeout=1.5)
            assert sent.results == {} and sent.seconds_f1 is None
            if config is stranger:  # the client can tell why, not only that it timed out
                why = wait_until(client.refused_by, 10.0, "the client to see the refusals")
                assert "refused our CURVE key" in why, why
    for node in range(4):
        wait_until(lambda n=node: _refused(cluster, n, "unknown_key") >= 1, 10.0,
                   f"node {node} to count the unknown key")
        wait_until(lambda n=node: _refused(cluster, n, "no_curve")
                   + _refused(cluster, n, "handshake_aborted") >= 1, 10.0,
                   f"node {node} to count the plain connection")
    log = (cluster.directory / "logs" / "node-0.log").read_text()
    assert "WARNING refused connection (unknown_key)" in log
    assert ("WARNING refused connection (no_curve)" in log
            or "WARNING refused connection (handshake_aborted)" in log)
    cluster.wait_executed(300)  # nothing of theirs was executed
    assert [cluster.block_hashes(i) for i in range(4)] == heads


@pytest.mark.parametrize("curve", [True, False])
def test_a_client_whose_tags_hold_at_the_primary_alone_stalls_nothing(
        start_cluster: Callable[..., RunningCluster], curve: bool) -> None:
    """Aardvark's Big MAC attack at its worst: tags that hold at the primary alone, so it
    orders what no one can vouch for. Under CURVE the replicas whose tag failed know the
    client sent it; with or without CURVE, a PRE-PREPARE that needs a request whose tag
    fails tells them too. They stop ordering its tagged requests (and take those they
    had queued off the queue), so the attack costs at most one view change, and an
    honest client keeps committing. (Without CURVE, before: view 2 here; with six
    streams beside a client spoiling random tags at 50 a second, the cluster stood
    still from the first view change on, for 40 s and more.)"""
    cluster = start_cluster(4, curve=curve, extra_clients=1)
    config = cluster.config
    spec, other = config.clients[0], config.clients[-1]
    assert spec.id != other.id
    stop = threading.Event()

    def faulty() -> None:  # each request holds only at replica 0, or only at replica 1
        with Client(config, spec.id) as bad:
            number = 0
            while not stop.is_set():
                number += 1
                frame, _ = bad.codec.encode_request(
                    Request(spec.id, bad.session, number, (b"spoiled-%d" % number,)), "mac")
                good = number % 2
                frame = spoil_tags(frame, [r for r in range(4) if r != good])
                for sock in bad.sockets.values():
                    sock.send(frame)
                stop.wait(0.02)

    thread = threading.Thread(target=faulty)
    thread.start()
    try:
        for node in range(1, 4):  # replicas 1-3 have seen its spoiled tags
            wait_until(lambda n=node: dropped(cluster.metrics(n), "bad_signature") >= 20, 20.0,
                       f"node {node} to drop 20 spoiled requests")
        with Client(config, other.id) as honest:
            for round_ in range(4):
                sent = honest.submit(chunk(make_transactions(10, 100, seed=round_), 1),
                                     timeout=20)
                assert sent.seconds_f1 is not None and len(sent.results) == 10, round_
    finally:
        stop.set()
        thread.join()
    views = {s.view for s in cluster.status().values()}
    assert max(views) <= 1, views
    # the backups of view 0 saw its PRE-PREPAREs need requests whose tag failed there
    for node in range(1, 4):
        wait_until(lambda n=node: cluster.metrics(n).get(
            ("dtnbus_distrusted_clients", ()), 0.0) == 1.0, 10.0,
            f"node {node} to report the one client it distrusts")


# ---------------------------------------------------------------- the command line


def test_keygen_curve_writes_keys_0600_and_never_prints_them(run_cli: RunCli,
                                                            tmp_path: Path) -> None:
    out_dir = tmp_path / "k"
    out = run_cli("keygen", "--nodes", "4", "--out", out_dir, "--curve")
    assert out.returncode == 0, out.stderr
    assert "CURVE" in out.stdout
    config = load_cluster(out_dir / "cluster.toml")
    assert config.curve is not None
    names = sorted(p.name for p in (out_dir / "keys").glob("*.curve.key"))
    assert names == ["client.curve.key"] + [f"node-{i}.curve.key" for i in range(4)]
    for name in names:
        path = out_dir / "keys" / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        secret = path.read_text().strip()
        assert secret not in out.stdout + out.stderr
        assert secret not in (out_dir / "cluster.toml").read_text()


def test_bad_curve_key_in_the_cluster_file_is_one_line(run_cli: RunCli,
                                                       tmp_path: Path) -> None:
    path = generate_cluster(tmp_path / "k", 4, curve=True)
    text = path.read_text()
    key = load_cluster(path).curve.nodes[0].public_key  # type: ignore[union-attr]
    path.write_text(text.replace(key, "not a key", 1))
    out = run_cli("node", "--config", path, "--id", "0", timeout=8)
    assert_one_line_error(out, "curve_public_key is not a z85 CURVE key")
    path.write_text(text)
    (tmp_path / "k" / "keys" / "client.curve.key").unlink()
    out = run_cli("cluster", "status", "--config", path, "--timeout", "0.2", timeout=8)
    assert_one_line_error(out, "cannot read CURVE key file", "client.curve.key")


def test_cluster_up_curve_from_the_command_line(run_cli: RunCli, tmp_path: Path) -> None:
    directory = tmp_path / "cli-cluster"
    try:
        out = run_cli("cluster", "up", "--nodes", "4", "--dir", directory, "--curve",
                      timeout=90)
        assert out.returncode == 0, out.stderr
        assert "CURVE" in out.stdout
        status = run_cli("cluster", "status", "--dir", directory)
        assert status.returncode == 0, status.stderr
        assert status.stdout.count(" ready ") == 4, status.stdout
        sent = run_cli("submit", "--dir", directory, "--count", "10", "--timeout", "30")
        assert sent.returncode == 0, sent.stderr
        # the same cluster file with a client CURVE key the nodes never heard of
        text = (directory / "cluster.toml").read_text()
        key = load_cluster(directory / "cluster.toml").curve.clients["client"].public_key
        public = new_curve_key_file(directory / "keys" / "stranger.curve.key")
        stranger = directory / "stranger.toml"
        stranger.write_text(text.replace(key, public).replace(
            "keys/client.curve.key", "keys/stranger.curve.key"))
        refused = run_cli("submit", "--config", stranger, "--count", "1", "--timeout", "2")
        assert refused.returncode == 1, refused.stderr  # a problem found, not a bad flag
        lines = refused.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: 0 of 4 nodes answered: "), lines
        assert "node(s) 0, 1, 2, 3 refused our CURVE key" in lines[0], lines[0]
        # a client admitted on the running cluster connects under CURVE too: its CURVE key
        # travels in the ordered admission, and every node's ZAP table takes it there
        made = run_cli("client", "new", "--dir", directory, "--name", "dora", timeout=60)
        assert made.returncode == 0, made.stderr
        assert (directory / "keys" / "client-dora.curve.key").stat().st_mode & 0o777 == 0o600
        ok = run_cli("submit", "--dir", directory, "--client", "dora", "--count", "3",
                     "--timeout", "30")
        assert ok.returncode == 0, ok.stderr
        gone = run_cli("client", "remove", "--dir", directory, "--name", "dora", timeout=60)
        assert gone.returncode == 0, gone.stderr
        after = run_cli("submit", "--dir", directory, "--client", "dora", "--count", "1",
                        "--timeout", "2", "--seed", "9")
        assert after.returncode == 1 and "refused our CURVE key" in after.stderr, after.stderr
    finally:
        stop_nodes(directory)
