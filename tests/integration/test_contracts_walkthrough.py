"""docs/contracts.md's step-by-step block works as written, on `make chain`'s persistent
chain, and the wallet is still there after the chain restarts (issue 14)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtnbus.config import free_ports
from dtnbus.waiting import poll_until

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOC = ROOT / "docs" / "contracts.md"

pytestmark = [pytest.mark.skipif(
    not (BIN / "anvil").exists() or not (BIN / "brownie").exists(),
    reason="anvil or brownie missing from the venv (run: make setup)"),
    pytest.mark.slow]  # `make test-slow`, which CI runs after `make test`


def walkthrough() -> str:
    text = DOC.read_text()
    block = text.split("<!-- walkthrough -->", 1)[1].split("<!-- /walkthrough -->", 1)[0]
    match = re.search(r"```sh\n(.*?)```", block, re.S)
    assert match, "docs/contracts.md has no ```sh block inside the walkthrough markers"
    return match.group(1)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Chain:
    """`make chain` (tools/chain.sh) on a free port with its state in a temporary folder."""

    def __init__(self, port: int, state: Path, log: Path) -> None:
        self.port, self.state, self.log = port, state, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        env = {**os.environ, "CHAIN_PORT": str(self.port), "CHAIN_STATE": str(self.state),
               "PATH": f"{BIN}:{os.environ['PATH']}"}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(["make", "-s", "chain"], cwd=ROOT, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        def listening() -> bool:  # anvil opening its port: nothing to block on
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            return _listening(self.port)

        assert poll_until(listening, 60, 0.1), self.log.read_text()
        return self.log.read_text()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # as Ctrl-C: anvil saves its state
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    deployments = ROOT / "build" / "deployments" / "1337"
    saved = tmp_path / "deployments-1337"
    deployment_map = ROOT / "build" / "deployments" / "map.json"
    map_before = deployment_map.read_bytes() if deployment_map.exists() else None
    if deployments.exists():  # keep an operator's own records of chain 1337 as they were,
        shutil.copytree(deployments, saved)  # and out of the way: brownie would look them
        shutil.rmtree(deployments)  # up on this fresh chain and fail
        deployment_map.unlink(missing_ok=True)
    owners = ROOT / ".dtnbus" / "chain" / "owners.json"
    owners_before = owners.read_bytes() if owners.exists() else None
    c = Chain(free_ports(1)[0], tmp_path / "state.json", tmp_path / "chain.log")
    try:
        yield c
    finally:
        c.stop()
        shutil.rmtree(deployments, ignore_errors=True)
        if saved.exists():
            shutil.copytree(saved, deployments)
        if map_before is not None:
            deployment_map.write_bytes(map_before)
        if owners_before is None:
            owners.unlink(missing_ok=True)
        else:
            owners.write_bytes(owners_before)


def _bash(script: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})


def test_the_walkthrough_runs_as_written_and_survives_a_chain_restart(chain: Chain) -> None:
    banner = chain.start()
    assert "brownie network 'dtnbus-local'" in banner, banner
    out = _bash(walkthrough())
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert "paid 250000000000000000 wei" in out.stdout
    trainer = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    assert (f"proposal 0: 250000000000000000 wei to {trainer}, 3 confirmations, "
            "executed=True") in out.stdout, out.stdout[-2000:]

    chain.stop()
    assert chain.state.exists()
    assert "resumed from" in chain.start()
    env = walkthrough().split("OVERWRITE=1", 1)[0]  # the exports, not the steps
    again = _bash(env + 'PRIORITY_FEE=0 GAS_PRICE="2 gwei" brownie run scripts/wallet.py '
                        'propose "$TRAINER" "0.1 ether" --network dtnbus-local\n'
                        'PRIORITY_FEE="3 gwei" OWNER_INDEX=1 brownie run scripts/wallet.py '
                        'confirm 1 --network dtnbus-local\n'
                        "brownie run scripts/wallet.py status 1 --network dtnbus-local\n")
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    plain = re.sub(r"\x1b\[[0-9;]*m", "", again.stdout)
    assert "Gas price: 2.0 gwei" in plain, plain[-2000:]  # a legacy transaction at GAS_PRICE
    assert "Priority fee: 3.0 gwei" in plain, plain[-2000:]  # an EIP-1559 tip
    assert "2 proposals" in plain  # the first one survived the restart
    assert "proposal 1: 100000000000000000 wei" in plain
