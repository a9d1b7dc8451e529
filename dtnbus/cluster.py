"""Launch, watch and stop a local cluster of node processes in one directory.

DIR holds `cluster.toml`, `keys/` (0600), `ledgers/`, `logs/node-N.log`, `pids.json`
and `prometheus/targets.json` (file-based service discovery for monitoring/).
`up` returns once every node reports ready (its SUB has heard every peer's PUB), by
polling the nodes' status over the wire, never by a fixed sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dtnbus.client import Client
from dtnbus.config import ClusterConfig, generate_cluster, load_cluster
from dtnbus.errors import LocalError
from dtnbus.messages import Status

DEFAULT_DIR = Path(".dtnbus/cluster")


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
    try:
        pids = json.loads(_pid_file(directory).read_text())
    except (OSError, ValueError):
        return {}
    return {int(k): v for k, v in pids.items() if process_alive(v)}


def write_targets(config: ClusterConfig, directory: Path) -> Path:
    """Prometheus file_sd targets: one entry per node, labelled with its id."""
    path = directory / "prometheus" / "targets.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    targets = [{"targets": [s.metrics], "labels": {"node": str(s.id), "cluster": directory.name}}
               for s in config.nodes if s.metrics]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(targets, indent=1))
    tmp.replace(path)  # Prometheus re-reads the file: never let it see half of one
    return path


def start_nodes(config: ClusterConfig, directory: Path, ids: list[int] | None = None,
                log_level: str = "INFO") -> dict[int, int]:
    """Spawn node processes (own session, so a terminal's Ctrl-C does not reach them)."""
    logs = directory / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pids = running_pids(directory)
    for node_id in (ids if ids is not None else [s.id for s in config.nodes]):
        if node_id in pids:
            raise LocalError(f"node {node_id} is already running (pid {pids[node_id]}); "
                             f"run 'dtnbus cluster down --dir {directory}' first")
        with open(logs / f"node-{node_id}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dtnbus", "node", "--config", str(config.path),
                 "--id", str(node_id), "--log-level", log_level],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        pids[node_id] = proc.pid
    _pid_file(directory).write_text(json.dumps({str(k): v for k, v in sorted(pids.items())}))
    return pids


def stop_nodes(directory: Path, ids: list[int] | None = None, timeout: float = 10.0) -> int:
    """SIGTERM, wait (bounded), then SIGKILL what is left. Returns how many were stopped."""
    pids = running_pids(directory)
    chosen = {k: v for k, v in pids.items() if ids is None or k in ids}
    for pid in chosen.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(process_alive(p) for p in chosen.values()) and time.monotonic() < deadline:
        time.sleep(0.02)  # polling process exit: there is no event to wait on for non-children
    for pid in chosen.values():
        if process_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    left = {k: v for k, v in pids.items() if k not in chosen}
    if _pid_file(directory).exists():
        _pid_file(directory).write_text(json.dumps({str(k): v for k, v in left.items()}))
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


def cluster_up(directory: Path, nodes: int, scheme: str = "ed25519",
               protocol: dict[str, Any] | None = None, shaping: dict[str, Any] | None = None,
               links: list[dict[str, Any]] | None = None, ready_timeout: float | None = None,
               log_level: str = "INFO", curve: bool = False) -> ClusterConfig:
    """Create a fresh cluster in `directory`, start it and wait until every node is ready.
    `curve`: every connection CurveZMQ-encrypted and authenticated (curve.py)."""
    if running_pids(directory):
        raise LocalError(f"a cluster is already running in {directory}; "
                         f"run 'dtnbus cluster down --dir {directory}' first")
    if nodes < 4:
        raise LocalError(f"--nodes must be at least 4 (n >= 3f+1 with f >= 1), got {nodes}")
    for old in (directory / "ledgers").glob("node-*.sqlite*"):
        old.unlink()  # a new cluster (new keys) starts a new ledger
    path = generate_cluster(directory, nodes, scheme, protocol=protocol, shaping=shaping,
                            links=links, curve=curve)
    config = load_cluster(path)
    write_targets(config, directory)
    start_nodes(config, directory, log_level=log_level)
    timeout = ready_timeout if ready_timeout is not None else 30 + 0.6 * nodes
    try:
        with Client(config) as client:
            deadline = time.monotonic() + timeout
            ready: set[int] = set()
            while len(ready) < nodes:  # readiness; fail fast (with the reason) if a node died
                dead = [i for i in range(nodes) if i not in running_pids(directory)]
                if dead:
                    raise LocalError(f"node {dead[0]} exited during start-up: "
                                     f"{last_log_line(directory, dead[0])}")
                if time.monotonic() >= deadline:
                    raise LocalError(f"cluster not ready after {timeout:.0f}s: ready nodes "
                                     f"{sorted(ready)} of {nodes}; see {directory}/logs")
                answers = client.status(min(1.0, max(0.1, deadline - time.monotonic())))
                ready.update(r for r, s in answers.items() if s.ready)
    except BaseException:
        stop_nodes(directory)
        raise
    return config


def last_log_line(directory: Path, node_id: int) -> str:
    try:
        lines = (directory / "logs" / f"node-{node_id}.log").read_text().strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "empty log"


def cluster_status(config: ClusterConfig, timeout: float = 2.0) -> dict[int, Status]:
    with Client(config) as client:
        return client.status(timeout)


def resolve_config(directory: Path | None, config_file: Path | None) -> ClusterConfig:
    """`--dir DIR` or `--config FILE`: every command that talks to a cluster takes either."""
    if config_file is not None:
        return load_cluster(config_file)
    return load_cluster((directory or DEFAULT_DIR) / "cluster.toml")
