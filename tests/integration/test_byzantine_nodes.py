"""The built-in Byzantine behaviours in real node processes (a test feature): the
`cluster up --byzantine` wiring, and a mixed cluster that still commits, identically.
The full matrix of modes against real clusters is docs/faults.md's; the simulator runs
every mode on thousands of seeds (tests/protocol/test_simulator.py)."""

from __future__ import annotations

from collections.abc import Callable

from integration_support import RunningCluster, wait_until

from dtnbus.cluster import byzantine_modes
from dtnbus.storage import compare_ledgers

FAST = {"view_change_timeout": 1.0, "retransmit_after": 0.3}


def test_a_forging_primary_is_replaced_the_cluster_commits_and_the_culprit_is_named(
        start_cluster: Callable[..., RunningCluster]) -> None:
    """Node 0 (the first primary) sends every message with a broken signature or in
    another member's name: the others drop it all as bad signatures counted against
    node 0, change view, and commit every transaction exactly once."""
    c = start_cluster(4, protocol=FAST, byzantine={0: "forge"})
    assert byzantine_modes(c.directory) == {0: "forge"}
    assert "BYZANTINE (forge)" in c.log(0)
    result = c.submit(200, request_txs=20)
    assert result.decided == result.requests == 10
    c.wait_executed(200, nodes=[1, 2, 3])
    reports, error = compare_ledgers([c.config.node(i).ledger for i in (1, 2, 3)])
    assert error is None and all(r.transactions == 200 for r in reports)

    def blamed() -> float:
        return sum(v for (name, labels), v in c.metrics(1).items()
                   if name == "dtnbus_peer_drops_total"
                   and dict(labels) == {"peer": "0", "reason": "bad_signature"})

    wait_until(lambda: blamed() > 0, 10, "drops counted against node 0")
