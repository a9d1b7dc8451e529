"""One seeded run of the simulator, and the invariants it checks after every step.

The real `Replica`, unchanged, in `ReplicaHost`s on a virtual clock: an event heap of
deliveries, timers and schedule actions. A host is ticked at the end of every instant in
which it received something (as a node ticks after every poll) and at its own next
wakeup; time jumps from one event to the next, so an idle second costs nothing.

A seed fixes everything: which replicas are Byzantine (for modes given without an id),
when each client submits, which replicas crash and when, the random partition, and
every loss, delay and duplicate (the network's own random stream). Same seed, same
options: the same run, message for message.

Invariants, checked as the effects come out of each step:
- agreement: no two correct replicas execute different blocks at one sequence;
- exactly once: no correct replica executes one request identity twice;
- no exception escapes a replica (a node would count it as `internal_error`);
- a client accepts only what correct replicas executed;
and at the end, once the network has healed and every crashed replica is back: every
submitted request is decided by every correct replica and accepted by its client,
executed (not lost), within `settle` virtual seconds.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import time
import traceback
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgpack

from dtnbus.byzantine import Context, ModeSpec, make_behaviour
from dtnbus.client import Answers, ReplyKey, SignAfterRetry
from dtnbus.effects import (
    Broadcast,
    Drop,
    Effect,
    Execute,
    Forward,
    Send,
    SendClient,
    ViewChangeStarted,
    ViewEntered,
)
from dtnbus.messages import Outcome, Reply, Request
from dtnbus.replica import ReplicaConfig
from dtnbus.shaping import LinkProfile
from dtnbus.simulation.auth import make_members
from dtnbus.simulation.host import Packet, ReplicaHost
from dtnbus.simulation.network import Faults, Network, parse_partitions
from dtnbus.wire import MAC_BYTES, Codec

# Protocol timers scaled to a short schedule (virtual seconds cost nothing, but messages
# do): small windows and checkpoints every 4 batches, so garbage collection, watermarks
# and state transfer happen within a few requests.
SHORT_TIMERS = {"view_change_timeout": 0.6, "retransmit_after": 0.25, "fetch_after": 0.25,
                "checkpoint_interval": 4, "window": 8, "batch_max_requests": 3, "pipeline": 2,
                "status_interval": 0.5}
TIMERS = ("short", "production")
SIM_MAX_FRAME = 4 * 1024 * 1024
MIN_TICK = 0.001  # a node polls with 1 ms resolution
CHECK_EVERY = 0.1
CLIENT_RETRY = 1.0
TRACE_LINES = 80

DELIVER, TIMER, TO_CLIENT, ACTION = 0, 1, 2, 3


@dataclass
class SimOptions:
    """Everything a run depends on besides its seed."""

    nodes: int = 4
    byzantine: dict[int, ModeSpec] = field(default_factory=dict)
    unplaced: list[ModeSpec] = field(default_factory=list)  # placed per seed
    drop: float = 0.0
    reorder: bool = False
    duplicate: float = 0.0
    partition: str = ""
    crash_restart: int = 0
    clients: int = 1
    requests: int = 3  # per client
    latency_ms: float = 10.0
    bandwidth_mbps: float = 0.0
    duration: float = 3.0  # the fault phase: requests and faults happen in it; then heal
    settle: float = 60.0  # after healing, everything submitted must be decided within
    authenticator: str = "mac"
    timers: str = "short"
    epoch: float = 0.0  # the replicas' clocks read this at time 0 (a host after uptime)
    spoil_tags: bool = False  # client c0 is faulty: each request's MAC tags hold at some
    # replicas only (a random non-empty proper subset spoiled per send; needs ed25519)
    curve: bool = True  # clients' connections authenticated (CurveZMQ): a replica knows a
    # frame came from the client it names (False: as a node without CURVE, it never does)
    trace: bool = False

    def command(self, seed: int) -> str:
        """The command line that replays this run."""
        parts = [f"dtnbus simulate --nodes {self.nodes} --seed {seed}"]
        modes = [f"{i}={m}" for i, m in sorted(self.byzantine.items())]
        modes += [str(m) for m in self.unplaced]
        if modes:
            parts.append(f"--byzantine {','.join(modes)}")
        defaults = SimOptions()
        for name, flag in (("drop", "--drop"), ("duplicate", "--duplicate"),
                           ("crash_restart", "--crash-restart"), ("clients", "--clients"),
                           ("requests", "--requests"), ("latency_ms", "--latency"),
                           ("bandwidth_mbps", "--bandwidth"), ("duration", "--duration"),
                           ("settle", "--settle"), ("authenticator", "--authenticator"),
                           ("timers", "--timers"), ("epoch", "--epoch")):
            value = getattr(self, name)
            if value != getattr(defaults, name):
                parts.append(f"{flag} {value:g}" if isinstance(value, float) else
                             f"{flag} {value}")
        if self.reorder:
            parts.append("--reorder")
        if self.spoil_tags:
            parts.append("--spoil-tags")
        if not self.curve:
            parts.append("--no-curve")
        if self.partition:
            parts.append(f"--partition '{self.partition}'")
        return " ".join(parts)


def spoil_error(options: SimOptions) -> str | None:
    """Why `spoil_tags` cannot run with these options (None: it can)."""
    if options.spoil_tags and (options.authenticator != "ed25519" or options.nodes < 2):
        return ("--spoil-tags needs --authenticator ed25519 (only real keys give a MAC tag "
                "per replica) and at least two replicas")
    return None


def spoil_tags(frame: bytes, replicas: Iterable[int]) -> bytes:
    """A faulty client's request: the same frame with the MAC tags of `replicas` spoiled
    (each of them drops it as `bad_signature`; the others accept it)."""
    payload, signature, tags = msgpack.unpackb(frame)
    spoilt = bytearray(tags)
    for replica in replicas:
        spoilt[replica * MAC_BYTES] ^= 1
    return msgpack.packb([payload, signature, bytes(spoilt)])


@dataclass(frozen=True, slots=True)
class Violation:
    # agreement | double-execution | exception | client-safety | lost | liveness | busy-loop
    kind: str
    detail: str
    at: float
    replica: int | None = None
    seq: int | None = None
    ident: tuple | None = None


@dataclass
class RunResult:
    seed: int
    nodes: int
    byzantine: dict[int, str]
    violations: list[Violation]
    committed_batches: int
    virtual_seconds: float
    wall_seconds: float
    messages: int
    delivered: int
    lost: int
    drops: Counter
    views: int  # the highest view a correct replica entered
    requests: int
    accepted: int
    decided_at: float | None
    schedule: list[str]
    by_kind: Counter = field(default_factory=Counter)  # messages sent, by kind
    last_execute_at: float = 0.0


@dataclass
class _Pending(Answers):
    number: int
    digest: bytes
    frame: bytes
    sent_at: float
    retry: float = CLIENT_RETRY
    retry_count: int = 0
    accepted: ReplyKey | None = None
    accepted_at: float = 0.0
    view_sent: int = 0  # as the real client's (SignAfterRetry)


class SimClient:
    """A client session: signs requests, sends them to every replica, retransmits what is
    not accepted, accepts on the real client's rule (`dtnbus.client.accepts`). Replies
    are attributed to the replica that sent them (authenticated channels)."""

    def __init__(self, name: str, codec: Codec, n: int, session: int = 1) -> None:
        self.name = name
        self.codec = codec
        self.n = n
        self.session = session
        self.next_number = 1
        self.pending: dict[int, _Pending] = {}
        self.signing = SignAfterRetry()  # as the real client
        self.signs = True  # False: a faulty client that never signs (--spoil-tags)

    def new_request(self, now: float) -> _Pending:
        number = self.next_number
        self.next_number += 1
        req = Request(self.name, self.session, number, (b"%s-%d" % (self.name.encode(), number),))
        frame, digest = self.codec.encode_request(  # as the real client: a MAC vector
            req, "signature" if self.signs and self.signing.signs_new(now) else "mac")
        p = self.pending[number] = _Pending(number, digest, frame, now,  # when keys allow
                                            view_sent=self.signing.view)
        return p

    def on_reply(self, sender: int, reply: Reply, now: float) -> _Pending | None:
        """Note one reply; the request if this reply made the client accept it."""
        p = self.pending.get(reply.number)
        if p is None or p.accepted is not None or reply.session != self.session or \
                reply.request != p.digest or reply.outcome in (Outcome.BUSY, Outcome.REFUSED):
            return None
        self.signing.saw(reply.view)
        key: ReplyKey = (reply.seq, reply.position, reply.result, reply.outcome)
        p.note(sender, key, reply.view, reply.tentative, reply.speculative)
        if p.decides(key, self.n):
            p.accepted, p.accepted_at = key, now
            self.signing.accepted(p.retry_count > 0, p.view_sent, now)
            return p
        return None


class Simulation:
    """One run: build it with options and a seed, then `run()`."""

    def __init__(self, options: SimOptions, seed: int) -> None:
        self.options = options
        self.seed = seed
        n = self.n = options.nodes
        if n < 1:
            raise ValueError("a cluster needs at least one replica")
        if options.timers not in TIMERS:
            raise ValueError(f"timers {options.timers!r}: use one of {TIMERS}")
        if (why := spoil_error(options)) is not None:
            raise ValueError(why)
        rng = self._rng("placement")
        byzantine = dict(options.byzantine)
        free = [i for i in range(n) if i not in byzantine]
        for spec in options.unplaced:
            if not free:
                raise ValueError(f"more Byzantine modes than the {n} replicas")
            pick = rng.choice(free)
            free.remove(pick)
            byzantine[pick] = spec
        self.byzantine = byzantine
        self.correct = [i for i in range(n) if i not in byzantine]
        self.is_correct = [i not in byzantine for i in range(n)]
        names = tuple(f"c{k}" for k in range(options.clients))
        members = self.members = make_members(n, names, options.authenticator, seed)
        profile = LinkProfile(bandwidth_mbps=options.bandwidth_mbps,
                              latency_ms=options.latency_ms)
        self.profile = profile
        heal = options.duration
        partitions = parse_partitions(options.partition, n, heal, self._rng("partition")) \
            if options.partition else []
        self.network = Network(profile, Faults(options.drop, options.reorder,
                                               options.duplicate, tuple(partitions), heal),
                               self._rng)
        overrides = SHORT_TIMERS if options.timers == "short" else {}
        self.hosts: list[ReplicaHost] = []
        collusion: dict = {}  # Byzantine replicas share what they lied about
        for i in range(n):
            codec = members.codec(i, SIM_MAX_FRAME)
            behaviour = None
            if i in byzantine:
                behaviour = make_behaviour(byzantine[i], Context(
                    replica=None, sign=codec.encode, clients=names,
                    rng=self._rng(f"byzantine/{i}"),
                    max_frame=SIM_MAX_FRAME, base_delay=self.network.hop(),
                    collusion=collusion))
            self.hosts.append(ReplicaHost(ReplicaConfig(i, n, **overrides), codec, behaviour,
                                          epoch=options.epoch, curve=options.curve))
        self.clients = [SimClient(name, members.codec(name, SIM_MAX_FRAME), n)
                        for name in names]
        self.client_index = {c.name: k for k, c in enumerate(self.clients)}
        self.others = [[j for j in range(n) if j != i] for i in range(n)]
        self.everyone = list(range(n))
        # the clock and what is due
        self.heap: list[tuple] = []
        self.order = itertools.count()
        self.now = 0.0
        self.timer_at = [math.inf] * n
        self.dirty: set[int] = set()
        self.down = [False] * n
        self.stopped = False
        self.healed = False
        # what happened
        self.messages = 0
        self.delivered = 0
        self.drops: Counter = Counter()
        self.refused: Counter = Counter()  # (message kind, reason) of receive-time drops
        self.by_kind: Counter = Counter()  # replica-to-replica messages sent, by kind
        self.last_execute_at = 0.0  # when a correct replica last executed a block
        self.violations: list[Violation] = []
        self.at_seq: dict[int, tuple[bytes, int]] = {}  # seq -> (hash, first replica)
        self.executed: list[set[tuple[str, int, int]]] = [set() for _ in range(n)]
        self.max_view = 0
        self.decided_at: float | None = None
        self.schedule: list[str] = []
        self.trace: list[tuple] | None = [] if options.trace else None
        self._spoil_rng = self._rng("spoil")
        # a faulty client (--spoil-tags: c0) is owed nothing: its requests need not be
        # decided, only never break agreement or exactly-once
        self.faulty = self.clients[:1] if options.spoil_tags else []
        for client in self.faulty:
            client.signs = False
        self.checked = [c for c in self.clients if c not in self.faulty]
        self._plan(partitions)

    def _rng(self, aspect: str) -> random.Random:
        """One random stream per aspect of a run, so that leaving one fault out (to shrink
        a failing run) does not change the draws of the others."""
        return random.Random(f"dtnbus-sim/{self.seed}/{aspect}")

    # ------------------------------------------------------------ the schedule

    def _at(self, t: float, kind: int, a: object, b: object = None) -> None:
        heapq.heappush(self.heap, (t, next(self.order), kind, a, b))

    def _plan(self, partitions: list) -> None:
        o, rng = self.options, self._rng("submissions")
        duration = o.duration
        for k, client in enumerate(self.clients):
            times = sorted(rng.uniform(0, duration) for _ in range(o.requests)) \
                if duration > 0 else [0.0] * o.requests
            for t in times:
                self._at(t, ACTION, self._submit, k)
            self.schedule.append(f"{client.name} submits at " +
                                 ", ".join(f"{t:.3f}" for t in times))
        for p in partitions:
            self.schedule.append(f"partition {p}")
        if duration > 0 and self.correct:
            rng = self._rng("crashes")
            for _ in range(o.crash_restart):
                i = rng.choice(self.correct)
                t = rng.uniform(0, duration)
                up = min(duration, t + rng.uniform(0.1, 1.0))
                self._at(t, ACTION, self._crash, i)
                self._at(up, ACTION, self._restart, i)
                self.schedule.append(f"replica {i} crashes at {t:.3f}, restarts at {up:.3f}")
        self._at(duration, ACTION, self._heal)
        if self.byzantine:
            self.schedule.insert(0, "byzantine " + ", ".join(
                f"{i}={m}" for i, m in sorted(self.byzantine.items())))

    def _submit(self, k: int) -> None:
        client = self.clients[k]
        p = client.new_request(self.now)
        self._note(f"{client.name} submits #{p.number}")
        self._client_send(client, p)

    def _client_send(self, client: SimClient, p: _Pending) -> None:
        packet = Packet(self._outgoing(client, p.frame), client.name)
        self._route(client.name, self.everyone, packet)
        self._at(self.now + p.retry, ACTION, self._retry, (client, p.number))

    def _outgoing(self, client: SimClient, frame: bytes) -> bytes:
        """The frame as the client puts it on the wire: the faulty one (--spoil-tags)
        spoils a random non-empty proper subset of its tags on every send."""
        if client not in self.faulty:
            return frame
        rng = self._spoil_rng
        return spoil_tags(frame, rng.sample(self.everyone, rng.randint(1, self.n - 1)))

    def _retry(self, arg: tuple[SimClient, int]) -> None:
        client, number = arg
        p = client.pending[number]
        if p.accepted is None:
            p.retry = min(4.0, p.retry * 2)
            p.retry_count += 1
            if client.signs:  # as the real client: signed now
                p.frame = client.signing.resend(client.codec, p.frame, timed_out=True)
            self._client_send(client, p)  # when sent again (a faulty one spoils it again)

    def _crash(self, i: int) -> None:
        if not self.down[i]:
            self.down[i] = True
            self._note(f"replica {i} crashes")

    def _restart(self, i: int) -> None:
        if not self.down[i]:
            return
        self.down[i] = False
        self._note(f"replica {i} restarts from its disk")
        try:
            self.hosts[i].restart()
        except Exception:
            self._exception(i, "restore")
            return
        self.timer_at[i] = math.inf
        self.dirty.add(i)

    def _heal(self, _: object = None) -> None:
        self.healed = True
        self._note("the network heals")
        for i in range(self.n):
            self._restart(i)
        self._check_done()

    def _check_done(self, _: object = None) -> None:
        """After healing: stop once every request is accepted and decided everywhere."""
        if self.stopped:
            return
        if self._all_decided():
            self.decided_at = self.now
            self.stopped = True
        else:
            self._at(self.now + CHECK_EVERY, ACTION, self._check_done)

    def _all_decided(self) -> bool:
        if any(p.accepted is None for c in self.checked for p in c.pending.values()):
            return False
        hosts = self.hosts
        return all(hosts[i].replica.clients.is_decided(c.name, c.session, number)
                   for c in self.checked for number in c.pending for i in self.correct)

    # ------------------------------------------------------------ the loop

    def run(self) -> RunResult:
        wall = time.perf_counter()
        for i in range(self.n):
            self._wake(i, 0.0)
        deadline = self.options.duration + self.options.settle
        self._loop(deadline)
        if not self.violations and not self.stopped:
            self._liveness_failed(deadline)
        if not self.violations:
            self._check_clients()
        return self._result(time.perf_counter() - wall)

    def _wake(self, i: int, at: float) -> None:
        if at < self.timer_at[i]:
            self.timer_at[i] = at
            heapq.heappush(self.heap, (at, next(self.order), TIMER, i, None))

    def _loop(self, until: float) -> None:
        heap = self.heap
        pop = heapq.heappop
        deliver = self._deliver
        while not self.stopped:
            if self.dirty and (not heap or heap[0][0] > self.now):
                self._tick_dirty()
                continue
            if not heap or heap[0][0] > until:
                if heap:
                    self.now = until
                return
            t, _, kind, a, b = pop(heap)
            self.now = t
            if kind == DELIVER:
                if type(a) is list:
                    self._deliver_many(a, b)
                else:
                    deliver(a, b)
            elif kind == TIMER:
                if self.timer_at[a] == t:
                    self.timer_at[a] = math.inf
                    if not self.down[a]:
                        self.dirty.add(a)
            elif kind == TO_CLIENT:
                self._client_reply(a, b)
            else:
                a(b)

    def _tick_dirty(self) -> None:
        now = self.now
        dirty, self.dirty = self.dirty, set()
        hosts, down = self.hosts, self.down
        for i in sorted(dirty):
            if down[i]:
                continue
            host = hosts[i]
            wake = host.next_wakeup()
            if wake is not None and wake <= now:  # by contract, tick has nothing to do earlier
                try:
                    effects = host.tick(now)
                except Exception:
                    self._exception(i, "tick")
                    return
                if effects:
                    self._dispatch(i, effects)
                wake = host.next_wakeup()
                if wake is not None and wake <= now and i in self.correct:
                    # a tick does what is due: due again at once is a node's busy loop
                    self._violate(Violation("busy-loop", f"replica {i} is due again at "
                                            f"{wake:.6f} right after its tick at {now:.6f}",
                                            now, i))
                    return
            if wake is not None:
                self._wake(i, max(wake, now + MIN_TICK))

    def _deliver_many(self, dsts: list[int], packet: Packet) -> None:
        """One broadcast reaching many replicas at one instant: the hot loop of a large
        simulation (`_deliver` without tracing, with everything bound locally)."""
        if self.trace is not None:
            for dst in dsts:
                self._deliver(dst, packet)
            return
        hosts, down, now, dirty = self.hosts, self.down, self.now, self.dirty
        for dst in dsts:
            if down[dst] or self.stopped:
                continue
            self.delivered += 1
            try:
                effects = hosts[dst].receive(packet, now)
            except Exception:
                self._exception(dst, "receive")
                return
            if effects:
                if type(effects[0]) is Drop:
                    raw = packet.raw
                    self.refused[(type(raw.msg).__name__ if raw is not None else "frame",
                                  effects[0].reason)] += 1  # type: ignore[union-attr]
                self._dispatch(dst, effects)
            dirty.add(dst)

    def _deliver(self, dst: int | str, packet: Packet) -> None:
        if type(dst) is str:
            return
        if self.down[dst] or self.stopped:  # type: ignore[index]
            return
        self.delivered += 1
        try:
            effects = self.hosts[dst].receive(packet, self.now)  # type: ignore[index]
        except Exception:
            self._exception(dst, "receive")  # type: ignore[arg-type]
            return
        if self.trace is not None:
            note = next((e.reason for e in effects if type(e) is Drop), "")
            self.trace.append((self.now, "recv", packet, dst, note))
        if effects:
            if type(effects[0]) is Drop:  # what was refused, by kind (the others are rare)
                raw = packet.raw
                self.refused[(type(raw.msg).__name__ if raw is not None else "frame",
                              effects[0].reason)] += 1  # type: ignore[union-attr]
            self._dispatch(dst, effects)  # type: ignore[arg-type]
        self.dirty.add(dst)  # type: ignore[arg-type]

    def _dispatch(self, src: int, effects: list[Effect]) -> None:
        for eff in effects:
            kind = type(eff)
            if kind is Broadcast:
                self.by_kind[type(eff.msg).__name__] += self.n - 1  # type: ignore[union-attr]
                self._send(src, self.others[src], eff.frame)  # type: ignore[union-attr]
            elif kind is Send or kind is Forward:
                to = eff.to  # type: ignore[union-attr]
                if 0 <= to < self.n and to != src:
                    self.by_kind[type(eff.msg).__name__ if kind is Send  # type: ignore[union-attr]
                                 else "Forward"] += 1
                    self._send(src, [to], eff.frame)  # type: ignore[union-attr]
            elif kind is SendClient:
                k = self.client_index.get(eff.client)  # type: ignore[union-attr]
                if k is not None:
                    for at, _ in self.network.route(src, [eff.client], 0,  # type: ignore[union-attr]
                                                     self.now):
                        self._at(at, TO_CLIENT, k, (src, eff.msg))  # type: ignore[union-attr]
            elif kind is Execute:
                self._executed(src, eff)  # type: ignore[arg-type]
            elif kind is Drop:
                self.drops[eff.reason] += 1  # type: ignore[union-attr]
            elif kind is ViewEntered or kind is ViewChangeStarted:
                if self.is_correct[src] and kind is ViewEntered:
                    self.max_view = max(self.max_view, eff.view)  # type: ignore[union-attr]
                self._note(f"replica {src} {'enters' if kind is ViewEntered else 'leaves for'} "
                           f"view {eff.view}: {eff.reason}")  # type: ignore[union-attr]

    def _send(self, src: int, dsts: list[int], frame: bytes) -> None:
        packet = Packet(frame, src)
        self._route(src, dsts, packet)

    def _route(self, src: object, dsts: list, packet: Packet) -> None:
        self.messages += len(dsts)
        heap, order = self.heap, self.order
        for at, receivers in self.network.route(src, dsts, len(packet.frame), self.now):
            heapq.heappush(heap, (at, next(order), DELIVER,
                                  receivers if len(receivers) > 1 else receivers[0], packet))

    def _client_reply(self, k: int, item: tuple[int, Reply]) -> None:
        sender, reply = item
        client = self.clients[k]
        p = client.on_reply(sender, reply, self.now)
        if p is not None:
            self._note(f"{client.name} accepts #{p.number}: seq {p.accepted[0]}, "  # type: ignore[index]
                       f"outcome {Outcome.NAMES.get(p.accepted[3], '?')}")  # type: ignore[index]
            self._check_accepted(client, p)

    # ------------------------------------------------------------ invariants

    def _executed(self, i: int, block: Execute) -> None:
        if self.trace is not None:
            self.trace.append((self.now, "exec", i, block.seq, block.hash, block.view,
                               [(r.client, r.number, r.outcome) for r in block.requests]))
        if not self.is_correct[i]:
            return
        self.last_execute_at = self.now
        first = self.at_seq.get(block.seq)
        if first is None:
            self.at_seq[block.seq] = (block.hash, i)
        elif first[0] != block.hash:
            self._violate(Violation(
                "agreement", f"replicas {first[1]} and {i} executed different blocks at seq "
                f"{block.seq} ({first[0].hex()[:12]} vs {block.hash.hex()[:12]})",
                self.now, i, block.seq))
        done = self.executed[i]
        for r in block.requests:
            if r.outcome == Outcome.EXECUTED:
                ident = (r.client, r.session, r.number)
                if ident in done:
                    self._violate(Violation(
                        "double-execution", f"replica {i} executed {ident} a second time at "
                        f"seq {block.seq}", self.now, i, block.seq, ident))
                done.add(ident)

    def _check_accepted(self, client: SimClient, p: _Pending, final: bool = False) -> None:
        seq, _position, result, outcome = p.accepted  # type: ignore[misc]
        ident = (client.name, client.session, p.number)
        if outcome != Outcome.EXECUTED:
            self._violate(Violation("lost", f"{client.name} #{p.number} was answered "
                                    f"{Outcome.NAMES.get(outcome, outcome)}: never executed",
                                    self.now, None, seq, ident))
            return
        known = self.at_seq.get(seq)
        if known is None:
            if final:
                self._violate(Violation("client-safety", f"{client.name} accepted #{p.number} "
                                        f"at seq {seq}, which no correct replica executed",
                                        self.now, None, seq, ident))
            return
        if known[0] != result:
            self._violate(Violation("client-safety", f"{client.name} accepted #{p.number} at "
                                    f"seq {seq} with a block hash no correct replica has",
                                    self.now, None, seq, ident))

    def _check_clients(self) -> None:
        # (a faulty client's acceptance is still checked against what was executed when it
        # accepts; the run may end before its last accepted request executes anywhere)
        for client in self.checked:
            for p in client.pending.values():
                if p.accepted is not None:
                    self._check_accepted(client, p, final=True)

    def _liveness_failed(self, deadline: float) -> None:
        undecided = []
        for client in self.checked:
            for number, p in client.pending.items():
                missing = [i for i in self.correct if not self.hosts[i].replica.clients
                           .is_decided(client.name, client.session, number)]
                if p.accepted is None or missing:
                    undecided.append(f"{client.name}#{number}"
                                     + (f" (undecided at {missing})" if missing else
                                        " (not accepted)"))
        states = "; ".join(
            f"{i}: view {h.replica.view}"
            + ("" if h.replica.active else f" (changing, {self._votes(h)})")
            + f" executed {h.replica.last_executed} pending {h.replica.pending}"
            for i, h in enumerate(self.hosts) if self.is_correct[i])
        views = Counter({k: c for k, c in self.refused.items()
                         if k[0] in ("NewView", "ViewChange") and k[1] != "duplicate"})
        refused = ", ".join(f"{kind} {reason} x{count}"
                            for (kind, reason), count in views.most_common(3))
        self._violate(Violation("liveness", f"{len(undecided)} request(s) not decided "
                                f"{self.options.settle:g} s after the network healed: "
                                f"{', '.join(undecided[:6])}; correct replicas: {states}"
                                + (f"; refused: {refused}" if refused else ""), deadline))

    @staticmethod
    def _votes(host: ReplicaHost) -> str:
        """The VIEW-CHANGEs a replica holds for its view, and for it or later ones."""
        replica = host.replica
        held = replica.view_changes.values()
        same = sum(1 for v in held if v.new_view == replica.view)
        later = sum(1 for v in held if v.new_view > replica.view)
        return f"holds {same} votes for it, {later} for later views, q = {replica.q}"

    def _exception(self, i: int, where: str) -> None:
        tb = traceback.format_exc(limit=-4).strip().splitlines()
        self._violate(Violation("exception", f"replica {i} raised in {where}: {tb[-1]} | "
                                + " | ".join(line.strip() for line in tb[-6:-1]),
                                self.now, i))

    def _violate(self, violation: Violation) -> None:
        self.violations.append(violation)
        self.stopped = True

    def _note(self, text: str) -> None:
        if self.trace is not None:
            self.trace.append((self.now, "note", text))

    # ------------------------------------------------------------ the result

    def _result(self, wall: float) -> RunResult:
        accepted = sum(p.accepted is not None for c in self.clients for p in c.pending.values())
        return RunResult(
            self.seed, self.n, {i: str(m) for i, m in sorted(self.byzantine.items())},
            self.violations, len(self.at_seq), self.now, wall, self.messages, self.delivered,
            self.network.lost, self.drops, self.max_view,
            sum(len(c.pending) for c in self.clients), accepted, self.decided_at,
            self.schedule, self.by_kind, self.last_execute_at)

