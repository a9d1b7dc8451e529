"""The `dtnbus` command line. Every error a user can cause is one line and exit code 2."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from dtnbus.byzantine import MODE_HELP
from dtnbus.cluster import DEFAULT_DIR
from dtnbus.errors import LocalError

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
def cluster_up_cmd(nodes: int, directory: Path | None, scheme: str, bandwidth: float,
                   latency: float) -> None:
    """Create a fresh cluster in DIR and start it; returns when every node is ready."""
    from dtnbus.cluster import cluster_up

    directory = directory or DEFAULT_DIR
    shaping = ({"bandwidth_mbps": bandwidth, "latency_ms": latency}
               if bandwidth or latency else None)
    config = cluster_up(directory, nodes, scheme, shaping=shaping)
    click.echo(f"cluster of {config.n} nodes (f={config.f}) ready in {directory}")


@cluster.command("down")
@DIR_OPTION
def cluster_down_cmd(directory: Path | None) -> None:
    """Stop every node of the cluster in DIR (SIGTERM, then SIGKILL after 10 s)."""
    from dtnbus.cluster import stop_nodes

    stopped = stop_nodes(directory or DEFAULT_DIR)
    click.echo(f"stopped {stopped} node(s)")


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


@cli.command()
@click.option("--nodes", type=click.IntRange(min=1), default=4, show_default=True,
              help="Replicas (f = floor((n-1)/3)).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="The first seed: it fixes the whole run.")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run this many seeds: SEED, SEED+1, ...")
@click.option("--byzantine", default="",
              help="TEST FEATURE. ID=MODE,... (e.g. 3=equivocate,2=silent); a MODE without "
                   "ID goes to a replica picked per seed. Modes: " + MODE_HELP + ".")
@click.option("--drop", type=click.FloatRange(0, 1), default=0.0,
              help="Probability that a message is lost, until the network heals.")
@click.option("--reorder", is_flag=True, help="Delay messages at random (no FIFO) until "
              "the network heals.")
@click.option("--duplicate", type=click.FloatRange(0, 1), default=0.0,
              help="Probability that a message arrives twice, until the network heals.")
@click.option("--partition", default="",
              help="GROUPS[@START-END]; e.g. '0,1|2,3@0.5-2'; ';' separates several; "
                   "'random': a random split per seed. Heals by the end of --duration.")
@click.option("--crash-restart", type=click.IntRange(min=0), default=0, show_default=True,
              help="Crashes of correct replicas (each restarts from its disk).")
@click.option("--clients", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--requests", type=click.IntRange(min=1), default=3, show_default=True,
              help="Requests per client.")
@click.option("--duration", type=click.FloatRange(min=0), default=3.0, show_default=True,
              help="Virtual seconds of faults (clients submit in them); then the network "
                   "heals.")
@click.option("--settle", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Virtual seconds after healing by which every request must be decided.")
@click.option("--latency", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="One-way latency per link, ms.")
@click.option("--bandwidth", type=click.FloatRange(min=0), default=0.0,
              help="Per-link bandwidth, Mbps (0: unlimited).")
@click.option("--authenticator", type=click.Choice(["mac", "ed25519"]), default="mac",
              show_default=True, help="mac: a cheap keyed MAC in place of signatures (fast; "
              "simulation only); ed25519: real signatures.")
@click.option("--timers", type=click.Choice(["short", "production"]), default="short",
              show_default=True, help="Protocol timers and windows: scaled to short "
                                      "schedules, or the node's defaults.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes for many seeds.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on the last line.")
def simulate(nodes: int, seed: int, seeds: int, byzantine: str, drop: float, reorder: bool,
             duplicate: float, partition: str, crash_restart: int, clients: int, requests: int,
             duration: float, settle: float, latency: float, bandwidth: float,
             authenticator: str, timers: str, jobs: int, as_json: bool) -> None:
    """Run the real replica code on a virtual clock and an in-memory network, with
    Byzantine replicas and network faults, checking the invariants after every step.

    Agreement at every sequence, no request executed twice, no exception, clients accept
    only what correct replicas executed, and, after the network heals, every request
    decided. A violation prints the seed, the command that replays it and a minimal
    trace; the exit status is then 1.
    """
    from dtnbus.byzantine import parse_assignment
    from dtnbus.messages import max_faulty
    from dtnbus.simulation.engine import SimOptions
    from dtnbus.simulation.network import parse_partitions
    from dtnbus.simulation.scenario import describe_options, run_seeds

    try:
        fixed, unplaced = parse_assignment(byzantine, nodes)
        parse_partitions(partition.replace("random", ""), nodes, max(duration, 1e-9))
    except ValueError as exc:
        raise LocalError(str(exc)) from None
    if len(fixed) + len(unplaced) > nodes:
        raise LocalError(f"--byzantine names {len(fixed) + len(unplaced)} replicas; there are "
                         f"{nodes}")
    options = SimOptions(nodes=nodes, byzantine=fixed, unplaced=unplaced, drop=drop,
                         reorder=reorder, duplicate=duplicate, partition=partition,
                         crash_restart=crash_restart, clients=clients, requests=requests,
                         latency_ms=latency, bandwidth_mbps=bandwidth, duration=duration,
                         settle=settle, authenticator=authenticator, timers=timers)
    f = max_faulty(nodes)
    faulty = len(fixed) + len(unplaced)
    modes = ", ".join([f"{i}={m}" for i, m in sorted(fixed.items())] +
                      [f"{m} (a replica picked per seed)" for m in unplaced]) or "none"
    click.echo(f"simulating n={nodes} (f={f}), seeds {seed}..{seed + seeds - 1}; "
               f"byzantine: {modes}")
    if faulty > f:
        click.echo(f"  note: {faulty} faulty replicas > f={f}: PBFT promises nothing here")
    click.echo(f"  {describe_options(options)}")
    summary = run_seeds(options, range(seed, seed + seeds), jobs=jobs)
    for failure in summary.failures:
        v = failure.violation
        click.echo(f"VIOLATION seed {failure.seed}: {v.kind}: {v.detail}")
        if failure.shrunk:
            click.echo(f"  still fails without: {', '.join(failure.shrunk)}")
        click.echo(f"  replay: {failure.command}")
        click.echo("  schedule: " + "; ".join(failure.schedule))
        click.echo("  minimal trace (virtual seconds):")
        for line in failure.trace:
            click.echo(f"  {line}")
    if summary.runs_with_violations > len(summary.failures):
        click.echo(f"  failing seeds: {summary.failing_seeds[:50]}")
    per_batch = summary.messages_per_batch
    click.echo(f"{summary.seeds} seed(s): {summary.runs_with_violations} with violations "
               f"{dict(summary.violations) or ''}; {summary.committed_batches} batches "
               f"committed; {summary.virtual_seconds:.1f} virtual s in "
               f"{summary.wall_seconds:.2f} wall s; {summary.messages} messages"
               + (f" ({per_batch:.1f} per batch)" if per_batch else ""))
    if as_json:
        click.echo(json.dumps(summary.to_json(), separators=(",", ":")))
    if summary.runs_with_violations:
        sys.exit(1)


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
