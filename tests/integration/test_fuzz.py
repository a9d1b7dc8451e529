"""Issue 11's fuzz at real node processes: 10,000 hostile frames, mutated from real frames
of every kind, at every way a frame reaches a node (ROUTER as a client, ROUTER as a
replica, SUB from a publisher it subscribes to), plus garbage below the frame level at the
ROUTER, PUB and metrics ports. 0 crashes, every frame counted (dropped by reason, or a vote
no slot needs), no internal error, no traceback, and the cluster still commits. The
1,000,000-frame run is `python -m benchmarks.fuzz`."""

from __future__ import annotations

from pathlib import Path

from integration_support import processes_mentioning

from dtnbus.fuzzing import MUTATIONS
from dtnbus.fuzzrun import PATHS, FuzzPlan, run_fuzz
from dtnbus.messages import MESSAGE_TYPES, kind_name


def test_ten_thousand_hostile_frames_are_each_counted_and_the_cluster_commits(
        tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    result = run_fuzz(FuzzPlan(frames=10_000, seed=1), directory)
    assert not processes_mentioning(str(directory))
    assert result.ok, "\n".join(result.violations)
    assert set(result.corpus_kinds) == {kind_name(k) for k in MESSAGE_TYPES}
    assert len(result.captured_kinds) >= 8  # the rest were built with the members' keys
    assert set(result.by_path) == set(PATHS) and min(result.by_path.values()) > 2_000
    assert set(MUTATIONS) <= set(result.by_mutation)
    for node, delivered in result.delivered.items():
        # the frames (each part of a multipart message is one), and one over the size limit
        assert delivered == 10_000 + result.bundled_extra + 1
        assert result.drops[node].get("oversized") == 1
        assert "internal_error" not in result.drops[node]
    # most never get past the decoder; what does is refused by the replica or unneeded
    assert result.parse_verdicts.get("malformed", 0) > 5_000
    assert result.raw_connections > 0 and result.alive_after == [0, 1, 2]
    assert result.committed_after >= 20 and result.ledgers_agree
