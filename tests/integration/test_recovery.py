"""Crash recovery with real processes: a node restarts over its own ledger, catches up by
state transfer, learns the current view, and takes part again; nothing is lost or doubled."""

from __future__ import annotations

from collections.abc import Callable

from integration_support import RunningCluster, wait_until

from dtnbus.cluster import kill_node, start_nodes
from dtnbus.storage import compare_ledgers

# small checkpoint interval and one request per batch: a few dozen requests pass many
# checkpoints, so the log is collected behind the dead node and it must take state
SMALL = {"checkpoint_interval": 4, "window": 8, "batch_max_requests": 1, "pipeline": 1,
         "view_change_timeout": 1.0}


def _caught_up(c: RunningCluster, node: int, timeout: float = 30.0) -> None:
    def level() -> bool:
        st = c.status(timeout=0.5)
        return node in st and len({s.last_executed for s in st.values()}) == 1 \
            and len(st) == c.n
    wait_until(level, timeout, f"node {node} to catch up")


def _ledgers_identical(c: RunningCluster) -> list[int]:
    reports, error = compare_ledgers([s.ledger for s in c.config.nodes])
    assert error is None, error
    assert len({r.head for r in reports}) == 1
    return [r.height for r in reports]


def test_restarted_backup_catches_up_and_keeps_up(
        start_cluster: Callable[..., RunningCluster]) -> None:
    c = start_cluster(4, protocol=SMALL)
    assert c.submit(6, request_txs=1).seconds_f1 is not None
    kill_node(c.directory, 3)
    assert c.submit(30, request_txs=1, seed=1).seconds_f1 is not None  # 9 checkpoints later
    c.all_pids.update(start_nodes(c.config, c.directory, ids=[3]).values())
    assert c.submit(10, request_txs=1, seed=2).seconds_f1 is not None
    _caught_up(c, 3)
    heights = _ledgers_identical(c)
    assert len(set(heights)) == 1 and heights[0] >= 46
    assert c.ledger_txs(3) == 46  # every transaction once, none twice
    assert "catching up from node" in c.log(3)


def test_restarted_old_primary_learns_the_new_view(
        start_cluster: Callable[..., RunningCluster]) -> None:
    c = start_cluster(4, protocol=SMALL)
    assert c.submit(6, request_txs=1).seconds_f1 is not None
    kill_node(c.directory, 0)  # the primary: the others change view
    assert c.submit(20, request_txs=1, seed=1, timeout=60).seconds_f1 is not None
    c.all_pids.update(start_nodes(c.config, c.directory, ids=[0]).values())
    assert c.submit(12, request_txs=1, seed=2).seconds_f1 is not None
    _caught_up(c, 0)
    st = c.status()
    assert {s.view for s in st.values()} == {1}  # node 0 joined view 1, did not start its own
    _ledgers_identical(c)
    assert c.ledger_txs(0) == 38
