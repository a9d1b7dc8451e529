"""Operator-side pure logic: status states, finding node processes, provisioning, ports."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

import pytest

from dtnbus.cluster import assess
from dtnbus.config import generate_cluster, load_cluster
from dtnbus.errors import LocalError
from dtnbus.messages import Status
from dtnbus.nodeproc import NodeLock, lock_holder, parse_node_command
from dtnbus.provision import assemble, client_fragment, node_fragment


def _status(replica: int, height: int, view: int = 0, ready: bool = True) -> Status:
    return Status(replica, 1, view, height, b"\0" * 32, 0, ready, 0, height * 10, ())


@pytest.fixture(scope="module")
def config4(tmp_path_factory: pytest.TempPathFactory):
    return load_cluster(generate_cluster(tmp_path_factory.mktemp("c4"), 4))


def test_a_node_behind_the_quorum_is_catching_up_not_ready(config4) -> None:
    health, quorum_height = assess(config4, {0: _status(0, 50), 1: _status(1, 50),
                                             2: _status(2, 49), 3: _status(3, 7)})
    assert quorum_height == 49  # q = 3 nodes have reached 49
    states = {h.node_id: (h.state, h.lag) for h in health}
    assert states == {0: ("ready", 0), 1: ("ready", 0), 2: ("ready", 0),
                      3: ("catching-up", 42)}


def test_down_joining_and_view_change_states(config4) -> None:
    health, _ = assess(config4, {0: _status(0, 5), 1: _status(1, 5, ready=False),
                                 2: _status(2, 5, view=3), 3: _status(3, 5)})
    states = {h.node_id: h.state for h in health}
    assert states == {0: "ready", 1: "joining", 2: "view-change", 3: "ready"}
    health, _ = assess(config4, {0: _status(0, 5), 1: _status(1, 5), 3: _status(3, 5)})
    assert [h.state for h in health] == ["ready", "ready", "down", "ready"]


def test_no_quorum_view_means_every_answering_node_is_in_view_change(config4) -> None:
    health, _ = assess(config4, {0: _status(0, 5, view=1), 1: _status(1, 5, view=2),
                                 2: _status(2, 5, view=3), 3: _status(3, 5, view=1)})
    assert {h.state for h in health} == {"view-change"}


def test_a_lone_answering_node_is_not_called_in_view_change(config4) -> None:
    health, _ = assess(config4, {1: _status(1, 5, ready=False)})
    assert [h.state for h in health] == ["down", "joining", "down", "down"]


@pytest.mark.parametrize("argv,cwd,want", [
    (["/v/bin/python", "-m", "dtnbus", "node", "--config", "/c/cluster.toml", "--id", "2"],
     None, (Path("/c/cluster.toml"), 2)),
    (["/v/bin/python", "/v/bin/dtnbus", "node", "--config=c.toml", "--id=0"],
     Path("/home/x"), (Path("/home/x/c.toml"), 0)),
    (["dtnbus", "node", "--id", "3", "--config", "../a/./c.toml"], Path("/w/b"),
     (Path("/w/a/c.toml"), 3)),
    (["dtnbus", "cluster", "status", "--config", "c.toml"], Path("/"), None),
    (["python", "-m", "dtnbus", "node", "--config", "c.toml"], Path("/"), None),  # no id
    (["vim", "dtnbus-node.txt", "node", "--config", "x", "--id", "1"], Path("/"), None),
    (["dtnbus", "node", "--config", "rel.toml", "--id", "1"], None, None),  # cwd unknown
])
def test_parse_node_command(argv: list[str], cwd: Path | None, want) -> None:
    assert parse_node_command(argv, cwd) == want


def test_node_lock_names_its_holder_and_refuses_a_second_node(tmp_path: Path) -> None:
    ledger = tmp_path / "ledgers" / "node-0.sqlite"
    assert lock_holder(ledger) is None
    with NodeLock(ledger, 0):
        assert lock_holder(ledger) == os.getpid()
        with pytest.raises(LocalError, match=rf"in use by process {os.getpid()}"):
            NodeLock(ledger, 0).acquire()
    assert lock_holder(ledger) is None


# ------------------------------------------------------------------ ports and bind


@pytest.mark.parametrize("nodes,base", [(1000, 65000), (2, 65534), (1, 65534)])
def test_keygen_refuses_ports_past_65535(tmp_path: Path, nodes: int, base: int) -> None:
    with pytest.raises(LocalError, match=r"past 65535; use --base-port \d+ or lower"):
        generate_cluster(tmp_path / "k", nodes, base_port=base)
    assert not (tmp_path / "k" / "keys").exists()  # refused before any key was made


def test_the_highest_valid_base_port_is_accepted(tmp_path: Path) -> None:
    config = load_cluster(generate_cluster(tmp_path, 2, base_port=65535 - 5))
    assert config.nodes[1].metrics.endswith(":65535")


@pytest.mark.parametrize("old,new,needle", [
    (":7000\"", ":70000\"", "outside 1..65535"),
    (":7002\"", ":0\"", "outside 1..65535"),
    ("tcp://127.0.0.1:7001", "tcp://127.0.0.1", "not HOST:PORT"),
])
def test_cluster_file_ports_are_checked(tmp_path: Path, old: str, new: str,
                                        needle: str) -> None:
    path = generate_cluster(tmp_path, 4, base_port=7000)
    path.write_text(path.read_text().replace(old, new, 1))
    with pytest.raises(LocalError, match=needle):
        load_cluster(path)


def test_bind_address_is_used_for_binding_and_advertised_endpoints_for_peers(
        tmp_path: Path) -> None:
    config = load_cluster(generate_cluster(tmp_path, 4, hosts=[f"10.9.0.{i}" for i in range(4)],
                                           bind="0.0.0.0"))
    spec = config.node(2)
    assert (spec.pub, spec.router) == ("tcp://10.9.0.2:7000", "tcp://10.9.0.2:7001")
    assert (spec.bind_pub, spec.bind_router) == ("tcp://0.0.0.0:7000", "tcp://0.0.0.0:7001")
    assert spec.metrics == "127.0.0.1:7002"  # /metrics stays on loopback unless asked


def test_keygen_never_overwrites_keys_without_fresh(tmp_path: Path) -> None:
    generate_cluster(tmp_path, 4)
    before = (tmp_path / "keys" / "node-0.key").read_bytes()
    with pytest.raises(LocalError, match=r"already holds a cluster.*--fresh"):
        generate_cluster(tmp_path, 4)
    assert (tmp_path / "keys" / "node-0.key").read_bytes() == before
    generate_cluster(tmp_path, 4, fresh=True)
    assert (tmp_path / "keys" / "node-0.key").read_bytes() != before


# ------------------------------------------------------------------ per-host provisioning


def _hosts(tmp_path: Path, n: int = 4) -> list[Path]:
    dirs = []
    for k in range(n):
        host = tmp_path / f"host{k}"
        node_fragment(host, k, f"10.7.0.{k + 1}", bind="0.0.0.0")
        dirs.append(host)
    return dirs


def test_per_host_keys_assemble_into_one_cluster_file(tmp_path: Path) -> None:
    hosts = _hosts(tmp_path)
    client = client_fragment(tmp_path / "ops", "ops", operator=True)
    out = assemble([h / f"node-{k}.toml" for k, h in enumerate(hosts)] + [client],
                   tmp_path / "cluster.toml")
    config = load_cluster(out)
    assert config.n == 4 and [c.id for c in config.clients] == ["ops"]
    assert config.operators() == frozenset({"ops"})
    text = out.read_text()
    assert "PRIVATE" not in text
    for k, host in enumerate(hosts):
        key = host / "keys" / f"node-{k}.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        fragment = tomllib.loads((host / f"node-{k}.toml").read_text())
        assert "PRIVATE" not in (host / f"node-{k}.toml").read_text()
        assert config.node(k).public_key == fragment["nodes"][0]["public_key"]
        assert config.node(k).bind_pub == "tcp://0.0.0.0:7000"
        assert config.node(k).pub == f"tcp://10.7.0.{k + 1}:7000"
    with pytest.raises(LocalError, match=r"already exists.*--fresh"):
        assemble([hosts[0] / "node-0.toml"], out)


def test_assemble_refuses_gaps_duplicates_and_shared_keys(tmp_path: Path) -> None:
    hosts = _hosts(tmp_path, 3)
    frags = [h / f"node-{k}.toml" for k, h in enumerate(hosts)]
    with pytest.raises(LocalError, match=r"missing: \[1\]"):
        assemble([frags[0], frags[2]], tmp_path / "a.toml")
    with pytest.raises(LocalError, match="node 1 appears in"):
        assemble([frags[0], frags[1], frags[1]], tmp_path / "b.toml")
    copy = tmp_path / "copy.toml"
    copy.write_text(frags[1].read_text().replace("id = 1", "id = 3")
                    .replace("10.7.0.2", "10.7.0.9"))
    with pytest.raises(LocalError, match="same public key"):
        assemble([*frags, copy], tmp_path / "c.toml")
    assert not any((tmp_path / n).exists() for n in ("a.toml", "b.toml", "c.toml"))


def test_per_host_keygen_refuses_to_replace_a_key(tmp_path: Path) -> None:
    node_fragment(tmp_path, 0, "10.7.0.1")
    with pytest.raises(LocalError, match="already exists; refusing to overwrite a key"):
        node_fragment(tmp_path, 0, "10.7.0.1")
    with pytest.raises(LocalError, match="--advertise"):
        node_fragment(tmp_path / "x", 1, "10.7.0.1:7000")
