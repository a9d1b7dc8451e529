"""The chain options of `dtnbus cluster up`, end to end through the CLI: checked before any
node starts, and `--chain bsc-test` taking its RPC URL and deployer key from the environment
(run against a local chain 97 standing in for BSC testnet, as tools/contracts_test.sh does)."""

from __future__ import annotations

import subprocess

import pytest
from integration_support import processes_mentioning, wait_until

from dtnbus.config import free_ports
from dtnbus.l2.chain_ops import ANVIL_DEV_KEY, anvil_path
from dtnbus.l2.payments import submit_reward
from dtnbus.l2.rpc import Rpc, RpcUnavailable
from dtnbus.reward import derive_reward_id, make_reward


def test_chain_options_are_checked_before_any_node_starts(run_cli, tmp_path, monkeypatch):
    monkeypatch.delenv("BSC_TESTNET_RPC", raising=False)
    monkeypatch.delenv("PRIVATE_KEY", raising=False)
    directory = tmp_path / "c"
    for args, error in ((("--chain", "bsc-test"), "$BSC_TESTNET_RPC is not set"),
                        (("--chain", "development", "--threshold", "1"), "between f+1 = 2"),
                        (("--threshold", "3"), "need --chain")):
        cli = run_cli("cluster", "up", "--dir", directory, *args)
        assert cli.returncode == 2, cli.stderr
        assert error in cli.stderr and len(cli.stderr.strip().splitlines()) == 1
        assert "Traceback" not in cli.stderr
    assert not (directory / "cluster.toml").exists()
    assert not processes_mentioning(str(directory))


@pytest.fixture
def bsc_standin():
    """anvil as chain 97 on a free port: BSC testnet's stand-in."""
    port = free_ports(1)[0]
    proc = subprocess.Popen([anvil_path(), "--chain-id", "97", "--port", str(port), "--silent"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    rpc = Rpc(url)

    def up() -> bool:
        try:
            return rpc.chain_id() == 97
        except RpcUnavailable:
            return False

    try:
        wait_until(up, 10, "the chain-97 stand-in to answer")
        yield url
    finally:
        rpc.close()
        proc.terminate()
        proc.wait(timeout=10)


def test_bsc_test_takes_rpc_and_keys_from_the_environment(run_cli, tmp_path, bsc_standin,
                                                         monkeypatch):
    directory = tmp_path / "c"
    monkeypatch.setenv("BSC_TESTNET_RPC", bsc_standin)  # run_cli's children inherit them
    monkeypatch.setenv("PRIVATE_KEY", ANVIL_DEV_KEY)
    try:
        up = run_cli("cluster", "up", "--dir", directory, "--chain", "bsc-test",
                     "--deposit", "2")
        assert up.returncode == 0, up.stderr
        assert "on bsc-test (chain 97, $BSC_TESTNET_RPC)" in up.stdout
        assert "holds 2 BNB" in up.stdout
        toml = (directory / "cluster.toml").read_text()
        assert bsc_standin not in toml and 'rpc_env = "BSC_TESTNET_RPC"' in toml
        trainer = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
        paid = submit_reward(directory, None, make_reward(
            derive_reward_id(trainer, "m-97", 15 * 10**17), trainer, 15 * 10**17, "m-97"))
        assert paid.state == "paid" and paid.owed_wei == 15 * 10**17, paid
        for key in sorted((directory / "keys").glob("*.owner.key")):
            assert key.stat().st_mode & 0o777 == 0o600
            assert key.read_text().strip() not in up.stdout + up.stderr  # never printed
    finally:
        down = run_cli("cluster", "down", "--dir", directory)
    assert down.returncode == 0 and "payout agents" in down.stdout
    assert not processes_mentioning(str(directory))


def test_stop_and_start_keep_the_wallet_and_its_payments(run_cli, tmp_path):
    directory = tmp_path / "c"
    trainer = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"

    def pay(model: str, bnb: int):
        wei = bnb * 10**18
        return submit_reward(directory, None, make_reward(
            derive_reward_id(trainer, model, wei), trainer, wei, model))

    try:
        assert run_cli("cluster", "up", "--dir", directory, "--chain", "development",
                       "--takeover", "1").returncode == 0
        first = pay("m-1", 1)
        assert first.state == "paid", first
        stop = run_cli("cluster", "stop", "--dir", directory)
        assert "payout agents, local chain" in stop.stdout
        assert not processes_mentioning(str(directory))
        start = run_cli("cluster", "start", "--dir", directory)
        assert start.returncode == 0, start.stderr
        assert "local chain (from its saved state)" in start.stdout
        second = pay("m-2", 2)
        assert second.state == "paid" and second.owed_wei == 3 * 10**18, second
        again = pay("m-1", 1)
        assert again.already_committed and again.executed_tx == first.executed_tx
    finally:
        run_cli("cluster", "down", "--dir", directory)
    assert not processes_mentioning(str(directory))
