"""Fuzz real node processes at every socket they bind, and account for every frame.

A 4-node cluster starts; a client stream and a sniffer (a SUB on every node's PUB)
capture real frames of every kind the cluster produces (optionally through a view change
and a restart), and the rest are built with the members' real keys (`fuzzing.Corpus`).
Node 3 is then stopped and played by a `rogue.RogueMember`, and the honest nodes 0-2
receive `frames` hostile frames (`fuzzing.Mutator`), spread over the three ways a frame
reaches a node:

- its ROUTER, over a client's connection (DEALER, client identity);
- its ROUTER, over a replica's connection (the rogue's DEALER, replica identity);
- its SUB, from a publisher it subscribes to (the rogue binds node 3's PUB endpoint).

Then, below the frame level, raw TCP connections carrying garbage (and a ZMTP greeting
followed by garbage) at each node's ROUTER and PUB ports and HTTP garbage at its metrics
port: libzmq and the HTTP server must refuse these without the node noticing.

Accounting: the cluster runs with the periodic status exchange off and no client
traffic during the fuzz, so every frame a node reads is a fuzz frame, and each is counted
exactly once: as a drop by reason (`dtnbus_dropped_messages_total`) or, for a vote or
checkpoint its slot no longer needs (never verified, never used), under messages
received. The run checks, per node: counted == delivered, no internal_error and no
traceback, the process alive; and afterwards that the cluster (three honest nodes and
the rogue, now silent) still commits a client stream and its ledgers agree.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import zmq
from prometheus_client.parser import text_string_to_metric_families

from dtnbus.cluster import cluster_up, kill_node, running_pids, start_nodes, stop_nodes
from dtnbus.config import ClusterConfig
from dtnbus.errors import PeerError
from dtnbus.fuzzing import Corpus, Fuzzed, Mutator, classify, decode_fully
from dtnbus.ledger_check import check_cluster
from dtnbus.messages import Hello, PeerStatus, StateRequest, Status, StatusQuery, kind_name
from dtnbus.rogue import RogueMember
from dtnbus.stream import RequestStream
from dtnbus.waiting import poll_until
from dtnbus.wire import Codec

PATHS = ("router-client", "router-replica", "sub")
# what honest nodes send each other on their own: status every second, and hellos again
# whenever a member (the rogue, in a well-signed fuzz frame) says it has not heard all
BACKGROUND = ("peerstatus", "hello")
_BACKGROUND_KINDS = (PeerStatus.KIND, Hello.KIND)
ROGUE = 3
HONEST = (0, 1, 2)
ZMTP_GREETING = b"\xff" + bytes(8) + b"\x7f\x03\x00NULL" + bytes(16)


@dataclass(frozen=True)
class FuzzPlan:
    frames: int = 10_000
    seed: int = 0
    resign_share: float = 0.05  # field rewrites signed again with the rogue member's key
    raw_connections: int = 30  # per node and port, garbage below the frame level
    oversized: int = 1  # frames just over the node's frame limit (64 MiB each)
    capture_view_change: bool = False  # kill the primary while capturing: real VIEW-CHANGEs
    chunk: int = 2_000  # frames between two accounting waits (bounds every queue)


@dataclass
class FuzzResult:
    frames: int
    seed: int
    delivered: dict[int, int]  # node -> frames it had to read
    counted: dict[int, int]  # node -> drops + received, during the fuzz
    drops: dict[int, dict[str, int]]  # node -> reason -> count
    received: dict[int, dict[str, int]]  # node -> kind -> count (unneeded votes, valid)
    parse_verdicts: dict[str, int]  # what the decoder alone says of the frames
    well_signed: int  # frames that authenticate (re-signed by the rogue member)
    by_path: dict[str, int]
    by_mutation: dict[str, int]
    corpus_kinds: list[str]
    captured_kinds: list[str]
    raw_connections: int
    raw_frames: dict[int, dict[str, int]]  # frames libzmq made of raw garbage: node -> drops
    internal_errors: int
    alive_after: list[int]
    committed_after: int  # client requests acknowledged after the fuzz
    ledgers_agree: bool
    fuzz_seconds: float
    frames_per_second: float
    violations: list[str] = field(default_factory=list)
    directory: str = ""
    bundled_extra: int = 0  # frames beyond one per multipart message (each part is a frame)

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out


def scrape(address: str, timeout: float = 5.0) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as resp:
        text = resp.read().decode()
    out: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def counts(metrics: dict[tuple[str, tuple], float],
           direction: str = "in") -> tuple[dict[str, float], dict[str, float]]:
    """(drops by reason, messages received (or sent) by kind) from one scrape."""
    drops: dict[str, float] = {}
    received: dict[str, float] = {}
    for (name, labels), value in metrics.items():
        lab = dict(labels)
        if name == "dtnbus_dropped_messages_total":
            drops[lab["reason"]] = value
        elif name == "dtnbus_messages_total" and lab.get("direction") == direction:
            received[lab["kind"]] = value
    return drops, received


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    return {k: int(v - before.get(k, 0)) for k, v in after.items() if v - before.get(k, 0)}


def _counted(now: tuple[dict[str, float], dict[str, float]],
             before: tuple[dict[str, float], dict[str, float]]) -> int:
    """Frames a node counted since `before`, leaving out the honest background."""
    drops = _delta(now[0], before[0])
    received = _delta(now[1], before[1])
    return sum(drops.values()) + sum(v for k, v in received.items() if k not in BACKGROUND)


class FuzzRun:
    def __init__(self, plan: FuzzPlan, directory: Path,
                 log: Callable[[str], None] = lambda line: None) -> None:
        self.plan = plan
        self.directory = directory
        self.log = log
        self.violations: list[str] = []

    def run(self) -> FuzzResult:
        config = cluster_up(self.directory, 4, fresh=True)
        try:
            return self._run(config)
        finally:
            stop_nodes(self.directory)

    def _run(self, config: ClusterConfig) -> FuzzResult:
        plan = self.plan
        corpus = self._capture(config)
        stop_nodes(self.directory, ids=[ROGUE])
        pids = {k: v for k, v in running_pids(self.directory).items() if k in HONEST}
        checker = _node_codec(config, HONEST[0])  # decides as node 0 does (its MAC tag)
        with RogueMember(config, ROGUE) as rogue:
            if not rogue.announce():
                self.violations.append("the honest nodes never heard the rogue member")
            if not rogue.quiet():
                self.violations.append("the honest nodes kept saying hello")
            self._capture_state_reply(rogue, corpus)
            signers: dict[int | str, Codec] = {ROGUE: rogue.codec,
                                               rogue.client_id: rogue.client_codec}
            for spec in config.nodes:
                if spec.id != ROGUE:
                    signers[spec.id] = _node_codec(config, spec.id)
            corpus.complete(signers, config.n)
            mutator = Mutator(corpus, plan.seed, resign=rogue.sign_payload,
                              resign_share=plan.resign_share)
            clients = _ClientConnections(config)
            verdicts: Counter[str] = Counter()
            by_path: Counter[str] = Counter()
            by_mutation: Counter[str] = Counter()
            delivered = dict.fromkeys(HONEST, 0)
            rng = random.Random(plan.seed)
            valid = valid_background = bundled_extra = 0
            self._await_quiet(config)
            before = {i: counts(scrape(config.node(i).metrics)) for i in HONEST}
            started = time.monotonic()
            try:
                batch: dict[str, list[Fuzzed]] = {p: [] for p in PATHS}
                for i, item in enumerate(mutator.frames(plan.frames), 1):
                    path = rng.choice(PATHS)
                    if path == "sub" and len(item.parts) > 1:
                        path = "router-replica"  # a SUB reads parts as separate frames
                    batch[path].append(item)
                    by_path[path] += 1
                    by_mutation[item.mutation.split("+")[0]] += 1
                    bundled_extra += len(item.frames) - 1
                    for frame in item.frames:  # each part of a multipart message is a frame
                        verdict = classify(checker, frame)
                        verdicts[verdict] += 1
                        if verdict == "parsed" and decode_fully(checker, frame) == "valid":
                            valid += 1  # a member's well-signed frame: the replica decides
                            if checker.parse(frame).msg.KIND in _BACKGROUND_KINDS:
                                valid_background += 1
                    if i % plan.chunk == 0 or i == plan.frames:
                        self._deliver(batch, rogue, clients, delivered)
                        batch = {p: [] for p in PATHS}
                        self._await_counted(config, before, delivered, valid_background)
                        self.log(f"fuzz: {i}/{plan.frames} frames delivered and counted")
                for _ in range(plan.oversized):
                    big = os.urandom(checker.max_frame + 1)
                    clients.send_all((big,))
                    for node in HONEST:
                        delivered[node] += 1
                    verdicts["oversized"] += 1
                    by_path["router-client"] += 1
                    by_mutation["oversized"] += 1
                if plan.oversized:
                    self._await_counted(config, before, delivered, valid_background)
                self._await_quiet(config)  # a frame counted twice may end the wait early
                fuzz_seconds = time.monotonic() - started
                after = {i: counts(scrape(config.node(i).metrics)) for i in HONEST}
                raw = self._raw_garbage(config, rng)
                raw_frames = self._raw_accounting(config, after)
            finally:
                clients.close()
        drops = {i: _delta(after[i][0], before[i][0]) for i in HONEST}
        received = {i: _delta(after[i][1], before[i][1]) for i in HONEST}
        counted = {i: _counted(after[i], before[i]) for i in HONEST}
        for node in HONEST:
            # each frame is counted once; a well-signed one may be counted twice (received,
            # then dropped by the replica, e.g. a second vote of the rogue for one slot); a
            # well-signed status message is not told apart from the honest nodes' own
            low = delivered[node] - valid_background
            if not low <= counted[node] <= delivered[node] + valid:
                self.violations.append(f"node {node}: {delivered[node]} frames delivered "
                                       f"({valid} well-signed), {counted[node]} counted")
        internal = sum(d.get("internal_error", 0) for d in drops.values())
        if internal:
            self.violations.append(f"{internal} internal errors counted")
        alive = [n for n, pid in pids.items() if _alive(pid)]
        if len(alive) != len(HONEST):
            self.violations.append(f"nodes died: {sorted(set(HONEST) - set(alive))}")
        committed = self._commits_after(config)
        reports, findings = check_cluster(config, set(HONEST))
        heads = {r.head for r in reports}
        agree = not findings and len(heads) == 1
        if not agree:
            self.violations.append("honest ledgers disagree after the fuzz: "
                                   + (findings[0].line() if findings else "heads differ"))
        for log in sorted((self.directory / "logs").glob("node-*.log")):
            if "Traceback" in log.read_text(errors="replace"):
                self.violations.append(f"{log.name} logged a traceback")
        return FuzzResult(
            frames=plan.frames, seed=plan.seed, delivered=delivered, counted=counted,
            drops=drops, received=received, parse_verdicts=dict(verdicts), well_signed=valid,
            by_path=dict(by_path), by_mutation=dict(by_mutation),
            corpus_kinds=corpus.kinds(), captured_kinds=sorted(corpus.captured),
            raw_connections=raw, raw_frames=raw_frames, internal_errors=internal, alive_after=alive,
            committed_after=committed, ledgers_agree=agree, fuzz_seconds=fuzz_seconds,
            frames_per_second=plan.frames / fuzz_seconds if fuzz_seconds else 0.0,
            violations=list(self.violations), directory=str(self.directory),
            bundled_extra=bundled_extra)

    # ------------------------------------------------------------ corpus

    def _capture(self, config: ClusterConfig) -> Corpus:
        """Real frames off a working cluster: a sniffer on every PUB, the client's own
        requests and the replies it gets; with `capture_view_change`, through the crash
        and restart of the primary (VIEW-CHANGE, NEW-VIEW, SUSPECT, state transfer)."""
        corpus = Corpus()
        checker = _node_codec(config, HONEST[0])
        stop = threading.Event()
        sniffer = threading.Thread(target=_sniff, args=(config, checker, corpus, stop),
                                   daemon=True)
        sniffer.start()
        stream = RequestStream(config, window=4,
                               capture=lambda frame: _keep(corpus, checker, frame)).start()
        try:
            poll_until(lambda: stream.accepted_count() >= 50, 30)
            if self.plan.capture_view_change:
                kill_node(self.directory, 0)
                poll_until(lambda: "newview" in corpus.frames, 30)
                start_nodes(config, self.directory, ids=[0])
            poll_until(lambda: stream.accepted_count() >= 100, 30)
        finally:
            stream.drain(10)
            stream.stop()
            stop.set()
            sniffer.join(5)
        for ack in list(stream.acks.values())[:64]:
            corpus.add("request", ack.frame)
        if not wait_level(config, 60):
            self.violations.append("the nodes were not level after the capture")
        with _ClientConnections(config) as clients:
            for frame in clients.status_frames():
                corpus.add("status", frame)
            corpus.add("statusquery", clients.query_frame())
        return corpus

    def _capture_state_reply(self, rogue: RogueMember, corpus: Corpus) -> None:
        """Ask node 0 for state as the rogue member: its StateReply is real."""
        rogue.dealers[0].send(rogue.sign(StateRequest(ROGUE, 1)))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "statereply" not in corpus.captured:
            if rogue.router.poll(100):
                parts = rogue.router.recv_multipart()
                with contextlib.suppress(PeerError):
                    msg = rogue.codec.decode(parts[-1]).msg
                    corpus.add(kind_name(msg.KIND), parts[-1])

    # ------------------------------------------------------------ delivery

    def _deliver(self, batch: dict[str, list[Fuzzed]], rogue: RogueMember,
                 clients: _ClientConnections, delivered: dict[int, int]) -> None:
        for item in batch["router-client"]:
            clients.send_all(item.parts)
        for item in batch["router-replica"]:
            for dealer in rogue.dealers.values():
                dealer.send_multipart(list(item.parts))
        for item in batch["sub"]:
            rogue.pub.send(item.parts[0])
        total = sum(len(item.frames) for v in batch.values() for item in v)
        for node in HONEST:
            delivered[node] += total
        rogue.discard_incoming()
        clients.discard_incoming()

    def _await_quiet(self, config: ClusterConfig, timeout: float = 15.0) -> None:
        """Until no node's counters move for half a second: the Hellos our arrival set
        off have died down, so what the nodes count from now on is the fuzz."""
        deadline = time.monotonic() + timeout
        last: dict[int, tuple[dict[str, float], dict[str, float]]] = {}
        still_since = time.monotonic()
        while time.monotonic() < deadline:
            now = {node: counts(scrape(config.node(node).metrics)) for node in HONEST}
            for node in HONEST:  # the honest background does not count
                for kind in BACKGROUND:
                    now[node][1].pop(kind, None)
            if now != last:
                moved = {n: (_delta(now[n][0], last[n][0]), _delta(now[n][1], last[n][1]))
                         for n in HONEST} if last else {}
                last, still_since = now, time.monotonic()
            elif time.monotonic() - still_since >= 0.5:
                return
            time.sleep(0.05)  # counters of another process: nothing to block on
        self.violations.append(f"the nodes did not fall quiet within {timeout:.0f} s: "
                               f"{moved}")

    def _await_counted(self, config: ClusterConfig,
                       before: dict[int, tuple[dict[str, float], dict[str, float]]],
                       delivered: dict[int, int], uncounted: int,
                       timeout: float = 120.0) -> None:
        """Until each node has counted what it was sent (or `timeout`); `uncounted`
        frames are not told apart from the honest background."""
        deadline = time.monotonic() + timeout
        pending = set(HONEST)
        while pending and time.monotonic() < deadline:
            for node in sorted(pending):
                total = _counted(counts(scrape(config.node(node).metrics)), before[node])
                if total >= delivered[node] - uncounted:
                    pending.discard(node)
            if pending:
                time.sleep(0.05)  # counters of another process: nothing to block on
        if pending:
            self.violations.append(f"nodes {sorted(pending)} did not count all frames "
                                   f"within {timeout:.0f} s")

    def _raw_garbage(self, config: ClusterConfig, rng: random.Random) -> int:
        """Garbage below the frame level: raw TCP at the ROUTER and PUB ports (half of it
        after a valid ZMTP greeting), HTTP garbage at the metrics port."""
        made = 0
        for node in HONEST:
            spec = config.node(node)
            for endpoint in (spec.router, spec.pub):
                host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
                for i in range(self.plan.raw_connections):
                    data = (ZMTP_GREETING if i % 2 else b"") + rng.randbytes(rng.randint(1, 512))
                    made += _raw_send(host, int(port), data)
            host, port = spec.metrics.rsplit(":", 1)
            for _ in range(self.plan.raw_connections):
                data = rng.choice((b"GET /" + rng.randbytes(64) + b" HTTP/1.1\r\n\r\n",
                                   rng.randbytes(256), b"POST /metrics HTTP/1.1\r\n"
                                   b"Content-Length: 99999999\r\n\r\n" + rng.randbytes(64)))
                made += _raw_send(host, int(port), data)
        return made

    def _raw_accounting(self, config: ClusterConfig,
                        before: dict[int, tuple[dict[str, float], dict[str, float]]],
                        ) -> dict[int, dict[str, int]]:
        """What the raw garbage became at each node: libzmq makes frames of some of it
        (bytes after a valid greeting); the node must drop every one, never use one."""
        out = {}
        for node in HONEST:
            drops, received = counts(scrape(config.node(node).metrics))
            out[node] = _delta(drops, before[node][0])
            used = {k: v for k, v in _delta(received, before[node][1]).items()
                    if k not in BACKGROUND}
            if used:
                self.violations.append(f"node {node} took raw garbage for messages: {used}")
            if out[node].get("internal_error"):
                self.violations.append(f"node {node}: internal error on raw garbage")
        return out

    def _commits_after(self, config: ClusterConfig) -> int:
        """A client stream against the honest nodes and the (silent) rogue: acknowledged
        requests in a few seconds (0 if nothing commits)."""
        stream = RequestStream(config, window=4).start()
        try:
            poll_until(lambda: stream.accepted_count() >= 20, 30)
            stream.drain(10)
        finally:
            stream.stop()
        if stream.accepted_count() < 20:
            self.violations.append(f"only {stream.accepted_count()} requests acknowledged in "
                                   "30 s after the fuzz")
        return stream.accepted_count()


def _node_codec(config: ClusterConfig, node_id: int) -> Codec:
    """The codec node `node_id` decodes with (its key: its MAC tags of requests)."""
    return Codec(config.node_signer(node_id), config.replica_verifiers(),
                 config.client_verifiers(), open_clients=config.open_admission, me=node_id)


def _keep(corpus: Corpus, checker: Codec, frame: bytes) -> None:
    """A frame off the wire from an honest node or the client: keep it under its kind (a
    reply's MAC tag is for the client, so only its shape is checked here)."""
    with contextlib.suppress(PeerError):
        corpus.add(kind_name(checker.parse(frame).msg.KIND), frame)


def _sniff(config: ClusterConfig, checker: Codec, corpus: Corpus,
           stop: threading.Event) -> None:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    for spec in config.nodes:
        sub.connect(spec.pub)
    try:
        while not stop.is_set():
            if not sub.poll(50):
                continue
            _keep(corpus, checker, sub.recv())
    finally:
        sub.close(linger=0)
        ctx.term()


class _ClientConnections:
    """One DEALER per node with a client's identity: the path client frames take."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.codec = Codec(config.client_signer(), config.replica_verifiers(),
                           config.client_verifiers())
        self.client_id = config.client().id
        self.ctx = zmq.Context()
        self.dealers: dict[int, zmq.Socket] = {}
        for spec in config.nodes:
            if spec.id == ROGUE:
                continue
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 10_000)
            sock.setsockopt(zmq.IDENTITY, f"fuzz-{os.getpid()}-{spec.id}".encode())
            sock.connect(spec.router)
            self.dealers[spec.id] = sock

    def send_all(self, parts: tuple[bytes, ...]) -> None:
        for sock in self.dealers.values():
            sock.send_multipart(list(parts), copy=sum(map(len, parts)) < 65536)

    def query_frame(self) -> bytes:
        return self.codec.encode(StatusQuery(self.client_id, 1))

    def status_frames(self) -> list[bytes]:
        """Real Status answers (frames as sent) from every node."""
        frames = []
        for sock in self.dealers.values():
            sock.send(self.query_frame())
        deadline = time.monotonic() + 5
        while len(frames) < len(self.dealers) and time.monotonic() < deadline:
            for sock in self.dealers.values():
                if sock.poll(20):
                    frame = sock.recv()
                    with contextlib.suppress(PeerError):
                        if isinstance(self.codec.decode(frame).msg, Status):
                            frames.append(frame)
        return frames

    def discard_incoming(self) -> None:
        for sock in self.dealers.values():
            while True:
                try:
                    sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break

    def close(self) -> None:
        for sock in self.dealers.values():
            sock.close(linger=0)
        self.ctx.term()

    def __enter__(self) -> _ClientConnections:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _raw_send(host: str, port: int, data: bytes) -> int:
    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            sock.sendall(data)
            with contextlib.suppress(OSError):
                sock.settimeout(0.05)
                sock.recv(1024)
    except OSError:
        return 0
    return 1


def _alive(pid: int) -> bool:
    from dtnbus.cluster import process_alive

    return process_alive(pid)


def wait_level(config: ClusterConfig, timeout: float) -> bool:
    """Every node answers, at one height (one client asks, again until `timeout`)."""
    from dtnbus.client import Client

    with Client(config) as client:
        def level() -> bool:
            st = client.status(0.5)
            return len(st) == config.n and len({s.last_executed for s in st.values()}) == 1

        return poll_until(level, timeout)


def run_fuzz(plan: FuzzPlan, directory: Path | None = None,
             log: Callable[[str], None] = lambda line: None) -> FuzzResult:
    where = directory or Path(tempfile.mkdtemp(prefix="dtnbus-fuzz-"))
    return FuzzRun(plan, where, log).run()
