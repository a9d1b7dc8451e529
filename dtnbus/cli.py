"""The `dtnbus` command line. Every error a user can cause is one line and exit code 2."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from dtnbus.cluster import DEFAULT_DIR
from dtnbus.errors import LocalError
from dtnbus.l2.commands import chain_options

if TYPE_CHECKING:
    from dtnbus.sync import SyncResult

DIR_OPTION = click.option("--dir", "directory", type=click.Path(path_type=Path), default=None,
                          help=f"Cluster directory (default {DEFAULT_DIR}).")
CONFIG_OPTION = click.option("--config", "config_file", type=click.Path(path_type=Path),
                             default=None, help="Cluster file (instead of --dir).")
SCHEME_OPTION = click.option("--scheme", type=click.Choice(["ed25519", "rsa2048"]),
                             default="ed25519", show_default=True, help="Signature scheme.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dtnbus")
def cli() -> None:
    """dtnbus: a PBFT message bus of validator processes over ZeroMQ."""


@cli.command()
@click.option("--nodes", type=click.IntRange(min=1), required=True, help="Number of nodes.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Directory for keys/ and cluster.toml.")
@SCHEME_OPTION
@click.option("--host", default="127.0.0.1", show_default=True, help="Address nodes bind to.")
@click.option("--hosts", default=None,
              help="Comma list: one address per node (separate machines or namespaces).")
@click.option("--base-port", type=click.IntRange(1, 65000), default=None,
              help="First of 3 consecutive ports per node (default: free ports; 7000 with "
                   "--hosts).")
def keygen(nodes: int, out: Path, scheme: str, host: str, hosts: str | None,
           base_port: int | None) -> None:
    """Create one key pair per node (and a client key) and a cluster file."""
    from dtnbus.config import generate_cluster

    host_list = [h.strip() for h in hosts.split(",")] if hosts else None
    path = generate_cluster(out, nodes, scheme, host=host, base_port=base_port,
                            hosts=host_list)
    click.echo(f"wrote {path} ({nodes} nodes, {scheme}); private keys in {out / 'keys'} (0600)")


@cli.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path), required=True,
              help="Cluster file.")
@click.option("--id", "node_id", type=click.IntRange(min=0), required=True, help="Node id.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
def node(config_file: Path, node_id: int, log_level: str) -> None:
    """Run one validator node in the foreground (one OS process)."""
    from dtnbus.config import load_cluster
    from dtnbus.node import run_node

    run_node(load_cluster(config_file), node_id, log_level)


@cli.group()
def cluster() -> None:
    """Start, stop and inspect a local cluster of node processes."""


@cluster.command("up")
@click.option("--nodes", type=click.IntRange(min=1), default=4, show_default=True)
@DIR_OPTION
@SCHEME_OPTION
@click.option("--bandwidth", type=click.FloatRange(min=0), default=0.0,
              help="Per-link bandwidth in Mbps (0: unlimited).")
@click.option("--latency", type=click.FloatRange(min=0), default=0.0,
              help="Per-link one-way latency in ms (0: none).")
@chain_options
def cluster_up_cmd(nodes: int, directory: Path | None, scheme: str, bandwidth: float,
                   latency: float, chain: str | None, threshold: int | None,
                   deposit: str | None, takeover: float) -> None:
    """Create a fresh cluster in DIR and start it; returns when every node is ready."""
    from dtnbus.cluster import cluster_up
    from dtnbus.l2.commands import check_chain_options

    directory = directory or DEFAULT_DIR
    shaping = ({"bandwidth_mbps": bandwidth, "latency_ms": latency}
               if bandwidth or latency else None)
    check_chain_options(nodes, chain, threshold, deposit)
    config = cluster_up(directory, nodes, scheme, shaping=shaping)
    click.echo(f"cluster of {config.n} nodes (f={config.f}) ready in {directory}")
    if chain:
        _start_chain(config, directory, chain, threshold, deposit, takeover)


def _start_chain(config: object, directory: Path, chain: str, threshold: int | None,
                 deposit: str | None, takeover: float) -> None:
    """The wallet and payout agents (dtnbus/l2); on failure the whole cluster stops."""
    from dtnbus.cluster import stop_nodes
    from dtnbus.l2.commands import start_chain_for, stop_chain_for

    try:
        click.echo(start_chain_for(config, directory, chain, threshold, deposit, takeover))
    except BaseException:
        stop_chain_for(directory)
        stop_nodes(directory)
        raise


@cluster.command("down")
@DIR_OPTION
def cluster_down_cmd(directory: Path | None) -> None:
    """Stop every node of the cluster in DIR (SIGTERM, then SIGKILL after 10 s)."""
    from dtnbus.cluster import stop_nodes
    from dtnbus.l2.commands import stop_chain_for

    chain_side = stop_chain_for(directory or DEFAULT_DIR)
    stopped = stop_nodes(directory or DEFAULT_DIR)
    click.echo(f"stopped {stopped} node(s)")
    if chain_side:
        click.echo(chain_side)


@cluster.command("status")
@DIR_OPTION
@CONFIG_OPTION
@click.option("--timeout", type=click.FloatRange(min=0.1), default=2.0, show_default=True)
def cluster_status_cmd(directory: Path | None, config_file: Path | None,
                       timeout: float) -> None:
    """Show view, last executed sequence and ledger head per node."""
    from dtnbus.cluster import cluster_status, resolve_config

    config = resolve_config(directory, config_file)
    statuses = cluster_status(config, timeout)
    click.echo(f"{'node':>4} {'state':>7} {'view':>5} {'executed':>9} {'checkpoint':>10} "
               f"{'pending':>7} {'txs':>8}  head")
    for spec in config.nodes:
        s = statuses.get(spec.id)
        if s is None:
            click.echo(f"{spec.id:>4} {'down':>7}")
            continue
        click.echo(f"{s.replica:>4} {'ready' if s.ready else 'joining':>7} {s.view:>5} "
                   f"{s.last_executed:>9} {s.stable_checkpoint:>10} {s.pending:>7} "
                   f"{s.executed_txs:>8}  {s.head.hex()[:16]}")
    if len(statuses) < config.n:
        sys.exit(1)


@cli.command()
@DIR_OPTION
@CONFIG_OPTION
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="Generate this many transactions.")
@click.option("--tx-bytes", type=click.IntRange(min=12), default=300, show_default=True)
@click.option("--file", "source", type=click.File("rb"), default=None,
              help="Read transactions from a file ('-' for stdin), one per line.")
@click.option("--request-txs", type=click.IntRange(min=1), default=256, show_default=True,
              help="Transactions per signed request.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True)
def submit(directory: Path | None, config_file: Path | None, count: int | None, tx_bytes: int,
           source: object, request_txs: int, timeout: float) -> None:
    """Send transactions and wait for f+1 matching replies for each."""
    from dtnbus.client import Client
    from dtnbus.cluster import resolve_config
    from dtnbus.sync import chunk, make_transactions

    if (count is None) == (source is None):
        raise LocalError("give exactly one of --count N or --file FILE")
    if source is not None:
        txs = [line.rstrip(b"\n") for line in source if line.strip()]  # type: ignore[attr-defined]
    else:
        txs = make_transactions(count or 0, tx_bytes)
    config = resolve_config(directory, config_file)
    with Client(config) as client:
        result = client.submit(chunk(txs, request_txs), timeout=timeout)
    if result.seconds_f1 is None:
        raise LocalError(f"only {len(result.results)}/{result.requests} requests got "
                         f"{config.f + 1} matching replies within {timeout:.0f}s")
    last = max(result.results.values())
    click.echo(f"{len(txs)} transactions in {result.requests} requests committed in "
               f"{result.seconds_f1:.3f}s (f+1={config.f + 1} matching replies); "
               f"last seq {last[0]}, head {last[1].hex()[:16]}")


class ListOf(click.ParamType):
    """A comma-separated list of numbers: `--nodes 10,30,50` makes a grid."""

    def __init__(self, kind: type, minimum: float, what: str) -> None:
        self.kind, self.minimum, self.what = kind, minimum, what
        self.name = f"{kind.__name__}[,{kind.__name__}...]"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> list:
        if isinstance(value, list):
            return value
        out = []
        for part in str(value).split(","):
            try:
                number = self.kind(part.strip())
            except ValueError:
                self.fail(f"{part.strip()!r} is not a number ({self.what})", param, ctx)
            if number != number or number < self.minimum:  # NaN or too small
                self.fail(f"{part.strip()} is below {self.minimum:g} ({self.what})", param, ctx)
            out.append(number)
        return out


@cli.command()
@click.option("--nodes", type=ListOf(int, 4, "n >= 3f+1 needs at least 4 nodes"), default="4",
              show_default=True, help="Nodes; a comma list makes a grid.")
@click.option("--tx", type=ListOf(int, 1, "at least one transaction"), default="100",
              show_default=True, help="Transactions to synchronize; a comma list makes a grid.")
@click.option("--tx-bytes", type=click.IntRange(min=12), default=300, show_default=True)
@click.option("--bandwidth", type=ListOf(float, 0, "Mbps, 0 = unlimited"), default="0",
              show_default=True, help="Per-link bandwidth in Mbps (0: unlimited); list = grid.")
@click.option("--latency", type=ListOf(float, 0, "ms, 0 = none"), default="0",
              show_default=True, help="Per-link one-way latency in ms (0: none); list = grid.")
@click.option("--shaping", "mode", type=click.Choice(["link", "uplink"]), default="link",
              show_default=True, help="A bucket per directed link, or one per node uplink.")
@click.option("--latency-dist", default="constant", show_default=True,
              help="'constant' or 'uniform-F' (uniform in [F*L, L]; the reference: uniform-0.1).")
@click.option("--jitter", type=click.FloatRange(min=0), default=0.0, help="Extra uniform ms.")
@click.option("--mbps-base", type=click.Choice(["1e6", "2^20"]), default="1e6",
              show_default=True, help="Bits per Mbps; 2^20 is the reference's unit.")
@click.option("--burst", type=click.IntRange(min=0), default=None,
              help="Token bucket depth in bytes (default: max(1 frame, 5 ms of the rate)).")
@click.option("--request-txs", type=click.IntRange(min=1), default=256, show_default=True,
              help="Transactions per signed client request.")
@click.option("--tentative", is_flag=True,
              help="PBFT tentative execution: reply once prepared; the client then needs a "
                   "commit quorum of matching replies. Saves one latency hop.")
@SCHEME_OPTION
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=None,
              help="Keep the cluster directory here (default: a temporary one).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("results"),
              show_default=True, help="Where the CSV, markdown and PNG charts go.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on the last line.")
def sync(nodes: list[int], tx: list[int], tx_bytes: int, bandwidth: list[float],
         latency: list[float], mode: str, latency_dist: str, jitter: float, mbps_base: str,
         burst: int | None, request_txs: int, tentative: bool, scheme: str,
         directory: Path | None,
         out: Path, as_json: bool) -> None:
    """Synchronize TX transactions across NODES nodes and report how long it took.

    Start-up is not timed. Prints the time to f+1 matching replies, to a commit quorum
    (2f+1) of nodes and to all nodes having executed everything, the per-phase means,
    the analytic lower bound and every node's ledger head.
    """
    import itertools

    from dtnbus.report import result_row, write_results
    from dtnbus.shaping import LinkProfile
    from dtnbus.sync import synchronize

    shaping: dict = {"mode": mode, "latency_dist": latency_dist, "jitter_ms": jitter,
                     "mbps_base": 2**20 if mbps_base == "2^20" else 1e6}
    if burst is not None:
        shaping["burst_bytes"] = burst
    try:
        LinkProfile(**{k: v for k, v in shaping.items() if k != "mode"})
    except ValueError as exc:
        raise LocalError(f"bad shaping option: {exc}") from None
    cells = list(itertools.product(nodes, tx, bandwidth, latency))
    grid = len(cells) > 1
    if directory is not None:
        from dtnbus.cluster import stop_nodes

        stop_nodes(directory)
    rows, results = [], []
    for i, (n, t, bw, lat) in enumerate(cells, 1):
        if grid:
            click.echo(f"[{i}/{len(cells)}] n={n} tx={t} {bw:g} Mbps {lat:g} ms", err=True)
        result = synchronize(n, t, bw, lat, tx_bytes=tx_bytes, request_txs=request_txs,
                             scheme=scheme, directory=directory, shaping=shaping,
                             tentative=tentative,
                             on_progress=_progress_printer(t, request_txs))
        _print_sync(result)
        results.append(result)
        rows.append(result_row(result))
        if not result.ledgers_identical:
            raise LocalError(f"ledgers differ: {result.ledger_error}")
    for path in write_results(rows, out):
        click.echo(f"wrote {path}")
    if as_json:
        payload = results[0].to_json() if not grid else [r.to_json() for r in results]
        click.echo(json.dumps(payload, separators=(",", ":")))


def _progress_printer(tx: int, request_txs: int) -> Callable[[int, int], None] | None:
    """A one-line progress indicator on stderr for long runs (many requests, a terminal)."""
    if tx < 20 * request_txs or not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        if done == total or done % max(1, total // 50) == 0:
            end = "\n" if done == total else ""
            click.echo(f"\r  committed {done}/{total} requests", err=True, nl=False)
            if end:
                click.echo("", err=True)

    return show


def _fmt(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:.3f} s"


def _print_sync(r: SyncResult) -> None:
    from dtnbus.messages import commit_quorum, max_faulty

    f = max_faulty(r.nodes)
    q = commit_quorum(r.nodes)
    shaped = (f"{r.bandwidth_mbps:g} Mbps, {r.latency_ms:g} ms"
              if r.bandwidth_mbps or r.latency_ms else "unshaped")
    click.echo(f"synchronized {r.tx} tx x {r.tx_bytes} B across {r.nodes} nodes "
               f"(f={f}, {shaped}, {r.requests} requests)")
    if r.tentative:
        click.echo(f"  client accepted all ({q} tentative replies): {_fmt(r.seconds_f1)}")
        click.echo(f"  q={q} matching replies (tentative):    {_fmt(r.seconds_2f1)}")
        click.echo(f"  all {r.nodes} replied (tentative):             {_fmt(r.seconds_all)}")
        click.echo(f"  q={q} nodes executed all (durable):     "
                   f"{_fmt(r.seconds_2f1_committed)}")
        click.echo(f"  all {r.nodes} nodes executed all (durable):    "
                   f"{_fmt(r.seconds_all_committed)}")
    else:
        click.echo(f"  f+1={f + 1} matching replies (client commit):  {_fmt(r.seconds_f1)}")
        click.echo(f"  q={q} nodes (commit quorum) executed all: {_fmt(r.seconds_2f1)}")
        click.echo(f"  all {r.nodes} nodes executed all:               {_fmt(r.seconds_all)}")
    if r.bound_seconds is not None:
        click.echo(f"  analytic lower bound:                   {_fmt(r.bound_seconds)} "
                   f"({r.bound_dominant} dominates)")
    click.echo("  per-phase means (per batch, over nodes):")
    for name, secs in r.phases.items():
        click.echo(f"    {name:<24} {secs * 1000:9.3f} ms")
    heads = r.ledger_heads
    heights = r.ledger_heights
    same = "identical" if r.ledgers_identical else "DIFFERENT"
    click.echo(f"  ledger heads ({same}):")
    for node_id, head in heads.items():
        click.echo(f"    node {node_id}: height {heights[node_id]} head {head[:16]}")


@cli.group()
def ledger() -> None:
    """Inspect node ledgers."""


@ledger.command("verify")
@DIR_OPTION
@CONFIG_OPTION
def ledger_verify(directory: Path | None, config_file: Path | None) -> None:
    """Check every node's hash chain and that all are identical up to the shortest."""
    from dtnbus.cluster import resolve_config
    from dtnbus.storage import compare_ledgers

    config = resolve_config(directory, config_file)
    reports, error = compare_ledgers([s.ledger for s in config.nodes])
    for spec, rep in zip(config.nodes, reports, strict=True):
        state = "ok" if rep.error is None else f"BROKEN: {rep.error}"
        click.echo(f"node {spec.id}: height {rep.height} txs {rep.transactions} "
                   f"head {rep.head.hex()[:16]} {state}")
    if error is not None:
        raise LocalError(f"ledger verify failed: {error}")
    shortest = min((r.height for r in reports), default=0)
    click.echo(f"all {len(reports)} ledgers valid and identical up to block {shortest}")


def _add_optional_commands() -> None:
    from dtnbus.l2.commands import payout, reward

    cli.add_command(payout)
    cli.add_command(reward)
    try:
        from dtnbus.monitor import monitor_command
    except ImportError:  # pragma: no cover - the monitoring module is optional at import
        return
    cli.add_command(monitor_command)


_add_optional_commands()


def main() -> None:
    """Run the CLI; a usage or local error is one line on stderr and exit status 2."""
    try:
        cli.main(prog_name="dtnbus", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        ctx = exc.ctx
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        click.echo(f"error: {exc.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except LocalError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
