"""The simulator's open findings (docs/faults.md, "What the simulator found") and how to
recognise each from the facts a violation reports. A sweep tolerates a seed only when one of these
explains it; each finding also has a strict xfail that asserts no seed fails with it, so
the entry goes the day its root is fixed. Fixed ones are not in OPEN: a seed they would
explain now fails its test. The recognisers stay, for the day one comes back."""

from __future__ import annotations

import re

OPEN: dict[str, str] = {}  # none open: sim-1..5 are fixed on main (4a21dfb, 0c02675)
_VOTES = re.compile(r"holds (\d+) votes for it, (\d+) for later views, q = (\d+)")


def explain(violation: object) -> str | None:
    """The open finding that explains this violation (engine.Violation), if any."""
    finding = recognise(violation)
    return finding if finding in OPEN else None


def recognise(violation: object) -> str | None:
    """The finding (open or fixed) whose signature this violation shows, if any."""
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
