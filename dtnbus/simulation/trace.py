"""The minimal trace of a violation: what a reader needs to see to understand it.

A run is replayed with tracing on (same seed, same options: the same run) and its events
are cut down to the ones that bear on the violation: for a fork, everything said about
that sequence; for a double execution, the request and the batches that ordered it; for
an exception, the last messages the replica took in; for a stall, the view changes and
what was executed. Messages a replica dropped are left out unless they are all there is.
"""

from __future__ import annotations

from dtnbus.messages import (
    Checkpoint,
    Commit,
    Fetch,
    Message,
    NewView,
    PeerStatus,
    Prepare,
    PrePrepare,
    Request,
    StateReply,
    StateRequest,
    Suspect,
    ViewChange,
)

LINES = 60


def describe(msg: Message) -> str:
    """One message on one short line."""
    if isinstance(msg, PrePrepare):
        return (f"PRE-PREPARE(v{msg.view} s{msg.seq} from {msg.replica}: "
                f"{len(msg.digests)} req {_digests(msg.digests)})")
    if isinstance(msg, Prepare | Commit):
        return (f"{type(msg).__name__.upper()}(v{msg.view} s{msg.seq} from {msg.replica} "
                f"{msg.digest.hex()[:8]})")
    if isinstance(msg, Checkpoint):
        return f"CHECKPOINT(s{msg.seq} from {msg.replica} {msg.state.hex()[:8]})"
    if isinstance(msg, ViewChange):
        return (f"VIEW-CHANGE(to v{msg.new_view} from {msg.replica}, stable {msg.stable_seq}, "
                f"{len(msg.proofs)} proofs)")
    if isinstance(msg, NewView):
        return f"NEW-VIEW(v{msg.view} from {msg.replica}, {len(msg.view_changes)} votes)"
    if isinstance(msg, Request):
        return f"REQUEST({msg.client} #{msg.number})"
    if isinstance(msg, Suspect):
        return f"SUSPECT(v{msg.view} from {msg.replica})"
    if isinstance(msg, PeerStatus):
        return (f"STATUS(from {msg.replica}: v{msg.view}{'' if msg.active else '*'} "
                f"executed {msg.last_executed} stable {msg.stable_seq})")
    if isinstance(msg, StateRequest):
        return f"STATE-REQUEST(from {msg.replica}, from s{msg.from_seq})"
    if isinstance(msg, StateReply):
        return (f"STATE-REPLY(from {msg.replica}, s{msg.from_seq}.., {len(msg.blocks)} "
                f"blocks, height {msg.height})")
    if isinstance(msg, Fetch):
        return f"FETCH(from {msg.replica}, {len(msg.digests)} bodies)"
    return type(msg).__name__


def _digests(digests: tuple[bytes, ...]) -> str:
    return ",".join(d.hex()[:6] for d in digests[:4]) + ("..." if len(digests) > 4 else "")


def _line(event: tuple) -> str | None:
    t, kind = event[0], event[1]
    if kind == "note":
        return f"{t:9.4f}  * {event[2]}"
    if kind == "exec":
        _, _, i, seq, digest, view, requests = event
        reqs = " ".join(f"{c}#{num}{'' if oc == 0 else '(' + str(oc) + ')'}"
                        for c, num, oc in requests) or "(empty)"
        return f"{t:9.4f}  replica {i} executes s{seq} (v{view}) {digest.hex()[:8]}: {reqs}"
    _, _, packet, dst, note = event
    raw = packet.raw
    what = describe(raw.msg) if raw is not None else f"{len(packet.frame)} unparsable bytes"
    return f"{t:9.4f}  {packet.src} -> {dst}: {what}" + (f"  [dropped: {note}]" if note else "")


def _msg(event: tuple) -> Message | None:
    if event[1] != "recv" or event[2].raw is None:
        return None
    return event[2].raw.msg


def minimal_trace(events: list[tuple], violation: object, lines: int = LINES) -> list[str]:
    """The events that bear on `violation` (an engine.Violation), newest last."""
    kind = violation.kind  # type: ignore[attr-defined]
    seq = violation.seq  # type: ignore[attr-defined]
    replica = violation.replica  # type: ignore[attr-defined]
    ident = violation.ident  # type: ignore[attr-defined]

    def keep(event: tuple) -> bool:
        if event[1] == "note":
            return True
        if event[1] == "exec":
            if kind == "double-execution" and ident is not None:
                return any((c, n) == (ident[0], ident[2]) for c, n, _oc in event[6])
            return seq is None or event[3] == seq or kind == "liveness"
        msg = _msg(event)
        accepted = not event[4]
        if kind == "exception":
            return event[3] == replica
        if msg is None:
            return False
        if kind in ("agreement", "client-safety") and seq is not None:
            return accepted and (getattr(msg, "seq", None) == seq
                                 or isinstance(msg, ViewChange | NewView | StateReply))
        if kind == "double-execution" and ident is not None:
            return accepted and ((isinstance(msg, Request) and (msg.client, msg.number) ==
                                  (ident[0], ident[2]))
                                 or isinstance(msg, PrePrepare | ViewChange | NewView))
        return accepted and isinstance(msg, ViewChange | NewView | Suspect | PrePrepare |
                                       StateRequest | StateReply)

    chosen = [e for e in events if keep(e)]
    out = [line for line in (_line(e) for e in chosen[-lines:]) if line is not None]
    if len(chosen) > lines:
        out.insert(0, f"  ... {len(chosen) - lines} earlier relevant events left out")
    return out
