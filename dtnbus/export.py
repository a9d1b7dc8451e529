"""`dtnbus ledger export`: the global transaction pool as a user reads it.

`lines` prints exactly the bytes of every executed transaction, one per line, in ledger
order: what `submit --file` took, so a user can diff what they sent against what the bus
holds. `jsonl` prints one JSON object per ordered transaction, with where it sits (seq,
position of its request in the block, index in the request), who sent it (client,
session, number, request digest) and what became of it (`outcome`: executed, or why not:
a duplicate or a replay of a decided request, a conflicting identity, a stale request,
a client not admitted).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from dtnbus.errors import LocalError, PeerError
from dtnbus.messages import Outcome
from dtnbus.storage import Ledger
from dtnbus.wire import parse_request_frame

FORMATS = ("lines", "jsonl")


def transactions(path: Path) -> Iterator[dict]:
    """Every transaction every block ordered, in ledger order, as plain data."""
    if not path.exists():
        raise LocalError(f"ledger {path} does not exist; is this the right --dir or --node?")
    ledger = Ledger(path, synchronous="NORMAL")
    try:
        for block in ledger.blocks():
            for position, stored in enumerate(ledger.requests(block.seq)):
                try:
                    request, _digest = parse_request_frame(stored.frame)
                except PeerError as exc:
                    raise LocalError(f"{path}: block {block.seq} holds an unreadable request "
                                     f"({exc}); run: dtnbus ledger verify") from None
                for index, tx in enumerate(request.txs):
                    yield {"seq": block.seq, "position": position, "index": index,
                           "client": stored.client, "session": stored.session,
                           "number": stored.number, "request": stored.digest.hex(),
                           "outcome": Outcome.NAMES.get(stored.outcome, str(stored.outcome)),
                           "tx": tx}
    finally:
        ledger.close()


def export(path: Path, fmt: str, out: IO[bytes]) -> int:
    """Write the export to a binary stream; returns how many transactions were written."""
    if fmt not in FORMATS:
        raise LocalError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    count = 0
    for row in transactions(path):
        tx: bytes = row["tx"]
        if fmt == "lines":
            if row["outcome"] != "executed":
                continue
            if b"\n" in tx:
                raise LocalError(f"block {row['seq']}: a transaction holds a newline, so "
                                 "'lines' cannot show it; use --format jsonl")
            out.write(tx + b"\n")
        else:
            try:
                row["tx"] = tx.decode("utf-8")
            except UnicodeDecodeError:
                row["tx"] = None
                row["tx_base64"] = base64.b64encode(tx).decode("ascii")
            out.write(json.dumps(row, separators=(",", ":")).encode() + b"\n")
        count += 1
    return count
