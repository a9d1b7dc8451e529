"""The wallet as its events tell it: every proposal, who confirmed it in which order, whether
and by whom it was executed. Rebuilt from the deployment block on start (so a restarted agent
reconciles with the chain before it acts) and extended with each `refresh`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dtnbus.l2.contract import WalletEvent, decode_log
from dtnbus.l2.rpc import Rpc

LOG_RANGE = 5000  # blocks per eth_getLogs: public BSC endpoints refuse wider ranges


@dataclass(slots=True)
class ProposalState:
    index: int
    reward_id: bytes
    destination: str
    value: int
    proposer: str
    block: int
    tx_hash: str
    confirmations: list[str] = field(default_factory=list)  # owners, in chain order
    executed_tx: str | None = None
    executor: str | None = None

    @property
    def executed(self) -> bool:
        return self.executed_tx is not None


class WalletView:
    def __init__(self, rpc: Rpc, contract: str, start_block: int) -> None:
        self.rpc = rpc
        self.contract = contract
        self.cursor = max(0, start_block - 1)  # last block folded in
        self.head = self.cursor
        self.proposals: dict[int, ProposalState] = {}

    def refresh(self) -> list[WalletEvent]:
        """Fold in every event up to the chain's head; returns the new ones, in order.
        Raises RpcUnavailable / RpcError (nothing is half-applied: a range is folded only
        once all its logs arrived)."""
        head = self.rpc.block_number()
        new: list[WalletEvent] = []
        while self.cursor < head:
            end = min(head, self.cursor + LOG_RANGE)
            logs = self.rpc.logs(self.contract, self.cursor + 1, end)
            events = [e for e in map(decode_log, logs) if e is not None]
            events.sort(key=lambda e: (e.block, e.log_index))
            for event in events:
                self._apply(event)
            new.extend(events)
            self.cursor = end
        self.head = head
        return new

    def _apply(self, e: WalletEvent) -> None:
        assert e.index is not None or e.kind in ("Deposit", "Payout")
        if e.kind == "Proposal":
            self.proposals[e.index] = ProposalState(  # type: ignore[index]
                e.index, e.reward_id or bytes(32), e.destination or "", e.value or 0,
                e.actor or "", e.block, e.tx_hash)
            return
        p = self.proposals.get(e.index)  # type: ignore[arg-type]
        if p is None:
            return
        if e.kind == "Confirmation" and e.actor not in p.confirmations:
            p.confirmations.append(e.actor or "")
        elif e.kind == "Revocation" and e.actor in p.confirmations:
            p.confirmations.remove(e.actor)
        elif e.kind == "Execution":
            p.executed_tx, p.executor = e.tx_hash, e.actor
