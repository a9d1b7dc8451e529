"""Fixtures for the MultiSigContract tests (brownie's pytest plugin; run with `brownie test`).

On a live network (e.g. `--network bsc-test`) brownie can neither snapshot nor use unlocked
accounts, so only tests marked `live_safe` run there; the rest are skipped with the reason.
"""

from __future__ import annotations

import brownie.network.contract as _brownie_contract
import brownie.test.output as _brownie_output
import pytest
from brownie._config import CONFIG

# ---- two brownie 1.22 fixes for an optimized contract with immutables ------------------------
# Without them MultiSigContract drops out of the coverage report (0 %).

_verify_deployed_code = _brownie_contract._verify_deployed_code


def _same_code_but_immutables(address, expected_bytecode, language):
    """brownie drops the pcMap (so coverage and traces) of a contract whose deployed code
    differs from the build's; an immutable always does, as the build holds zeros in its place."""
    from brownie import web3

    actual = bytes(web3.eth.get_code(address))
    expected = bytes.fromhex(expected_bytecode.removeprefix("0x"))
    if language != "Solidity" or len(actual) != len(expected):
        return _verify_deployed_code(address, expected_bytecode, language)
    return all(a == e or e == 0 for a, e in zip(actual, expected, strict=True))


def _split_every_function(coverage_eval, coverage_map, key):
    """brownie's `_split` counts only functions that have both statements and branches in the
    coverage map; with the optimizer most of ours have no branch entry and were left out."""
    branches = coverage_map["branches"][key]
    statements = coverage_map["statements"][key]
    return {
        fn: (
            [i for i in statements.get(fn, {}) if int(i) in coverage_eval[0]],
            [i for i in branches.get(fn, {}) if int(i) in coverage_eval[1]],
            [i for i in branches.get(fn, {}) if int(i) in coverage_eval[2]],
        )
        for fn in branches.keys() | statements.keys()
    }


_brownie_contract._verify_deployed_code = _same_code_but_immutables
_brownie_output._split = _split_every_function


def _active_network(config: pytest.Config) -> str:
    name = config.getoption("network", default=None)  # brownie stores `--network X` as [X]
    if isinstance(name, list | tuple):
        name = name[0] if name else None
    return name or CONFIG.settings["networks"]["default"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "live_safe: runs on live networks too (funded env key, no snapshots)"
    )


def _live_skip_reason(name: str) -> str:
    return f"needs a development chain (snapshots, unlocked accounts); {name} is a live network"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    name = _active_network(config)
    if "cmd" in CONFIG.networks.get(name, {}):
        return
    skip = pytest.mark.skip(reason=_live_skip_reason(name))
    for item in items:
        if item.get_closest_marker("live_safe") is None:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    # brownie rewrites every skip reason to "Skipped"; say why here instead
    name = _active_network(config)
    if "cmd" not in CONFIG.networks.get(name, {}) and terminalreporter.stats.get("skipped"):
        terminalreporter.write_line(
            f"skipped {len(terminalreporter.stats['skipped'])} tests: {_live_skip_reason(name)}"
        )


@pytest.fixture(scope="module")
def deployer(accounts):
    return accounts[0]


@pytest.fixture(scope="module")
def owners(accounts):
    return list(accounts[1:6])


@pytest.fixture(scope="module")
def outsider(accounts):
    return accounts[7]


@pytest.fixture(scope="module")
def trainer(accounts):
    return accounts[9]


@pytest.fixture(scope="module")
def probe(TrainerProbe, deployer):
    """A trainer that is a contract: accepts, refuses, or re-enters withdraw()."""
    return TrainerProbe.deploy({"from": deployer})

