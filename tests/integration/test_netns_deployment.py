"""Multi-host deployment: each node in its own network namespace, with its own address.

The namespaces are joined by a bridge in a namespace of their own, so the nodes talk
over real interfaces with non-loopback addresses, exactly as on separate machines; the
cluster file is the same one a multi-machine deployment would use. All addresses live
only inside namespaces this test creates, and are removed with them. Needs root and
`ip netns`; skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

NODES = 4
PREFIX = f"dtn{os.getpid() % 100000}"
SUBNET = f"10.213.{os.getpid() % 250}"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10,
                          check=check)


def _netns_available() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    probe = f"{PREFIX}probe"
    result = _ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"cannot create a network namespace: {result.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@pytest.fixture
def namespaces() -> Iterator[dict[str, str]]:
    reason = _netns_available()
    if reason:
        pytest.skip(reason)
    bridge_ns = f"{PREFIX}br"
    hosts = {f"node{i}": f"{SUBNET}.{i + 1}" for i in range(NODES)}
    hosts["client"] = f"{SUBNET}.100"
    created = [bridge_ns]
    try:
        _ip("netns", "add", bridge_ns)
        _ip("-n", bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge_ns, "link", "set", "br0", "up")
        for k, (name, addr) in enumerate(hosts.items()):
            ns = f"{PREFIX}{name}"
            _ip("netns", "add", ns)
            created.append(ns)
            inner, outer = f"{PREFIX}i{k}", f"{PREFIX}o{k}"
            _ip("link", "add", inner, "type", "veth", "peer", "name", outer)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "netns", bridge_ns)
            _ip("-n", bridge_ns, "link", "set", outer, "master", "br0")
            _ip("-n", bridge_ns, "link", "set", outer, "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield {name: f"{PREFIX}{name}" for name in hosts} | {
            f"{name}_addr": addr for name, addr in hosts.items()}
    finally:
        for ns in reversed(created):
            _ip("netns", "del", ns, check=False)


def _in_ns(ns: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "dtnbus", *args],
                          capture_output=True, text=True, timeout=timeout)


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def test_nodes_in_separate_namespaces_commit_over_real_interfaces(
        namespaces: dict[str, str], tmp_path: Path) -> None:
    """The path docs/deploy.md describes: each host makes its own key (`keygen --node K
    --advertise ADDR --bind 0.0.0.0`), only the public fragments travel to the admin, who
    assembles one cluster file and copies it to every host next to its keys/."""
    hosts = {i: tmp_path / f"host{i}" for i in range(NODES)}
    admin = tmp_path / "admin"
    for i, home in hosts.items():
        made = _in_ns(namespaces[f"node{i}"], "keygen", "--node", str(i), "--advertise",
                      namespaces[f"node{i}_addr"], "--bind", "0.0.0.0", "--out", str(home))
        assert made.returncode == 0, made.stderr
        _copy(home / f"node-{i}.toml", admin / f"node-{i}.toml")  # public part only
    client_home = tmp_path / "client"
    made = _in_ns(namespaces["client"], "keygen", "--client", "ops", "--out", str(client_home))
    assert made.returncode == 0, made.stderr
    _copy(client_home / "client-ops.toml", admin / "client-ops.toml")
    assembled = subprocess.run(
        [sys.executable, "-m", "dtnbus", "cluster", "assemble", "--out",
         str(admin / "cluster.toml"), *sorted(str(p) for p in admin.glob("*-*.toml"))],
        capture_output=True, text=True, timeout=60)
    assert assembled.returncode == 0, assembled.stderr
    text = (admin / "cluster.toml").read_text()
    assert "127.0.0.1:7000" not in text and "PRIVATE" not in text
    assert all(f"tcp://{namespaces[f'node{i}_addr']}:7000" in text for i in range(NODES))
    assert text.count('bind = "0.0.0.0"') == NODES
    for home in [*hosts.values(), client_home]:  # distribute the one cluster file
        _copy(admin / "cluster.toml", home / "cluster.toml")
    for i, home in hosts.items():  # no private key ever left its host
        assert [p.name for p in (home / "keys").iterdir()] == [f"node-{i}.key"]
    assert not list(admin.rglob("*.key"))
    procs = []
    try:
        for i in range(NODES):
            log = open(tmp_path / f"node-{i}.log", "wb")  # noqa: SIM115 - closed below
            procs.append((subprocess.Popen(
                ["ip", "netns", "exec", namespaces[f"node{i}"], sys.executable, "-m",
                 "dtnbus", "node", "--config", str(hosts[i] / "cluster.toml"), "--id", str(i)],
                stdout=log, stderr=subprocess.STDOUT), log))
        config = client_home / "cluster.toml"
        ready = subprocess.run(
            ["ip", "netns", "exec", namespaces["client"], sys.executable, "-c",
             "import sys; from pathlib import Path; from dtnbus.config import load_cluster;"
             "from dtnbus.client import Client;"
             f"c = Client(load_cluster(Path({str(config)!r}))); c.wait_ready(60); c.close()"],
            capture_output=True, text=True, timeout=90)
        assert ready.returncode == 0, ready.stderr
        submitted = _in_ns(namespaces["client"], "submit", "--config", str(config),
                           "--count", "500")
        assert submitted.returncode == 0, submitted.stderr
        assert "500 transactions" in submitted.stdout
        status = _in_ns(namespaces["client"], "cluster", "status", "--config", str(config))
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count(" ready ") == NODES
    finally:
        for proc, _log in procs:
            proc.terminate()
        for proc, log in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            log.close()
    assert all(proc.returncode == 0 for proc, _ in procs), [p.returncode for p, _ in procs]
    # each host verifies its own ledger; together they are compared on one machine here
    for i, home in hosts.items():
        mine = subprocess.run([sys.executable, "-m", "dtnbus", "ledger", "verify", "--config",
                               str(home / "cluster.toml"), "--node", str(i)],
                              capture_output=True, text=True, timeout=60)
        assert mine.returncode == 0, mine.stdout + mine.stderr
        _copy(home / "ledgers" / f"node-{i}.sqlite", admin / "ledgers" / f"node-{i}.sqlite")
    verified = subprocess.run([sys.executable, "-m", "dtnbus", "ledger", "verify", "--config",
                               str(admin / "cluster.toml")], capture_output=True, text=True,
                              timeout=60)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "identical up to block" in verified.stdout
