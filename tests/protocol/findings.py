"""The simulator's open findings (FINDINGS.md, docs/faults.md) and how to recognise each
from the facts a violation reports. A sweep tolerates a seed only when one of these
explains it; each finding also has a strict xfail that asserts no seed fails with it, so
the entry goes the day its root is fixed. Fixed ones (sim-1, sim-2) are not here: any
seed they would explain now fails its test."""

from __future__ import annotations

import re

OPEN = {
    "sim-3": "a NEW-VIEW larger than the proof budget's burst is refused for ever",
    "sim-4": "a voter that moved on to a later view takes its vote away: timers stop",
    "sim-5": "a restarted replica's prepared slot without its body raises in "
             "_reply_tentatively",
}
_VOTES = re.compile(r"holds (\d+) votes for it, (\d+) for later views, q = (\d+)")


def explain(violation: object) -> str | None:
    """The open finding that explains this violation (engine.Violation), if any."""
    kind, detail = violation.kind, violation.detail  # type: ignore[attr-defined]
    if kind == "exception" and "holds every body" in detail \
            and "slot.preprepare.digests" in detail:
        return "sim-5"
    if kind == "liveness":
        if "NewView rate_limited" in detail:
            return "sim-3"
        for same, later, q in _VOTES.findall(detail):
            if int(same) < int(q) <= int(same) + int(later):
                return "sim-4"
    return None
