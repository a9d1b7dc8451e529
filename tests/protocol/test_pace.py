"""A slow primary is replaced, a correct one is not (`ReplicaConfig.pace_factor`).

A primary that sends every message a few hundred ms late orders within the view-change
timeout, so PBFT's timer never fires, yet it throttles every client (measured on real
nodes before this check: 11-36 acknowledgements a second against ~237, docs/faults.md).
Each backup measures how long the newest request of each batch waited for its
PRE-PREPARE against its own rounds; f + 1 suspicions change the view."""

from __future__ import annotations

import pytest

from dtnbus.byzantine import parse_mode
from dtnbus.replica import ReplicaConfig
from dtnbus.simulation.engine import SimOptions, Simulation


def run(mode: str, seed: int, **overrides: object) -> Simulation:
    byzantine = {0: parse_mode(mode)} if mode else {}
    options = SimOptions(nodes=4, byzantine=byzantine, clients=4, requests=60, duration=10,
                         timers="production", **overrides)  # type: ignore[arg-type]
    sim = Simulation(options, seed)
    result = sim.run()
    assert not result.violations, [str(v)[:300] for v in result.violations]
    return sim


@pytest.mark.parametrize("mode", ["slow:20", "slow:50"])
def test_a_primary_that_orders_hundreds_of_ms_late_is_replaced(mode: str) -> None:
    for seed in (0, 1):
        sim = run(mode, seed)
        assert sim.max_view >= 1, "the slow primary kept its view"
        assert all(h.replica.primary != 0 for i, h in enumerate(sim.hosts) if i), \
            "a correct replica still follows the slow primary"


def test_a_correct_primary_keeps_its_view_and_a_slightly_slow_one_too() -> None:
    """No false alarm at the same load; `slow:5` (40 ms a round here) is under the bound."""
    for seed in (0, 1, 2):
        assert run("", seed).max_view == 0
        assert run("slow:5", seed).max_view == 0


def test_the_pace_check_can_be_turned_off() -> None:
    assert ReplicaConfig(0, 4, pace_factor=0).pace_factor == 0
    with pytest.raises(ValueError, match="pace_factor"):
        ReplicaConfig(0, 4, pace_factor=-1)
