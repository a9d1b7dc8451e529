"""A faulty client's MAC authenticator that holds at some replicas only (Aardvark's "Big
MAC attack", Clement et al., NSDI 2009): a replica whose own tag fails cannot take the
request from the client, yet the order may need it. It must neither stall the cluster
(f + 1 replicas unable to prepare would block every later sequence) nor leave one correct
replica behind for good. f + 1 replicas vouching for the batch (its PRE-PREPARE and
PREPAREs) prove that a correct one authenticated every body in it."""

from __future__ import annotations

import pytest

from dtnbus.byzantine import parse_mode
from dtnbus.simulation.engine import SimOptions, Simulation, spoil_tags


class PartialTags(Simulation):
    """Client c0 spoils the tag of each replica in `spoiled` (the others see a good one)."""

    spoiled: tuple[int, ...] = ()

    def _outgoing(self, client, frame: bytes) -> bytes:  # type: ignore[no-untyped-def]
        return spoil_tags(frame, self.spoiled) if client.name == "c0" else frame


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
    sim = Simulation(options, 3)
    first, again = sim.run(), Simulation(options, 3).run()
    assert not first.violations
    assert all(p.accepted is not None for p in sim.clients[1].pending.values())  # honest
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


def test_a_client_whose_tags_fail_is_not_trusted_by_its_tags_again() -> None:
    """A faulty client that never signs, spoiling a random subset of its tags on every
    send, 40 requests: some hold at the primary alone, which orders them and no one can
    vouch. Each replica whose tag failed on the client's own (authenticated) channel
    orders none of its tagged requests again, so after at most one view change no slot
    waits on it; the honest clients' requests are decided as fast as without it."""
    options = SimOptions(nodes=4, clients=3, requests=40, duration=6, spoil_tags=True,
                         authenticator="ed25519", timers="production")
    for seed in (0, 1, 2):
        sim = Simulation(options, seed)
        result = sim.run()
        assert not result.violations, [str(v)[:300] for v in result.violations]
        assert sim.max_view <= 1, sim.max_view
        assert result.decided_at is not None and result.decided_at <= options.duration + 1
        assert all(h.replica.tags_distrusted == {"c0"} for h in sim.hosts)


def test_a_faulty_clients_acceptance_is_not_owed_an_execution() -> None:
    """The run ends once the correct clients' requests are decided; what the faulty one
    accepted last may not have executed anywhere yet (the sweep of --spoil-tags with
    Byzantine replicas reported that as a client-safety violation: seed 970099)."""
    options = SimOptions(nodes=7, byzantine={}, unplaced=[parse_mode("equivocate"),
                                                          parse_mode("lying-state")],
                         crash_restart=2, partition="random", drop=0.03, clients=4,
                         requests=6, duration=6, authenticator="ed25519", epoch=40000,
                         spoil_tags=True)
    result = Simulation(options, 970099).run()
    assert not result.violations, [str(v)[:300] for v in result.violations]
