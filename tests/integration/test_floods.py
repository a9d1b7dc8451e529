"""Floods against real node processes (issues 9 and 11), and the findings they made.

From one member: node 3 is played by `dtnbus.rogue.RogueMember` with node 3's real key,
and sends 10,000 well-signed frames of each kind to each honest node as fast as their
sockets take them, reading nothing back. The honest nodes' RSS must stay within
`GROWTH_MIB` of where it was, commits must go on (a client stream keeps running; progress
must not stop, no rate is asserted), and each frame must be counted: dropped by reason and
against member 3 (`dtnbus_peer_drops_total{peer="3"}`), or taken.

From clients (issue 11): open-loop clients offer ten times the measured capacity; they get
BUSY, nothing acknowledged is lost, and the cluster takes requests again afterwards. The
60-second version is `python -m benchmarks.flood`.

Findings these runs made (chaos-2..5, docs/faults.md) have their regression tests here.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq
from integration_support import processes_mentioning

from dtnbus.chaos import default_bound
from dtnbus.cluster import cluster_up, kill_node, stop_nodes
from dtnbus.flood import KindResult, run_client_flood, run_member_floods
from dtnbus.messages import ViewChange
from dtnbus.stream import RequestStream
from dtnbus.waiting import poll_until
from dtnbus.wire import payload_of

# long real-process fault runs: `make test-slow` (CI runs it after `make test`)
pytestmark = pytest.mark.slow

# A member's flood of 10,000 frames of one kind may cost an honest node this much resident
# memory at most (a node idles at ~50 MiB): what a member can make it hold is bounded by
# counts of small entries (one VIEW-CHANGE per replica, slots in the window, token
# buckets); nothing it sends should be kept whole, or make the node keep a reply for it.
GROWTH_MIB = 64.0

# The reason each flood is dropped for, once the member's budget (if any) is spent.
EXPECTED = {
    "view_change": "rate_limited", "state_request": "rate_limited", "fetch": "rate_limited",
    "suspect": "rate_limited", "peer_status": "rate_limited", "checkpoint": "out_of_window",
    "prepare": "out_of_window", "commit": "out_of_window", "new_view": "malformed",
    "state_reply": "unsolicited", "reply": "unknown_sender", "hello": None,
}


# Fetch and StateRequest floods are answered, and what the answers cost a node that the
# member does not read from grows with the flood's duration and with what the node holds
# (the ledger, the pool): +2 to +213 MiB measured for Fetch, +39 MiB to 3 GB for
# StateRequest (under load, the flood lasts longer): chaos-4, now fixed; its regression
# test is the paced StateRequest test below; `python -m benchmarks.flood` reports both.
IN_MAKE_TEST = tuple(k for k in EXPECTED if k not in ("fetch", "state_request"))


def _check_kind(row: KindResult) -> list[str]:
    problems = []
    if row.growth_mib > GROWTH_MIB:
        problems.append(f"{row.kind}: RSS grew {row.growth_mib:.0f} MiB > {GROWTH_MIB:.0f}")
    if row.progress_seconds is None:
        problems.append(f"{row.kind}: nothing committed from the flood's start until 10 s "
                        "after its end")
    for node, drops in row.member_drops.items():
        counted = sum(drops.values()) + row.taken[node]
        if counted < row.sent:
            problems.append(f"{row.kind}: node {node} counted {counted} of {row.sent} frames")
        expected = EXPECTED[row.kind]
        if expected is not None and max(drops, key=drops.get, default=None) != expected:
            problems.append(f"{row.kind}: node {node} dropped for {drops}, not mostly "
                            f"{expected}")
    if row.internal_errors:
        problems.append(f"{row.kind}: {row.internal_errors} internal errors")
    return problems


def test_member_floods_are_counted_bounded_and_commits_go_on(tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    result = run_member_floods(IN_MAKE_TEST, count=10_000, ledger_txs=1_000,
                               directory=directory, calm_seconds=0.2)
    assert not processes_mentioning(str(directory))
    table = "\n".join(f"  {r.kind:<14} growth {r.growth_mib:5.0f} MiB  {r.seconds:5.1f} s  "
                      f"acks {r.acknowledged:5d}  drops {r.member_drops[0]}"
                      for r in result.kinds)
    problems = [p for row in result.kinds for p in _check_kind(row)] + result.violations
    assert not problems, "\n".join(problems) + "\n" + table
    assert result.ledgers_agree and result.missing == 0


def test_a_preprepare_flood_from_a_member_keeps_rss_bounded(tmp_path: Path) -> None:
    """6,000 PRE-PREPAREs of 1,024 digests (33 kB each) from a member that is not the
    primary: each is dropped, but they arrive faster than the node can check them and
    waited in its ROUTER queue, up to 100,000 frames of up to 64 MiB per peer: +175 to
    +242 MiB on every honest node for 10,000 (chaos-5). Now they are dropped before
    their signature is checked, so a flood drains at parse speed."""
    result = run_member_floods(("preprepare",), count=6_000, ledger_txs=0,
                               directory=tmp_path / "cluster", calm_seconds=0.2)
    row = result.kinds[0]
    assert row.progress_seconds is not None
    assert row.growth_mib <= GROWTH_MIB, f"RSS grew {row.growth_mib:.0f} MiB"


def test_state_requests_at_the_budget_rate_keep_rss_bounded(tmp_path: Path) -> None:
    """A patient member sends StateRequests at 25 per second (what its budget lets through)
    for 6 s and reads nothing. Each was served from the ledger (~1.6 MB) and the replies
    queued without a bound in bytes: +287 MiB in 8 s (chaos-4). Now a peer is served
    again only past what it was sent or after 5 s, and replies are capped at 4 MiB."""
    result = run_member_floods(("state_request",), count=150, ledger_txs=5_000, rate=25.0,
                               directory=tmp_path / "cluster", calm_seconds=0.2)
    row = result.kinds[0]
    assert row.progress_seconds is not None
    assert row.growth_mib <= GROWTH_MIB, f"RSS grew {row.growth_mib:.0f} MiB"


def test_forged_view_changes_from_a_stranger_do_not_block_a_view_change(
        tmp_path: Path) -> None:
    """The primary crashes. Anyone who can reach the nodes' ROUTER ports (a client
    connection, no key at all) sends VIEW-CHANGEs that claim to come from the other
    replicas, with random signatures. Charged to the claimed replica's budget before
    the signature was checked, they emptied it and no view change completed while the
    forgery lasted (chaos-2). Budgets are now charged after the sender's signature."""
    directory = tmp_path / "cluster"
    timeout = 1.0
    config = cluster_up(directory, 4, protocol={"view_change_timeout": timeout}, fresh=True)
    stop = threading.Event()
    try:
        stream = RequestStream(config, window=4).start()
        poll_until(lambda: stream.accepted_count() >= 50, 30)
        forger = threading.Thread(target=_forge_view_changes, args=(config, stop), daemon=True)
        forger.start()
        killed = time.monotonic()
        kill_node(directory, 0)
        bound = default_bound(timeout)
        poll_until(lambda: stream.accept_times[-1] > killed, bound + 3)
        after = [t - killed for t in stream.accept_times if t > killed]
        stop.set()
        forger.join(10)
        stream.stop()
        assert after and after[0] <= bound, \
            f"no commit within {bound:.0f} s of the primary's crash while the forgery ran"
    finally:
        stop.set()
        stop_nodes(directory)


def _forge_view_changes(config: object, stop: threading.Event) -> None:
    ctx = zmq.Context()
    socks = []
    for spec in config.nodes[1:]:  # type: ignore[attr-defined]
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(spec.router)
        socks.append(sock)
    try:
        while not stop.is_set():
            for replica in (1, 2, 3):
                for view in range(1, 6):
                    frame = msgpack.packb([payload_of(ViewChange(view, replica, 0, ())),
                                           os.urandom(64)], use_bin_type=True)
                    for sock in socks:
                        sock.send(frame)
    finally:
        for sock in socks:
            sock.close(linger=0)
        ctx.term()


# ------------------------------------------------------------ clients (issue 11)

def test_a_client_flood_loses_nothing_and_the_cluster_recovers(tmp_path: Path) -> None:
    """Issue 11, short: open-loop clients offer ten times the measured capacity for 5 s
    (each keeps at most 1,024 outstanding here, 4,096 in the benchmark; the rest of what
    is due is held back and counted). Node memory stays bounded, every request acknowledged is in
    every ledger once, the backlog drains, and the cluster serves a closed-loop client at
    more than a quarter of its measured capacity afterwards. (The pool, 50,000 requests,
    does not fill here, so nobody is told BUSY: the test below fills one.)"""
    directory = tmp_path / "cluster"
    result = run_client_flood(seconds=5.0, factor=10.0, clients=4, request_txs=16,
                              window=1024, measure_seconds=2.0, directory=directory)
    assert not processes_mentioning(str(directory))
    assert not result.violations, result.violations
    assert result.missing == 0 and result.duplicated == 0 and result.ledgers_agree
    assert result.acknowledged_during > 0, "nothing acknowledged during the flood"
    assert result.rate_after > result.capacity_rps / 4, \
        f"{result.rate_after:.0f}/s after vs {result.capacity_rps:.0f}/s capacity"
    growth = max(result.rss_peak_mib[n] - result.rss_before_mib[n] for n in result.rss_peak_mib)
    assert growth <= 256.0, f"RSS grew {growth:.0f} MiB during the flood"


# checkpoints every 4 batches of at most 128 requests: executed bodies, which the pool
# keeps until a checkpoint is stable, cannot fill it (4 x 128 < 2,000)
SMALL_POOL = {"max_requests": 2_000, "checkpoint_interval": 4, "window": 16,
              "batch_max_requests": 128}


def test_clients_told_busy_by_a_full_pool_are_served_again_afterwards(
        tmp_path: Path) -> None:
    """Issue 11's typed back-pressure: a pool of 2,000 requests, open-loop clients that
    fill it. They are told BUSY. A backup whose pool was full used to refuse the bodies
    of requests the primary had ordered, so nothing committed again (chaos-3). The pool
    bound now covers only requests waiting to be ordered, and a body an ordered slot
    lacks is always taken: a fresh client is served once the flood ends."""
    directory = tmp_path / "cluster"
    config = cluster_up(directory, 4, protocol=SMALL_POOL, fresh=True)
    flooders: list[RequestStream] = []
    try:
        # 4 x 2,000 requests/s: at 500 each the cluster now keeps up and nobody is BUSY
        flooders = [RequestStream(config, window=4096, rate=2_000, request_txs=16,
                                  tag=10 + i).start() for i in range(4)]
        assert poll_until(lambda: sum(s.busy_answers for s in flooders) >= 100, 60), "no BUSY"
        for s in flooders:
            s.stop()
        fresh = RequestStream(config, window=4, tag=99).start()
        served = poll_until(lambda: fresh.accepted_count() > 0, 12)
        fresh.stop()
        assert served, "a fresh client got nothing done within 12 s of the flood's end"
    finally:
        for s in flooders:
            s.stop()
        stop_nodes(directory)
