"""Who does what for one committed reward, and when: a pure function of what the committed
ledger and the chain say (no I/O, no clock of its own), so every correct validator reaches the
same answer and the tests can drive it step by step.

- **Propose**: the designated node `(seq + k) mod n` (the k-th reward of block `seq`) proposes
  at once; node `designated + r` takes over `r` takeover periods after it saw the commit.
- **Confirm**: the q-1 nodes after the proposer (in id order, wrapping) confirm at once; the
  others only if the count is still short, one takeover period per rank later. So a reward
  costs exactly q-1 confirmations when everyone is up.
- **Execute**: the node whose confirmation was the q-th (chain order) executes at once; the
  next ones take over one period apart.

The chain keeps the rest honest: a reward's proposal index is the hash of its contents, so it
is proposed at most once, and executed at most once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProposalFacts:
    """A reward's proposal as the chain shows it, in node ids (None: not a validator)."""

    proposer: int | None
    confirmers: tuple[int | None, ...]  # chain order
    executed: bool
    seen_at: float  # when this node first saw the proposal
    threshold_seen_at: float | None  # ... and the q-th confirmation


@dataclass(frozen=True, slots=True)
class Duty:
    action: str | None  # "propose" | "confirm" | "execute" | None (nothing to do now)
    due: float | None  # when this node's turn comes (None: not this node's to do)
    why: str  # for `dtnbus reward status`


def designated_proposer(seq: int, k: int, n: int) -> int:
    return (seq + k) % n


def duty(me: int, n: int, q: int, takeover: float, now: float, designated: int,
         committed_seen_at: float, proposal: ProposalFacts | None) -> Duty:
    """What node `me` should do for one reward now."""
    if proposal is None:
        rank = (me - designated) % n
        due = committed_seen_at + rank * takeover
        if now >= due:
            return Duty("propose", due, "proposing" if rank == 0 else
                        f"proposing for node {designated} (took over)")
        return Duty(None, due, f"waiting for node {designated} to propose")
    if proposal.executed:
        return Duty(None, None, "paid")
    count = len(proposal.confirmers)
    if count < q:
        if me in proposal.confirmers:
            return Duty(None, None, f"confirmations {count}/{q}: waiting for the others")
        first = proposal.proposer if proposal.proposer is not None else designated
        rank = max(0, (me - first) % n - (q - 1))
        due = proposal.seen_at + rank * takeover
        if now >= due:
            return Duty("confirm", due, f"confirmations {count}/{q}: confirming")
        ahead = ", ".join(str((first + i) % n) for i in range(1, q))
        return Duty(None, due, f"confirmations {count}/{q}: waiting for nodes {ahead} "
                               "to confirm")
    executor = proposal.confirmers[q - 1]
    if executor is None:
        executor = proposal.proposer if proposal.proposer is not None else designated
    rank = (me - executor) % n
    seen = proposal.threshold_seen_at if proposal.threshold_seen_at is not None else now
    due = seen + rank * takeover
    if now >= due:
        return Duty("execute", due, f"confirmations {count}/{q}: executing" if rank == 0
                    else f"confirmations {count}/{q}: executing for node {executor} (took over)")
    return Duty(None, due, f"confirmations {count}/{q}: waiting for node {executor} to execute")
