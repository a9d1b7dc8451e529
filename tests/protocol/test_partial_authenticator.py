"""A faulty client's MAC authenticator that holds at some replicas only (Aardvark's "Big
MAC attack", Clement et al., NSDI 2009): a replica whose own tag fails cannot take the
request from the client, yet the order may need it. It must neither stall the cluster
(f + 1 replicas unable to prepare would block every later sequence) nor leave one correct
replica behind for good. f + 1 replicas vouching for the batch (its PRE-PREPARE and
PREPAREs) prove that a correct one authenticated every body in it."""

from __future__ import annotations

import pytest

from dtnbus.simulation.engine import ACTION, SimOptions, Simulation, spoil_tags
from dtnbus.simulation.host import Packet


class PartialTags(Simulation):
    """Client c0 spoils the tag of each replica in `spoiled` (the others see a good one)."""

    spoiled: tuple[int, ...] = ()

    def _client_send(self, client, p) -> None:  # type: ignore[no-untyped-def]
        if client.name != "c0":
            super()._client_send(client, p)
            return
        frame = spoil_tags(p.frame, self.spoiled)
        self._route(client.name, self.everyone, Packet(frame, client.name))
        self._at(self.now + p.retry, ACTION, self._retry, (client, p.number))


def run(nodes: int, spoiled: tuple[int, ...], seed: int) -> object:
    sim_class = type("Spoiled", (PartialTags,), {"spoiled": spoiled})
    options = SimOptions(nodes=nodes, clients=3, requests=12, duration=2.0, settle=30.0,
                         authenticator="ed25519")
    return sim_class(options, seed).run()


@pytest.mark.parametrize(("nodes", "spoiled"), [
    (4, (1,)),        # one backup: it must not fall behind for good
    (4, (1, 2)),      # f + 1 backups: no prepare quorum without them
    (4, (0,)),        # the primary: the view changes, then it must catch up too
    (7, (2, 3, 4)),   # f + 1 of seven
])
def test_a_request_authentic_at_some_replicas_only_stalls_no_one(
        nodes: int, spoiled: tuple[int, ...]) -> None:
    for seed in (0, 1):
        result = run(nodes, spoiled, seed)
        assert not result.violations, (seed, [str(v)[:300] for v in result.violations])
        assert result.accepted == result.requests == 36


def test_the_simulator_spoils_random_tags_for_every_seed() -> None:
    """`dtnbus simulate --spoil-tags`: a random subset per send, replayable by seed."""
    options = SimOptions(nodes=4, clients=2, requests=5, authenticator="ed25519",
                         spoil_tags=True)
    first, again = Simulation(options, 3).run(), Simulation(options, 3).run()
    assert not first.violations and first.accepted == first.requests == 10
    assert first.drops["bad_signature"] > 0, first.drops
    assert (first.drops, first.messages) == (again.drops, again.messages)
    assert "--spoil-tags" in options.command(3)
    with pytest.raises(ValueError, match="ed25519"):
        Simulation(SimOptions(spoil_tags=True), 0)


def test_a_restarted_replica_takes_a_spoiled_request_from_state_transfer() -> None:
    """A state transfer brings blocks proven by q COMMITs; a request in one whose tag fails
    at the restarted replica is vouched for by that certificate. (Found by the sweep
    `dtnbus simulate --spoil-tags --crash-restart 1`: 81 of 300 seeds left the restarted
    replica behind for good; seed 3 is one.)"""
    options = SimOptions(nodes=4, crash_restart=1, requests=5, authenticator="ed25519",
                         spoil_tags=True)
    for seed in (3, 6, 9):
        result = Simulation(options, seed).run()
        assert not result.violations, (seed, [str(v)[:300] for v in result.violations])
