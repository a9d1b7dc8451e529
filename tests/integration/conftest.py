"""Fixtures for integration tests: real node processes on loopback, and the CLI as a process.

Every cluster a test starts (through `start_cluster` / `cluster`) is stopped in teardown
with `dtnbus.cluster.stop_nodes`, and teardown fails the test if any node process it ever
started, including one the test killed, is still alive, or if `running_pids` still lists
one. Helpers live in integration_support.py (this folder is on sys.path under pytest's
default import mode, as tests/protocol's harness is).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from integration_support import RunningCluster, pid_alive, processes_mentioning, wait_until

from dtnbus.cluster import cluster_up, running_pids, stop_nodes
from dtnbus.errors import LocalError

CLI_TIMEOUT = 60.0


def assert_all_gone(pids: set[int], directory: Path, timeout: float = 15.0) -> None:
    """Every pid in `pids` has exited, and the cluster directory lists none as running."""
    wait_until(lambda: not any(pid_alive(p) for p in pids), timeout,
               f"node processes {sorted(pids)} to exit")
    assert running_pids(directory) == {}, running_pids(directory)
    stray = processes_mentioning(str(directory))
    assert not stray, f"processes still running from {directory}: {stray}"


@pytest.fixture
def start_cluster(tmp_path: Path) -> Iterator[Callable[..., RunningCluster]]:
    """Factory: `start_cluster(nodes=4, name="cluster", **cluster_up kwargs)`."""
    started: dict[Path, set[int]] = {}

    def start(nodes: int = 4, name: str = "cluster", **kwargs: Any) -> RunningCluster:
        directory = tmp_path / name
        known = started.setdefault(directory, set())
        try:
            config = cluster_up(directory, nodes, **kwargs)
        except LocalError as exc:  # say why: the node logs hold the cause
            logs = "".join(f"\n--- {log.name}:\n{log.read_text()[-1500:]}"
                           for log in sorted((directory / "logs").glob("node-*.log")))
            pytest.fail(f"cluster_up failed: {exc}{logs}")
        pids = running_pids(directory)
        known.update(pids.values())
        assert sorted(pids) == list(range(nodes)), f"pids.json lists {pids}"
        return RunningCluster(directory, config, dict(pids), known)

    yield start
    errors = []
    for directory, known in started.items():
        known.update(running_pids(directory).values())
        stop_nodes(directory)
        try:
            assert_all_gone(known, directory)
        except BaseException as exc:  # pytest.fail is a BaseException; stop the rest first
            errors.append(f"{directory}: {exc}")
        # the boundary: an exception while handling a message is counted as internal_error
        # and logged with its traceback; the node goes on, but the test must not
        for log in sorted((directory / "logs").glob("node-*.log")):
            text = log.read_text(errors="replace")
            if "Traceback" in text:
                at = text.index("Traceback")
                errors.append(f"{log.name} logged an internal error:\n{text[at - 200:at + 1500]}")
    if errors:
        pytest.fail("; ".join(errors))


@pytest.fixture
def cluster(start_cluster: Callable[..., RunningCluster]) -> RunningCluster:
    """A ready 4-node cluster (f = 1) of real processes in a fresh tmp directory."""
    return start_cluster(4)


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`run_cli(*args, timeout=, input=, cwd=)`: `python -m dtnbus ARGS` in tmp_path (so a
    default `.dtnbus/cluster` never lands in the repo), bounded, output captured as text."""

    def run(*args: str | os.PathLike[str], timeout: float = CLI_TIMEOUT,
            input: str | None = None, cwd: Path | None = None,
            ) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "dtnbus", *map(str, args)]
        extra: dict[str, Any] = ({"input": input} if input is not None
                                 else {"stdin": subprocess.DEVNULL})
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  cwd=cwd or tmp_path, check=False, **extra)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"dtnbus {' '.join(cmd[3:])} did not finish within {timeout:.0f}s; "
                        f"stdout={exc.stdout!r} stderr={exc.stderr!r}")

    return run
