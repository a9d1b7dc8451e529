"""The Layer 2 commands: `dtnbus payout`, `dtnbus reward`, `dtnbus reward status`, and the
`--chain` options of `dtnbus cluster up` (registered from dtnbus/cli.py)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dtnbus.errors import LocalError

CHAIN_CHOICE = click.Choice(["development", "bsc-test"])


def chain_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """`cluster up` options that add the wallet and the payout agents."""
    options = [
        click.option("--chain", type=CHAIN_CHOICE, default=None,
                     help="Also deploy the validators' MultiSigContract and start a payout "
                          "agent per node: on a local anvil (development) or on BSC testnet "
                          "($BSC_TESTNET_RPC, deployer $PRIVATE_KEY)."),
        click.option("--threshold", type=click.IntRange(min=1), default=None,
                     help="Confirmations a payment needs (default: the commit quorum q; at "
                          "least f+1)."),
        click.option("--deposit", default=None,
                     help="BNB to put in the wallet (default 100 on development, 0 on "
                          "bsc-test)."),
        click.option("--takeover", type=click.FloatRange(min=0.05), default=2.0,
                     show_default=True,
                     help="Seconds a validator waits for the one before it to propose, "
                          "confirm or execute."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def check_chain_options(nodes: int, chain: str | None, threshold: int | None,
                        deposit: str | None) -> None:
    """Before any node starts: the chain options make sense and bsc-test's variables are set."""
    if chain is None:
        if threshold is not None or deposit is not None:
            raise LocalError("--threshold and --deposit need --chain")
        return
    from dtnbus.l2.chain_config import (
        BSC_RPC_ENV,
        check_threshold,
        deployer_key_from_env,
        rpc_from_env,
    )
    from dtnbus.messages import commit_quorum

    check_threshold(threshold if threshold is not None else commit_quorum(nodes), nodes)
    if chain == "bsc-test":
        rpc_from_env(BSC_RPC_ENV)
        deployer_key_from_env()


def start_chain_for(config: Any, directory: Path, chain: str, threshold: int | None,
                    deposit: str | None, takeover: float) -> str:
    """After `cluster up`: keys, chain, wallet, agents. Returns the line to print."""
    from dtnbus.l2.launch import chain_up
    from dtnbus.reward import WEI_PER_BNB, format_bnb

    deposit_wei = None
    if deposit is not None:
        try:
            from decimal import Decimal

            deposit_wei = int(Decimal(deposit) * WEI_PER_BNB)
        except ArithmeticError:
            raise LocalError(f"--deposit {deposit!r} is not a number of BNB") from None
        if deposit_wei < 0:
            raise LocalError("--deposit must not be negative")
    c = chain_up(config, directory, chain, threshold=threshold, deposit_wei=deposit_wei,
                 takeover_seconds=takeover)
    where = c.rpc or f"${c.rpc_env}"
    from dtnbus.l2.rpc import Rpc

    rpc = Rpc(c.rpc_url())
    try:
        balance = rpc.balance(c.contract)
    finally:
        rpc.close()
    return (f"wallet {c.contract} on {c.network} (chain {c.chain_id}, {where}): "
            f"{c.n} validator owners, threshold {c.threshold}, holds {format_bnb(balance)} BNB; "
            f"payout agents started (logs/payout-N.log)")


def stop_chain_for(directory: Path, ids: list[int] | None = None) -> str:
    """With `cluster stop`: the payout agents of `ids` (default all) and, when the whole
    cluster stops, the local chain (anvil saves its state for `cluster start`)."""
    from dtnbus.l2.launch import stop_chain_side

    names = None if ids is None else [f"payout-{i}" for i in ids]
    stopped = stop_chain_side(directory, names)
    return f"stopped {stopped} chain-side process(es) (payout agents, local chain)" \
        if stopped else ""


def restart_chain_for(directory: Path, ids: list[int] | None = None) -> str:
    """With `cluster start`: the local chain from its saved state if it is not running, and
    the payout agents of `ids` (default all) that are not. Nothing without a [chain] table."""
    import tomllib

    from dtnbus.l2.chain_config import load_chain
    from dtnbus.l2.launch import running, start_agents, start_local_chain, wait_agents_ready

    try:
        has_chain = "chain" in tomllib.loads((directory / "cluster.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return ""
    if not has_chain:
        return ""
    chain = load_chain(directory / "cluster.toml")
    alive = running(directory)
    said = []
    if chain.network == "development" and "anvil" not in alive:
        start_local_chain(chain, directory)
        said.append("the local chain (from its saved state)")
    wanted = [i for i in (ids if ids is not None else range(chain.n))
              if f"payout-{i}" not in alive]
    if wanted:
        start_agents(chain, directory, wanted)
        wait_agents_ready(chain, directory, wanted)
        said.append(f"payout agent(s) {','.join(map(str, wanted))}")
    return f"started {' and '.join(said)}" if said else ""


@click.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path), required=True,
              help="Cluster file (with a [chain] table).")
@click.option("--node", "node_id", type=click.IntRange(min=0), required=True,
              help="The validator whose ledger and owner key this agent uses.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
def payout(config_file: Path, node_id: int, log_level: str) -> None:
    """Run one validator's payout agent in the foreground: pays the rewards its node's ledger
    commits through the wallet (cluster up --chain starts one per node)."""
    from dtnbus.config import load_cluster
    from dtnbus.l2.agent import run_payout
    from dtnbus.l2.chain_config import load_chain

    config = load_cluster(config_file)
    run_payout(config, load_chain(config_file), node_id, log_level)


DIR_OPTION = click.option("--dir", "directory", type=click.Path(path_type=Path), default=None,
                          help="Cluster directory (default .dtnbus/cluster).")
CONFIG_OPTION = click.option("--config", "config_file", type=click.Path(path_type=Path),
                             default=None, help="Cluster file (instead of --dir).")
JSON_OPTION = click.option("--json", "as_json", is_flag=True,
                           help="Print one JSON object on the last line.")


@click.group(invoke_without_command=True)
@DIR_OPTION
@CONFIG_OPTION
@click.option("--trainer", default=None, help="The trainer's address (EIP-55 checksummed).")
@click.option("--amount", default=None, help="BNB, e.g. 0.5 (whole gwei).")
@click.option("--model-id", default=None, help="The rewarded model, e.g. m-17.")
@click.option("--reward-id", default=None,
              help="0x and 64 hex digits, or a label; default: derived from trainer, model "
                   "id and amount (the same reward is paid once).")
@click.option("--reason", default="", help="Free text kept in the ledger.")
@click.option("--timeout", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="Seconds to wait for the payment.")
@JSON_OPTION
@click.pass_context
def reward(ctx: click.Context, directory: Path | None, config_file: Path | None,
           trainer: str | None, amount: str | None, model_id: str | None,
           reward_id: str | None, reason: str, timeout: float, as_json: bool) -> None:
    """Commit a reward on Layer 1 and wait until the validators' wallet owes it the trainer.

    A reward whose id was committed before is not submitted again: it is answered with that
    first payment."""
    if ctx.invoked_subcommand is not None:
        if any(v is not None for v in (directory, config_file, trainer, amount, model_id,
                                       reward_id)) or reason or as_json:
            raise click.UsageError(f"put options after '{ctx.invoked_subcommand}'")
        return
    from dtnbus.l2.payments import submit_reward
    from dtnbus.reward import derive_reward_id, make_reward, parse_amount, parse_reward_id

    missing = [name for name, v in (("--trainer", trainer), ("--amount", amount),
                                    ("--model-id", model_id)) if v is None]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)}")
    assert trainer is not None and amount is not None and model_id is not None
    wei = parse_amount(amount)
    from dtnbus.reward import check_trainer

    check_trainer(trainer)
    rid = parse_reward_id(reward_id) if reward_id else derive_reward_id(trainer, model_id, wei)
    r = make_reward(rid, trainer, wei, model_id, reason)
    status = submit_reward(directory, config_file, r, timeout=timeout)
    click.echo(_payment_line(status))
    if as_json:
        click.echo(json.dumps(status.to_json(), separators=(",", ":")))
    if status.state != "paid":
        sys.exit(1)


def _short(text: str | None, keep: int = 10) -> str:
    if not text:
        return "-"
    return text if len(text) <= 2 * keep + 1 else f"{text[:keep]}…{text[-4:]}"


def _payment_line(s: Any) -> str:
    from dtnbus.reward import format_bnb

    parts = [f"{'already ' if s.already_committed else ''}committed on L1 at seq {s.l1_seq}"]
    if s.proposal:
        parts.append(f"proposal {_short(s.proposal)}")
    parts.append(f"confirmations {s.confirmations}/{s.required}")
    if s.executed_tx:
        parts.append(f"executed in tx {s.executed_tx}")
        parts.append(f"trainer owed {format_bnb(s.owed_wei)} (withdraw() pays it)")
    else:
        parts.append(f"not paid yet: {s.why}")
    line = " · ".join(parts)
    if s.already_committed and s.executed_tx:
        line += "\n(this reward id was paid before: not paid again)"
    if s.seconds.get("total") is not None:
        t = s.seconds
        line += (f"\ntook {t['total']:.3f} s: L1 commit {t.get('l1_commit', 0):.3f} s, "
                 f"propose {t.get('propose', 0):.3f} s, confirmations "
                 f"{t.get('confirmations', 0):.3f} s, execute {t.get('execute', 0):.3f} s")
    return line


@reward.command("status")
@DIR_OPTION
@CONFIG_OPTION
@JSON_OPTION
def reward_status(directory: Path | None, config_file: Path | None, as_json: bool) -> None:
    """Every committed reward: L1 seq, proposal, confirmations, executed, what the trainer is
    owed, and why a reward is not paid yet."""
    from dtnbus.l2.payments import reward_statuses
    from dtnbus.reward import format_bnb

    statuses, chain_error = reward_statuses(directory, config_file)
    if chain_error:
        click.echo(f"{chain_error}: showing what the payout agents last saw", err=True)
    click.echo(f"{'reward':<15} {'seq':>5} {'trainer':<15} {'BNB':>8} {'proposal':<15} "
               f"{'conf':>5} {'state':<9} why")
    for s in statuses:
        dup = f" (+{s.duplicates} later entr{'y' if s.duplicates == 1 else 'ies'}, not paid)" \
            if s.duplicates else ""
        click.echo(f"{_short(s.reward_id, 8):<15} {s.l1_seq!s:>5} {_short(s.trainer, 8):<15} "
                   f"{format_bnb(s.amount_wei):>8} {_short(s.proposal, 8):<15} "
                   f"{s.confirmations}/{s.required:<3} {s.state:<9} {s.why}{dup}")
    if not statuses:
        click.echo("no reward committed yet")
    if as_json:
        click.echo(json.dumps({"rewards": [s.to_json() for s in statuses],
                               "chain_error": chain_error}, separators=(",", ":")))
    if chain_error:
        sys.exit(1)
