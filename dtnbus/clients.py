"""The client table: which requests have been decided, as a pure function of the order.

A request is named by `(client, session, number)`. For each session the table keeps a
watermark `low` (every number at or below it is decided) and the numbers above it that
executed, with their request digests. Executing an ordered request is then one of
(`messages.Outcome`):

- EXECUTED: first time this identity is ordered;
- DUPLICATE: ordered again with the same digest (a faulty primary, or a view change);
- CONFLICT: the identity executed with a different request: refused, never confused;
- STALE: at or below the watermark, or in a session that expired: decided long ago
  (the ledger says how), never executed now;
- REFUSED: the client is not admitted at this point in the order (`dtnbus.admission`:
  an operator's executed admission command changes the admitted set for every later
  request, the same on every replica).

Every decision depends only on the ordered history, never on time or on what a replica
happened to keep in memory, so every correct replica decides the same; the block hash
covers the decisions, so a replica that decided otherwise is caught at the next
checkpoint. Memory is bounded by deterministic rules: a session holds at most `window`
numbers above its watermark (older gaps become STALE), a client at most
`sessions_per_client` sessions and the table at most `max_sessions`; the least recently
used session goes first and raises its client's `floor` (sessions at or below it are
expired). The changes each block makes are handed out (`drain`) to be persisted with it,
so a restarted replica resumes with exactly the same table.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from dtnbus import admission
from dtnbus.effects import ClientChanges, SessionState
from dtnbus.messages import Outcome

Entry = tuple[str, int, int, bytes, tuple[bytes, ...]]  # client, session, number, digest, txs
Decision = tuple[bytes, list[admission.AdmissionChange]]  # outcomes, admission changes


@dataclass(slots=True)
class _Session:
    low: int = 0
    done: dict[int, bytes] = field(default_factory=dict)


class ClientTable:
    def __init__(self, window: int = 4096, sessions_per_client: int = 1024,
                 max_sessions: int = 200_000, admitted: dict[str, str] | None = None,
                 operators: frozenset[str] = frozenset(), open_admission: bool = False
                 ) -> None:
        """`admitted`: client -> public key text at genesis (None: no admission control,
        every client the wire layer authenticates may execute: tests and old clusters).
        `operators` may admit and remove clients; `open_admission`: any "pk:" identity."""
        self.control = admitted is not None or open_admission
        self.listed: dict[str, str] = dict(admitted or {})  # "" = removed
        self.curve_keys: dict[str, str] = {}  # admitted by command: their CURVE keys
        self.operators = operators
        self.open = open_admission
        self._admission_changed: dict[str, tuple[str, str]] = {}
        self.window = window
        self.sessions_per_client = sessions_per_client
        self.max_sessions = max_sessions
        self.sessions: OrderedDict[tuple[str, int], _Session] = OrderedDict()  # LRU order
        self.per_client: dict[str, int] = {}
        self.floors: dict[str, int] = {}
        self._touched = 0
        self._rank: dict[tuple[str, int], int] = {}
        self._dirty: set[tuple[str, int]] = set()
        self._evicted: list[tuple[str, int]] = []
        self._floors_changed: set[str] = set()

    # ------------------------------------------------------------ queries

    def admits(self, client: str) -> bool:
        """Is this client admitted at this point in the order?"""
        if not self.control:
            return True
        key = self.listed.get(client)
        if key is not None:
            return key != ""
        return self.open and admission.open_key(client) is not None

    def decide(self, client: str, session: int, number: int, digest: bytes) -> int:
        """What executing this request now would do (an Outcome), without doing it."""
        if not self.admits(client):
            return Outcome.REFUSED
        sess = self.sessions.get((client, session))
        if sess is None:
            return Outcome.STALE if session <= self.floors.get(client, -1) or number == 0 \
                else Outcome.EXECUTED
        if number <= sess.low:
            return Outcome.STALE
        held = sess.done.get(number)
        if held is None:
            return Outcome.EXECUTED
        return Outcome.DUPLICATE if held == digest else Outcome.CONFLICT

    def is_decided(self, client: str, session: int, number: int) -> bool:
        """Has this identity been decided (executed, or expired)? A request for it that
        arrives now only needs an answer, not an order."""
        sess = self.sessions.get((client, session))
        if sess is None:
            return session <= self.floors.get(client, -1) or number == 0
        return number <= sess.low or number in sess.done

    # ------------------------------------------------------------ execution

    def preview(self, requests: list[Entry]) -> bytes:
        """The outcomes executing this batch would have, one byte each, without executing
        it (tentative replies need the block hash before the batch commits)."""
        return self.decide_batch(requests)[0]

    def decide_batch(self, requests: list[Entry]) -> Decision:
        """Outcomes in order: each request sees the table as it was before the batch plus
        what the batch did before it (executions, admission changes). A function of the
        table and the batch only: `execute_batch` takes it back while neither changed."""
        seen: dict[tuple[str, int, int], bytes] = {}
        changes: list[admission.AdmissionChange] = []
        saved = dict(self.listed)
        out = bytearray()
        try:
            for client, session, number, digest, txs in requests:
                key = (client, session, number)
                held = seen.get(key)
                if held is not None and self.admits(client):
                    out.append(Outcome.DUPLICATE if held == digest else Outcome.CONFLICT)
                    continue
                outcome = self.decide(client, session, number, digest)
                if outcome == Outcome.EXECUTED:
                    seen[key] = digest
                    if client in self.operators:
                        for tx in txs:
                            change = admission.decode(tx)
                            if change is not None:
                                changes.append(change)
                                self.listed[change.client] = \
                                    change.public_key if change.action == "add" else ""
                out.append(outcome)
        finally:
            self.listed = saved
        return bytes(out), changes

    def execute_batch(self, requests: list[Entry], decided: Decision | None = None) -> bytes:
        """Decide one ordered batch and record it; returns one Outcome byte per request.
        Decisions inside a batch see the table as it was before the batch plus what the
        batch did so far; windows and evictions apply after the batch, so `preview`
        computes exactly the same outcomes. `decided`: `decide_batch`'s answer for this
        batch on this table, if the caller has it (a tentative reply computed it)."""
        outcomes, changes = decided if decided is not None else self.decide_batch(requests)
        for change in changes:
            key = change.public_key if change.action == "add" else ""
            curve = change.curve_key if change.action == "add" else ""
            self.listed[change.client] = key
            self.curve_keys[change.client] = curve
            self._admission_changed[change.client] = (key, curve)
        touched: list[tuple[str, int]] = []
        for (client, session, number, digest, _txs), outcome in zip(requests, outcomes,
                                                                    strict=True):
            if outcome != Outcome.EXECUTED:
                continue
            key = (client, session)
            sess = self.sessions.get(key)
            if sess is None:
                sess = self.sessions[key] = _Session()
                self.per_client[client] = self.per_client.get(client, 0) + 1
            sess.done[number] = digest
            while sess.low + 1 in sess.done:  # the usual case: numbers execute in order
                sess.low += 1
                del sess.done[sess.low]
            self._touch(key)
            touched.append(key)
        for key in touched:
            sess = self.sessions.get(key)
            if sess is not None and len(sess.done) > self.window:
                # a gap that never fills: the oldest numbers expire, deterministically
                for old in sorted(sess.done)[:len(sess.done) - self.window]:
                    sess.low = old
                    del sess.done[old]
                while sess.low + 1 in sess.done:
                    sess.low += 1
                    del sess.done[sess.low]
        for client in dict.fromkeys(k[0] for k in touched):
            self._bound(client)
        return outcomes

    def _touch(self, key: tuple[str, int]) -> None:
        self.sessions.move_to_end(key)
        self._touched += 1
        self._rank[key] = self._touched
        self._dirty.add(key)

    def _bound(self, client: str) -> None:
        while self.per_client.get(client, 0) > self.sessions_per_client:
            self._evict(next(k for k in self.sessions if k[0] == client))
        while len(self.sessions) > self.max_sessions:
            self._evict(next(iter(self.sessions)))

    def _evict(self, key: tuple[str, int]) -> None:
        client, session = key
        del self.sessions[key]
        self._rank.pop(key, None)
        self._dirty.discard(key)
        self._evicted.append(key)
        self.per_client[client] -= 1
        if not self.per_client[client]:
            del self.per_client[client]
        if session > self.floors.get(client, -1):
            self.floors[client] = session
            self._floors_changed.add(client)

    # ------------------------------------------------------------ persistence

    def drain(self) -> ClientChanges:
        """The changes since the last drain, to persist with the block that made them."""
        sessions = tuple(self.state_of(k) for k in sorted(self._dirty, key=self._rank.get))
        changes = ClientChanges(sessions, tuple(self._evicted),
                                tuple((c, self.floors[c]) for c in sorted(self._floors_changed)),
                                tuple((c, k, ck) for c, (k, ck)
                                      in sorted(self._admission_changed.items())))
        self._dirty.clear()
        self._evicted = []
        self._floors_changed.clear()
        self._admission_changed = {}
        return changes

    def state_of(self, key: tuple[str, int]) -> SessionState:
        sess = self.sessions[key]
        return SessionState(key[0], key[1], sess.low, tuple(sorted(sess.done.items())),
                            self._rank[key])

    def restore(self, sessions: list[SessionState], floors: dict[str, int],
                admitted: dict[str, tuple[str, str]]) -> None:
        """Resume from persisted state: the same sessions, in the same LRU order, and the
        admission changes the order made on top of the genesis list."""
        control, listed, operators, open_ = self.control, self.listed, self.operators, self.open
        self.__init__(self.window, self.sessions_per_client, self.max_sessions)  # type: ignore[misc]
        self.control, self.operators, self.open = control, operators, open_
        self.listed = {**listed, **{c: key for c, (key, _curve) in admitted.items()}}
        self.curve_keys = {c: curve for c, (_key, curve) in admitted.items()}
        for state in sorted(sessions, key=lambda s: s.touched):
            key = (state.client, state.session)
            self.sessions[key] = _Session(state.low, dict(state.done))
            self.per_client[state.client] = self.per_client.get(state.client, 0) + 1
            self._rank[key] = state.touched
            self._touched = max(self._touched, state.touched)
        self.floors = dict(floors)
