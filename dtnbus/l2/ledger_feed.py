"""The rewards a node's committed ledger holds, in ledger order, read beside the running node.

Read-only, through storage.py's public reader (blocks(), requests(seq)) and wire.py's stored-
frame parser, so schema additions do not concern us. Only requests whose outcome is executed
count: one ordered again after it executed (a replay), a conflicting, stale or refused one is
skipped, as the node did.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dtnbus.errors import LocalError, PeerError
from dtnbus.messages import Outcome
from dtnbus.reward import Reward, RewardError, is_reward, parse_reward
from dtnbus.storage import Ledger
from dtnbus.wire import parse_request_frame


@dataclass(frozen=True, slots=True)
class CommittedReward:
    """A reward transaction as committed: where (seq, position of the request in the block,
    item within the request) and who (the client that signed it)."""

    seq: int
    position: int
    item: int
    client: str
    reward: Reward


@dataclass(frozen=True, slots=True)
class BlockRewards:
    seq: int
    rewards: tuple[CommittedReward, ...]
    malformed: tuple[str, ...]  # why each malformed reward transaction was skipped


class LedgerFeed:
    """Follows one ledger file; `read(after)` yields the blocks after `after`, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._ledger: Ledger | None = None

    def _open(self) -> Ledger | None:
        if self._ledger is None:
            try:
                self._ledger = Ledger(self.path, readonly=True)
            except LocalError:
                return None  # the node has not created it yet
        return self._ledger

    def read(self, after: int, limit: int = 1000) -> Iterator[BlockRewards]:
        ledger = self._open()
        if ledger is None:
            return
        for count, block in enumerate(ledger.blocks(after + 1)):
            if count >= limit:
                return
            yield rewards_of_block(ledger, block.seq)

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None


def rewards_of_block(ledger: Ledger, seq: int) -> BlockRewards:
    found: list[CommittedReward] = []
    malformed: list[str] = []
    for position, stored in enumerate(ledger.requests(seq)):
        if stored.outcome != Outcome.EXECUTED:
            continue  # a replay, a conflict, a stale or refused request: nothing executed
        client = stored.client
        try:
            request, _ = parse_request_frame(stored.frame)
        except PeerError as exc:  # the node stored it, so this would be a bug or a bad disk
            malformed.append(f"seq {seq} request {position}: {exc}")
            continue
        for item, tx in enumerate(request.txs):
            if not is_reward(tx):
                continue
            try:
                found.append(CommittedReward(seq, position, item, client, parse_reward(tx)))
            except RewardError as exc:
                malformed.append(f"seq {seq} request {position} tx {item} from {client}: {exc}")
    return BlockRewards(seq, tuple(found), tuple(malformed))


def first_entries(ledger_path: Path) -> dict[bytes, CommittedReward]:
    """Every reward id's first committed entry (the one that is paid), by a one-off scan."""
    feed = LedgerFeed(ledger_path)
    first: dict[bytes, CommittedReward] = {}
    try:
        for block in feed.read(0, limit=10**12):
            for entry in block.rewards:
                first.setdefault(entry.reward.reward_id, entry)
    finally:
        feed.close()
    return first
