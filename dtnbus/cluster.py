"""Launch, watch and stop a cluster of node processes in one directory, never losing data.

DIR holds `cluster.toml`, `keys/` (0600), `ledgers/` (each node's ledger and the lock it
holds while running), `logs/node-N.log`, `pids.json` and `prometheus/targets.json`
(file-based service discovery for dtnbus/monitoring/).

The lifecycle: `up` creates a new cluster (new keys, empty ledgers) and refuses a
directory that already holds one unless told `fresh`; `start`, `stop` and `restart` run an
existing cluster over its own keys and ledgers. `stop` finds every node of the cluster,
also one started by hand, by the lock each node holds and by command line
(dtnbus.nodeproc), not only by the launcher's pid file. Readiness is polled over the wire
(each node's status), never by a fixed sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtnbus.client import Client
from dtnbus.config import (
    ClusterConfig,
    NodeSpec,
    ensure_directory,
    existing_cluster_files,
    generate_cluster,
    load_cluster,
    write_text_atomic,
)
from dtnbus.errors import LocalError
from dtnbus.messages import Status, commit_quorum
from dtnbus.nodeproc import cmdline_of, lock_holder, node_commands, parse_node_command, same_file

DEFAULT_DIR = Path(".dtnbus/cluster")
STOP_TIMEOUT = 10.0


def _pid_file(directory: Path) -> Path:
    return directory / "pids.json"


def process_alive(pid: int) -> bool:
    """True if `pid` is a live process. A zombie counts as gone (and is reaped if ours)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True


def running_pids(directory: Path) -> dict[int, int]:
    """The launcher's record (pids.json) of live node processes: node id -> pid."""
    try:
        pids = json.loads(_pid_file(directory).read_text())
    except (OSError, ValueError):
        return {}
    return {int(k): v for k, v in pids.items() if process_alive(v)}


def _write_pids(directory: Path, pids: dict[int, int]) -> None:
    with contextlib.suppress(OSError):
        write_text_atomic(_pid_file(directory),
                          json.dumps({str(k): v for k, v in sorted(pids.items())}))


@dataclass(frozen=True, slots=True)
class FoundNode:
    node_id: int
    pid: int
    how: str  # "lock file", "command line" or "pid file"


def find_nodes(config: ClusterConfig, directory: Path | None = None) -> dict[int, FoundNode]:
    """Every live process running a node of this cluster on this machine, however started.

    A pid counts only if it holds the node's ledger lock or its command line is
    `dtnbus node --config <this file> --id K`: a recycled pid in a stale pid file is
    never mistaken for a node (and never signalled)."""
    found: dict[int, FoundNode] = {}
    for spec in config.nodes:
        pid = lock_holder(spec.ledger)
        if pid and process_alive(pid):
            found[spec.id] = FoundNode(spec.id, pid, "lock file")
    for cmd in node_commands():
        if cmd.node_id not in found and same_file(cmd.config, config.path):
            found[cmd.node_id] = FoundNode(cmd.node_id, cmd.pid, "command line")
    if directory is not None:
        for node_id, pid in running_pids(directory).items():
            if node_id in found:
                continue
            parsed = parse_node_command(cmdline_of(pid), _cwd_of(pid))
            if parsed and parsed[1] == node_id and same_file(parsed[0], config.path):
                found[node_id] = FoundNode(node_id, pid, "pid file")
    return found


def _cwd_of(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def scrape_address(spec: NodeSpec) -> str:
    """Where Prometheus reaches a node's /metrics: a wildcard listen address (0.0.0.0)
    is reached at the node's advertised host."""
    host, _, port = spec.metrics.rpartition(":")
    if host in ("0.0.0.0", "*", "::", "[::]") and spec.pub.startswith("tcp://"):
        host = spec.pub.removeprefix("tcp://").rpartition(":")[0]
    return f"{host}:{port}"


def write_targets(config: ClusterConfig, directory: Path, cluster_name: str | None = None,
                  ) -> Path:
    """Prometheus file_sd targets: one entry per node, labelled with its id."""
    path = directory / "prometheus" / "targets.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    name = cluster_name or directory.name
    targets = [{"targets": [scrape_address(s)], "labels": {"node": str(s.id), "cluster": name}}
               for s in config.nodes if s.metrics]
    write_text_atomic(path, json.dumps(targets, indent=1))  # Prometheus re-reads it
    return path


def start_nodes(config: ClusterConfig, directory: Path, ids: list[int] | None = None,
                log_level: str = "INFO") -> dict[int, int]:
    """Spawn node processes (own session, so a terminal's Ctrl-C does not reach them)."""
    logs = directory / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    running = find_nodes(config, directory)
    pids = {k: v.pid for k, v in running.items()}
    for node_id in (ids if ids is not None else [s.id for s in config.nodes]):
        config.node(node_id)  # a one-line error for an id not in the cluster
        if node_id in running:
            raise LocalError(f"node {node_id} is already running (pid {running[node_id].pid}); "
                             f"run 'dtnbus cluster stop --dir {directory}' first")
        with open(logs / f"node-{node_id}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dtnbus", "node", "--config", str(config.path.resolve()),
                 "--id", str(node_id), "--log-level", log_level],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        pids[node_id] = proc.pid
    _write_pids(directory, pids)
    return pids


@dataclass
class StopReport:
    """What `stop` did, for the one line the CLI prints."""

    terminated: list[FoundNode] = field(default_factory=list)  # exited after SIGTERM
    killed: list[FoundNode] = field(default_factory=list)  # needed SIGKILL

    @property
    def count(self) -> int:
        return len(self.terminated) + len(self.killed)

    def describe(self, timeout: float = STOP_TIMEOUT) -> str:
        if not self.count:
            return "no node of this cluster was running"
        parts = []
        if self.terminated:
            parts.append(f"{_ids(self.terminated)} with SIGTERM")
        if self.killed:
            parts.append(f"{_ids(self.killed)} with SIGKILL after {timeout:g} s")
        by_hand = [n for n in self.terminated + self.killed if n.how != "pid file"]
        found = sorted({n.how for n in by_hand})
        return (f"stopped {self.count} node(s): " + "; ".join(parts)
                + (f" (found by {' and '.join(found)})" if found else ""))


def _ids(nodes: list[FoundNode]) -> str:
    return "node " + ",".join(str(n.node_id) for n in sorted(nodes, key=lambda n: n.node_id))


def stop_cluster(config: ClusterConfig, directory: Path | None = None,
                 ids: list[int] | None = None, timeout: float = STOP_TIMEOUT) -> StopReport:
    """SIGTERM every node of the cluster (or `ids`), wait (bounded), SIGKILL what is left.
    Keys, ledgers and logs stay: `start` brings the same cluster back."""
    found = find_nodes(config, directory)
    chosen = [n for n in found.values() if ids is None or n.node_id in ids]
    for node in chosen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(node.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(process_alive(n.pid) for n in chosen) and time.monotonic() < deadline:
        time.sleep(0.02)  # polling process exit: there is no event to wait on for non-children
    report = StopReport()
    for node in chosen:
        if process_alive(node.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.pid, signal.SIGKILL)
            report.killed.append(node)
        else:
            report.terminated.append(node)
    kill_deadline = time.monotonic() + 5
    while any(process_alive(n.pid) for n in report.killed) and time.monotonic() < kill_deadline:
        time.sleep(0.01)
    if directory is not None and _pid_file(directory).exists():
        left = {k: v for k, v in running_pids(directory).items()
                if ids is not None and k not in ids}
        _write_pids(directory, left)
    return report


def stop_nodes(directory: Path, ids: list[int] | None = None,
               timeout: float = STOP_TIMEOUT) -> int:
    """Stop the nodes of the cluster in `directory`; returns how many were stopped."""
    try:
        config = load_cluster(directory / "cluster.toml")
    except LocalError:
        config = None
    if config is not None:
        return stop_cluster(config, directory, ids, timeout).count
    pids = running_pids(directory)  # no cluster file left: the pid file is all we have
    chosen = {k: v for k, v in pids.items() if ids is None or k in ids}
    for pid in chosen.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(process_alive(p) for p in chosen.values()) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in chosen.values():
        if process_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    _write_pids(directory, {k: v for k, v in pids.items() if k not in chosen})
    return len(chosen)


def kill_node(directory: Path, node_id: int) -> None:
    """SIGKILL one node: a crash, not a clean stop (for fault tests)."""
    pid = running_pids(directory).get(node_id)
    if pid is None:
        raise LocalError(f"node {node_id} is not running")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def check_cluster_dir(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise LocalError(f"--dir {directory} is a file, not a directory; give a directory")


def refuse_running(directory: Path) -> None:
    """A running cluster in `directory` is never replaced: say how to stop it."""
    running: dict[int, FoundNode] = {}
    if (directory / "cluster.toml").is_file():
        with contextlib.suppress(LocalError):  # an unreadable file: nothing of ours runs
            running = find_nodes(load_cluster(directory / "cluster.toml"), directory)
    running_ids = set(running) | set(running_pids(directory))
    if running_ids:
        raise LocalError(f"a cluster is running in {directory} (nodes "
                         f"{','.join(map(str, sorted(running_ids)))}); stop it first: "
                         f"dtnbus cluster stop --dir {directory}")


def cluster_up(directory: Path, nodes: int, scheme: str = "ed25519",
               protocol: dict[str, Any] | None = None, shaping: dict[str, Any] | None = None,
               links: list[dict[str, Any]] | None = None, ready_timeout: float | None = None,
               log_level: str = "INFO", fresh: bool = False,
               extra_clients: int = 0, durability: str = "fsync",
               curve: bool = False) -> ClusterConfig:
    """Create a new cluster in `directory`, start it and wait until every node is ready.

    A directory that already holds keys, ledgers or a cluster file is refused unless
    `fresh` (then they are discarded); a running cluster is always refused. `curve`:
    every connection CurveZMQ-encrypted and authenticated (curve.py)."""
    check_cluster_dir(directory)
    if nodes < 4:
        raise LocalError(f"--nodes must be at least 4 (n >= 3f+1 with f >= 1), got {nodes}")
    refuse_running(directory)
    existing = existing_cluster_files(directory) if directory.is_dir() else []
    if existing and not fresh:
        raise LocalError(f"{directory} already holds a cluster ({', '.join(existing)}); "
                         f"start it with 'dtnbus cluster start --dir {directory}', or add "
                         "--fresh to discard it and create a new one")
    ensure_directory(directory, "--dir")
    path = generate_cluster(directory, nodes, scheme, protocol=protocol, shaping=shaping,
                            links=links, fresh=fresh, clients=extra_clients,
                            durability=durability, curve=curve)
    config = load_cluster(path)
    write_targets(config, directory)
    pids = start_nodes(config, directory, log_level=log_level)
    wait_ready(config, directory, pids, ready_timeout)
    return config


def cluster_start(directory: Path, ids: list[int] | None = None,
                  ready_timeout: float | None = None, log_level: str = "INFO",
                  ) -> tuple[ClusterConfig, list[int]]:
    """Start the existing cluster in `directory` over its keys and ledgers: the nodes of
    `ids` (default all) that are not running. Returns the config and the ids started."""
    check_cluster_dir(directory)
    config = load_cluster(directory / "cluster.toml")
    running = find_nodes(config, directory)
    wanted = ids if ids is not None else [s.id for s in config.nodes]
    for node_id in wanted:
        config.node(node_id)
    to_start = [i for i in wanted if i not in running]
    if to_start:
        write_targets(config, directory)
        pids = start_nodes(config, directory, to_start, log_level=log_level)
        wait_ready(config, directory, {i: pids[i] for i in to_start}, ready_timeout,
                   stop_on_failure=to_start)
    return config, to_start


def wait_ready(config: ClusterConfig, directory: Path, pids: dict[int, int],
               timeout: float | None = None, stop_on_failure: list[int] | None = None) -> None:
    """Return once each node in `pids` (id -> the pid just started) reports ready (it has
    heard every peer); on failure stop the nodes this call started and say why, with the
    dead node's last log line."""
    ids = sorted(pids)
    if not ids:
        return
    timeout = timeout if timeout is not None else 30 + 0.6 * config.n
    try:
        with Client(config) as client:
            deadline = time.monotonic() + timeout
            ready: set[int] = set()
            while not set(ids) <= ready:  # fail fast (with the reason) if a node died
                dead = [i for i in ids if not process_alive(pids[i])]
                if dead:
                    raise LocalError(f"node {dead[0]} exited during start-up: "
                                     f"{last_log_line(directory, dead[0])}")
                if time.monotonic() >= deadline:
                    raise LocalError(f"nodes not ready after {timeout:.0f}s: ready "
                                     f"{sorted(ready & set(ids))} of {sorted(ids)}; "
                                     f"see {directory}/logs")
                answers = client.status(min(1.0, max(0.1, deadline - time.monotonic())))
                ready.update(r for r, s in answers.items() if s.ready)
    except BaseException:
        stop_cluster(config, directory, stop_on_failure)
        raise


def last_log_line(directory: Path, node_id: int) -> str:
    try:
        lines = (directory / "logs" / f"node-{node_id}.log").read_text().strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "empty log"


def cluster_status(config: ClusterConfig, timeout: float = 2.0) -> dict[int, Status]:
    with Client(config) as client:
        return client.status(timeout)


@dataclass(frozen=True, slots=True)
class NodeHealth:
    """One node as `cluster status` shows it."""

    node_id: int
    state: str  # ready | catching-up | joining | view-change | down
    status: Status | None
    lag: int | None  # blocks behind the quorum's height (None: down)


def assess(config: ClusterConfig, statuses: dict[int, Status]) -> tuple[list[NodeHealth], int]:
    """Each node's state against the cluster, and the quorum's height.

    The quorum height is the highest block that a commit quorum q of the answering nodes
    has executed: what the cluster as a whole has certainly reached. A node below it is
    `catching-up`, however ready its sockets are; a node whose view is not the view of a
    quorum is in `view-change`; a node that has not heard every peer yet is `joining`."""
    q = commit_quorum(config.n)
    heights = sorted((s.last_executed for s in statuses.values()), reverse=True)
    quorum_height = heights[q - 1] if len(heights) >= q else (heights[-1] if heights else 0)
    views: dict[int, int] = {}
    for s in statuses.values():
        views[s.view] = views.get(s.view, 0) + 1
    quorum_view = next((v for v, c in views.items() if c >= q), None)
    out = []
    for spec in config.nodes:
        s = statuses.get(spec.id)
        if s is None:
            out.append(NodeHealth(spec.id, "down", None, None))
            continue
        lag = max(0, quorum_height - s.last_executed)
        if (quorum_view is None and len(statuses) >= q) or (
                quorum_view is not None and s.view != quorum_view):
            state = "view-change"  # the answering quorum disagrees, or this node is apart
        elif not s.ready:
            state = "joining"
        elif lag > 0:
            state = "catching-up"
        else:
            state = "ready"
        out.append(NodeHealth(spec.id, state, s, lag))
    return out, quorum_height


def resolve_config(directory: Path | None, config_file: Path | None) -> ClusterConfig:
    """`--dir DIR` or `--config FILE`: every command that talks to a cluster takes either."""
    if config_file is not None:
        return load_cluster(config_file)
    directory = directory or DEFAULT_DIR
    check_cluster_dir(directory)
    return load_cluster(directory / "cluster.toml")
