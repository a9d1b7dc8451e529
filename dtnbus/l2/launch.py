"""A cluster's chain side in its directory: owner keys, the chain (a local anvil, or BSC testnet
from the environment), the deployed and funded wallet, the `[chain]` table, and one payout
agent process per node.

DIR gains `keys/node-K.owner.key` (0600), `chain/anvil-state.json` (development),
`logs/payout-K.log`, `logs/anvil.log`, `chain/pids.json` and `prometheus/payout.json` (file-
based discovery of the agents' /metrics). Kept out of dtnbus/cluster.py so node lifecycle and
chain lifecycle change independently.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from dtnbus.cluster import process_alive
from dtnbus.config import ClusterConfig, free_ports
from dtnbus.errors import LocalError
from dtnbus.l2.chain_config import (
    BSC_RPC_ENV,
    ChainConfig,
    check_threshold,
    deployer_key_from_env,
    load_chain,
    rpc_from_env,
    save_chain,
    write_owner_key,
)
from dtnbus.l2.chain_ops import ANVIL_DEV_KEY, deploy_wallet, send, start_anvil, top_up
from dtnbus.l2.rpc import Rpc, RpcError, RpcUnavailable
from dtnbus.messages import commit_quorum

DEV_DEPOSIT_WEI = 100 * 10**18
DEV_OWNER_GAS_WEI = 10**18
BSC_OWNER_GAS_WEI = 5 * 10**15  # 0.005 tBNB: ~100 payout transactions at BSC testnet prices


def _pids_file(directory: Path) -> Path:
    return directory / "chain" / "pids.json"


def _read_pids(directory: Path) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in json.loads(_pids_file(directory).read_text()).items()}
    except (OSError, ValueError):
        return {}


def _write_pids(directory: Path, pids: dict[str, int]) -> None:
    path = _pids_file(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(pids, indent=1, sort_keys=True))


def running(directory: Path) -> dict[str, int]:
    """The chain-side processes alive in DIR: 'anvil' and 'payout-K'."""
    return {k: v for k, v in _read_pids(directory).items() if process_alive(v)}


def chain_up(config: ClusterConfig, directory: Path, network: str,
             threshold: int | None = None, deposit_wei: int | None = None,
             owner_gas_wei: int | None = None, takeover_seconds: float = 2.0,
             poll_seconds: float | None = None, log_level: str = "INFO") -> ChainConfig:
    """Keys, chain, wallet, [chain] table and payout agents for the cluster in `directory`."""
    n = config.n
    q = check_threshold(threshold if threshold is not None else commit_quorum(n), n)
    dev = network == "development"
    if network == "bsc-test":  # both variables first: fail before anything is created
        rpc_url, deployer = rpc_from_env(BSC_RPC_ENV), deployer_key_from_env()
    elif network != "development":
        raise LocalError(f"unknown chain {network!r}: use development or bsc-test")
    owners = [write_owner_key(directory / "keys" / f"node-{i}.owner.key") for i in range(n)]
    pids = running(directory)
    if network == "development":
        state = directory / "chain" / "anvil-state.json"
        state.unlink(missing_ok=True)  # a fresh cluster: a fresh chain
        proc, rpc_url = start_anvil(state, directory / "logs" / "anvil.log")
        pids["anvil"] = proc.pid
        _write_pids(directory, pids)
        deployer = ANVIL_DEV_KEY
    rpc = Rpc(rpc_url)
    try:
        chain_id = rpc.chain_id()
        contract, block = deploy_wallet(rpc, deployer, chain_id, q, owners)
        gas = owner_gas_wei if owner_gas_wei is not None else (
            DEV_OWNER_GAS_WEI if dev else BSC_OWNER_GAS_WEI)
        top_up(rpc, deployer, chain_id, owners, gas)
        deposit = deposit_wei if deposit_wei is not None else (DEV_DEPOSIT_WEI if dev else 0)
        if deposit:
            send(rpc, deployer, chain_id, contract, value=deposit)
    except (RpcUnavailable, RpcError) as exc:
        raise LocalError(f"chain {rpc_url if network == 'development' else '$' + BSC_RPC_ENV}"
                         f": {exc}") from None
    finally:
        rpc.close()
    metrics = [f"127.0.0.1:{p}" for p in free_ports(n)]
    table = {
        "network": network,
        **({"rpc": rpc_url} if network == "development" else {"rpc_env": BSC_RPC_ENV}),
        "chain_id": chain_id,
        "contract": contract,
        "deploy_block": block,
        "threshold": q,
        "owners": owners,
        "owner_keys": [f"keys/node-{i}.owner.key" for i in range(n)],
        "payout_metrics": metrics,
        "poll_seconds": poll_seconds if poll_seconds is not None else (0.1 if dev else 1.0),
        "takeover_seconds": takeover_seconds,
    }
    chain = save_chain(config.path, table)
    write_payout_targets(chain, directory)
    start_agents(chain, directory, log_level=log_level)
    wait_agents_ready(chain, directory)
    return chain


def wait_agents_ready(chain: ChainConfig, directory: Path, ids: list[int] | None = None,
                      timeout: float = 30.0) -> None:
    """Return once every agent has read the wallet's events (its /metrics shows a chain block
    at or past the deployment); fail fast, with its last log line, if one died."""
    waiting = set(ids if ids is not None else range(chain.n))
    deadline = time.monotonic() + timeout
    while waiting:
        for node_id in sorted(waiting):
            if f"payout-{node_id}" not in running(directory):
                raise LocalError(f"payout agent {node_id} exited during start-up: "
                                 f"{_last_line(directory / 'logs' / f'payout-{node_id}.log')}")
            if _chain_block(chain.payout_metrics[node_id]) >= chain.deploy_block:
                waiting.discard(node_id)
        if waiting and time.monotonic() > deadline:
            raise LocalError(f"payout agents {sorted(waiting)} not ready after {timeout:.0f}s; "
                             f"see {directory}/logs/payout-N.log")
        if waiting:
            time.sleep(0.05)  # polling processes that are starting: no event to wait on


def _chain_block(address: str) -> float:
    """dtnbus_l2_chain_block from an agent's /metrics (-1 while it does not answer)."""
    if not address:
        return float("inf")  # no metrics endpoint: nothing to wait on
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=1) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith("dtnbus_l2_chain_block "):
                    return float(line.split()[1])
    except OSError:
        pass
    return -1.0


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text().strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "empty log"


def start_local_chain(chain: ChainConfig, directory: Path) -> int:
    """Start the development chain again where [chain].rpc says, from the state anvil saved
    when it stopped (a cluster restarted over its ledgers keeps its wallet)."""
    if chain.network != "development" or not chain.rpc:
        raise LocalError(f"{chain.cluster_file}: only a development chain runs locally")
    if "anvil" in running(directory):
        raise LocalError(f"the local chain of {directory} is already running")
    parts = urlsplit(chain.rpc)
    proc, _ = start_anvil(directory / "chain" / "anvil-state.json",
                          directory / "logs" / "anvil.log", parts.hostname or "127.0.0.1",
                          parts.port)
    _write_pids(directory, {**_read_pids(directory), "anvil": proc.pid})
    return proc.pid


def write_payout_targets(chain: ChainConfig, directory: Path) -> Path:
    """Prometheus file_sd targets for the payout agents (monitoring/ reads prometheus/*.json)."""
    path = directory / "prometheus" / "payout.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    targets = [{"targets": [m], "labels": {"node": str(i), "cluster": directory.name,
                                           "role": "payout"}}
               for i, m in enumerate(chain.payout_metrics) if m]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(targets, indent=1))
    tmp.replace(path)
    return path


def start_agents(chain: ChainConfig, directory: Path, ids: list[int] | None = None,
                 log_level: str = "INFO") -> dict[str, int]:
    """Spawn payout agent processes (own session, like the nodes)."""
    pids = running(directory)
    logs = directory / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for node_id in ids if ids is not None else range(chain.n):
        name = f"payout-{node_id}"
        if name in pids:
            raise LocalError(f"payout agent {node_id} is already running (pid {pids[name]})")
        with open(logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dtnbus", "payout", "--config", str(chain.cluster_file),
                 "--node", str(node_id), "--log-level", log_level],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        pids[name] = proc.pid
    _write_pids(directory, pids)
    return pids


def stop_chain_side(directory: Path, names: list[str] | None = None,
                    timeout: float = 10.0) -> int:
    """SIGTERM the agents (and the local chain), SIGKILL what is left after `timeout`.
    Agents stop before the chain, so none is cut off mid-transaction by its chain vanishing."""
    pids = running(directory)
    chosen = {k: v for k, v in pids.items() if names is None or k in names}
    for group in ([k for k in chosen if k != "anvil"], [k for k in chosen if k == "anvil"]):
        for name in group:
            with contextlib.suppress(ProcessLookupError):
                os.kill(chosen[name], signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(process_alive(chosen[k]) for k in group) and time.monotonic() < deadline:
            time.sleep(0.02)  # polling process exit: no event to wait on for non-children
        for name in group:
            if process_alive(chosen[name]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(chosen[name], signal.SIGKILL)
    _write_pids(directory, {k: v for k, v in _read_pids(directory).items() if k not in chosen})
    return len(chosen)


def kill_agent(directory: Path, node_id: int) -> None:
    """SIGKILL one payout agent: a crash (for fault tests)."""
    pid = running(directory).get(f"payout-{node_id}")
    if pid is None:
        raise LocalError(f"payout agent {node_id} is not running")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def load_cluster_chain(directory: Path) -> ChainConfig:
    return load_chain(directory / "cluster.toml")
