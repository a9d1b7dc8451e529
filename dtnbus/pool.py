"""The request pool: request bodies by digest, the order they wait in, who needs them.

One invariant, owned here: **a body leaves the pool only when no live slot refers to it
and it is not waiting to be ordered.** A faulty primary may order one request at two
sequence numbers; garbage-collecting the first slot must not free a body the second
still needs (that freed body once crashed every correct replica at once).

The bound (count and bytes) is on the requests that wait to be ordered: what a client can
pile up. Bodies that slots order, or that executed and wait for a stable checkpoint, are
bounded by the window and the batch sizes instead; counting them too once let a pool fill
with executed bodies before the first checkpoint, refuse every new request, and so never
reach the checkpoint that would empty it (chaos-3). A body a slot is missing is always
taken. The pool also keeps the arrival order of requests not yet executed, so the
view-change timer can run on the oldest one (a primary that orders everyone but one
client is suspected all the same).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dtnbus.messages import Request


@dataclass(slots=True)
class Pooled:
    msg: Request
    frame: bytes
    arrived: float
    slots: set[int] = field(default_factory=set)  # live sequences that order it
    executed: bool = False
    ahead: int = 0  # requests not yet executed when it arrived (the queue before it)


class RequestPool:
    """Bodies, the pending (unordered) queue, and the slots that wait for missing bodies."""

    def __init__(self, max_requests: int, max_bytes: int) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.bodies: dict[bytes, Pooled] = {}
        self.pending: dict[bytes, None] = {}  # not yet ordered, in arrival order
        # (client, session, number) -> pending digests under it (several only from a
        # client that reuses an identity)
        self.pending_identities: dict[tuple[str, int, int], list[bytes]] = {}
        self.pending_txs = 0
        self.pending_bytes = 0
        self.unexecuted: dict[bytes, float] = {}  # digest -> arrival, in arrival order
        self.missing: dict[bytes, set[int]] = {}  # digest we lack -> slots that need it
        self.bytes = 0

    def __contains__(self, digest: bytes) -> bool:
        return digest in self.bodies

    def __len__(self) -> int:
        return len(self.bodies)

    def get(self, digest: bytes) -> Pooled | None:
        return self.bodies.get(digest)

    def has_room(self, size: int) -> bool:
        """Room for one more request to wait in the pending queue."""
        return len(self.pending) < self.max_requests and \
            self.pending_bytes + size <= self.max_bytes

    def _enqueue(self, digest: bytes, pooled: Pooled) -> None:
        self.pending[digest] = None
        self.pending_txs += len(pooled.msg.txs)
        self.pending_bytes += len(pooled.frame)
        msg = pooled.msg
        self.pending_identities.setdefault((msg.client, msg.session, msg.number),
                                           []).append(digest)

    def _dequeue(self, digest: bytes, pooled: Pooled) -> None:
        del self.pending[digest]
        self.pending_txs -= len(pooled.msg.txs)
        self.pending_bytes -= len(pooled.frame)
        msg = pooled.msg
        ident = (msg.client, msg.session, msg.number)
        under = self.pending_identities[ident]
        under.remove(digest)
        if not under:
            del self.pending_identities[ident]

    def pending_under(self, client: str, session: int, number: int) -> tuple[bytes, ...]:
        """The pending requests named (client, session, number): once that identity is
        decided they will never be ordered (a primary answers them from the ledger)."""
        return tuple(self.pending_identities.get((client, session, number), ()))

    def add(self, digest: bytes, msg: Request, frame: bytes, now: float) -> set[int]:
        """Hold a new body. Returns the slots that were waiting for it (they now order it);
        with none, it waits to be ordered."""
        self.bodies[digest] = Pooled(msg, frame, now, ahead=len(self.unexecuted))
        self.bytes += len(frame)
        self.unexecuted[digest] = now
        waiting = self.missing.pop(digest, set())
        if waiting:
            self.bodies[digest].slots |= waiting
        else:
            self._enqueue(digest, self.bodies[digest])
        return waiting

    def oldest_waiting(self) -> float | None:
        """Arrival time of the oldest request not yet executed (None: nothing waits)."""
        return next(iter(self.unexecuted.values()), None)

    def oldest_pending(self) -> float | None:
        first = next(iter(self.pending), None)
        return None if first is None else self.bodies[first].arrived

    def take_batch(self, max_requests: int, max_txs: int) -> list[bytes]:
        """The next batch to order, oldest first (the caller then calls `order`)."""
        digests: list[bytes] = []
        txs = 0
        for digest in self.pending:
            if len(digests) >= max_requests:
                break
            size = len(self.bodies[digest].msg.txs)
            if digests and txs + size > max_txs:
                break
            digests.append(digest)
            txs += size
        return digests

    def order(self, seq: int, digests: tuple[bytes, ...]) -> set[bytes]:
        """Slot `seq` orders these digests: take them off the pending queue and note the
        reference. Returns the digests whose bodies we lack (to fetch)."""
        missing: set[bytes] = set()
        for digest in digests:
            pooled = self.bodies.get(digest)
            if pooled is None:
                missing.add(digest)
                self.missing.setdefault(digest, set()).add(seq)
                continue
            pooled.slots.add(seq)
            if digest in self.pending:
                self._dequeue(digest, pooled)
        return missing

    def release(self, seq: int, digests: tuple[bytes, ...], requeue: bool) -> None:
        """Slot `seq` no longer orders these digests (collected below a stable checkpoint,
        or dropped by a view change). A body no live slot needs leaves the pool, unless
        `requeue` and it was never executed: then it waits to be ordered again."""
        for digest in digests:
            waiting = self.missing.get(digest)
            if waiting is not None:
                waiting.discard(seq)
                if not waiting:
                    del self.missing[digest]
            pooled = self.bodies.get(digest)
            if pooled is None:
                continue
            pooled.slots.discard(seq)
            if pooled.slots or digest in self.pending:
                continue
            if requeue and not pooled.executed:
                self._enqueue(digest, pooled)
            else:
                self._remove(digest)

    def executed(self, digest: bytes) -> None:
        """Its batch executed: it no longer waits (the body stays while a slot needs it)."""
        self.unexecuted.pop(digest, None)
        pooled = self.bodies.get(digest)
        if pooled is not None:
            pooled.executed = True
            if not pooled.slots and digest not in self.pending:
                self._remove(digest)

    def discard_pending(self, digest: bytes) -> None:
        """A pending request turned out to be decided already (e.g. by state transfer)."""
        pooled = self.bodies.get(digest)
        if pooled is None or digest not in self.pending:
            return
        self._dequeue(digest, pooled)
        self.unexecuted.pop(digest, None)
        if not pooled.slots:
            self._remove(digest)

    def _remove(self, digest: bytes) -> None:
        pooled = self.bodies.pop(digest)
        self.bytes -= len(pooled.frame)
        self.unexecuted.pop(digest, None)
