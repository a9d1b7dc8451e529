"""Fixtures for the MultiSigContract tests (brownie's pytest plugin; run with `brownie test`).

On a live network (e.g. `--network bsc-test`) brownie can neither snapshot nor use unlocked
accounts, so only tests marked `live_safe` run there; the rest are skipped with the reason.
"""

from __future__ import annotations

import pytest
from brownie._config import CONFIG


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
