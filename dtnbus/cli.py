"""The `dtnbus` command line. Every error a user can cause is one line and exit code 2."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import click

from dtnbus.byzantine import MODE_HELP
from dtnbus.cluster import DEFAULT_DIR
from dtnbus.errors import LocalError, ProblemFound
from dtnbus.l2.commands import chain_options

DIR_OPTION = click.option("--dir", "directory", type=click.Path(path_type=Path), default=None,
                          help=f"Cluster directory (default {DEFAULT_DIR}).")
CONFIG_OPTION = click.option("--config", "config_file", type=click.Path(path_type=Path),
                             default=None, help="Cluster file (instead of --dir).")
CURVE_OPTION = click.option(
    "--curve", is_flag=True,
    help="CurveZMQ on every connection: encrypted, and only keys in the cluster file may "
         "connect (docs/security.md).")
SPECULATIVE_OPTION = click.option(
    "--speculative/--no-speculative", default=None,
    help="The fast path: replicas also reply once pre-prepared (durably; skipped under "
         "load); the client accepts all n matching replies in one view. Saves the prepare "
         "hop. Default: the protocol's ([protocol] speculative, true; sync: off with "
         "--no-tentative).")
SCHEME_OPTION = click.option("--scheme", type=click.Choice(["ed25519", "rsa2048"]),
                             default="ed25519", show_default=True, help="Signature scheme.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dtnbus")
def cli() -> None:
    """dtnbus: a PBFT message bus of validator processes over ZeroMQ."""


FRESH_OPTION = click.option("--fresh", is_flag=True,
                            help="Discard the keys, ledgers and cluster file already in the "
                                 "directory (never done without this flag).")


@cli.command()
@click.option("--nodes", type=click.IntRange(min=1), default=None,
              help="Make keys for N nodes on this machine and the whole cluster file.")
@click.option("--node", "node_id", type=click.IntRange(min=0), default=None,
              help="Make only node K's key, on the host that will run it, and its public "
                   "fragment node-K.toml (see docs/deploy.md).")
@click.option("--client", "client_name", default=None,
              help="Make only a client's key and its public fragment client-NAME.toml.")
@click.option("--clients", "extra_clients", type=click.IntRange(min=0), default=0,
              show_default=True,
              help="With --nodes: also make K client keys client-1..K, admitted at genesis "
                   "(one per client program; 'client' is the operator).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Directory for keys/ and cluster.toml (or the fragment).")
@SCHEME_OPTION
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address of every node (--nodes).")
@click.option("--hosts", default=None,
              help="Comma list: one address per node (separate machines or namespaces).")
@click.option("--advertise", default=None,
              help="With --node: the address peers and clients reach this node at.")
@click.option("--bind", default=None,
              help="Local address the node sockets bind to, when it differs from the "
                   "advertised one (NAT, cloud): e.g. 0.0.0.0.")
@click.option("--metrics-host", default="127.0.0.1", show_default=True,
              help="Address /metrics listens on; loopback keeps it off the network.")
@click.option("--operator", is_flag=True,
              help="With --client: this client may admit and remove clients.")
@click.option("--base-port", type=click.IntRange(1, 65535), default=None,
              help="First of 3 consecutive ports per node (default: free ports; 7000 with "
                   "--hosts or --node).")
@FRESH_OPTION
@CURVE_OPTION
def keygen(nodes: int | None, node_id: int | None, client_name: str | None, extra_clients: int,
           out: Path, scheme: str, host: str, hosts: str | None, advertise: str | None,
           bind: str | None, metrics_host: str, operator: bool, base_port: int | None,
           fresh: bool, curve: bool) -> None:
    """Create key pairs (mode 0600) and a cluster file, or one host's key and fragment."""
    if sum(x is not None for x in (nodes, node_id, client_name)) != 1:
        raise LocalError("give exactly one of --nodes N (all keys here), --node K (this "
                         "host's key) or --client NAME")
    if curve and nodes is None:
        raise LocalError("--curve makes every key on this machine: use it with --nodes N "
                         "(keygen --node K makes no CURVE key)")
    if node_id is not None:
        from dtnbus.provision import DEFAULT_BASE_PORT, node_fragment

        if advertise is None:
            raise LocalError("--node needs --advertise ADDR: the address peers reach it at")
        path = node_fragment(out, node_id, advertise, scheme, bind=bind,
                             base_port=base_port or DEFAULT_BASE_PORT,
                             metrics_host=metrics_host, fresh=fresh)
        click.echo(f"wrote {path} (public: send it to whoever assembles the cluster file); "
                   f"private key {out / 'keys' / f'node-{node_id}.key'} (0600, stays here)")
        return
    if client_name is not None:
        from dtnbus.provision import client_fragment

        path = client_fragment(out, client_name, scheme, fresh=fresh, operator=operator)
        click.echo(f"wrote {path} (public); private key {out / 'keys' / f'{client_name}.key'} "
                   "(0600)")
        return
    from dtnbus.config import existing_cluster_files, generate_cluster

    assert nodes is not None
    host_list = [h.strip() for h in hosts.split(",")] if hosts else None
    _note_discarded(out, fresh, existing_cluster_files(out) if out.is_dir() else [])
    path = generate_cluster(out, nodes, scheme, host=host, base_port=base_port,
                            hosts=host_list, bind=bind, metrics_host=metrics_host, fresh=fresh,
                            clients=extra_clients, curve=curve)
    who = f" and {extra_clients + 1} clients" if extra_clients else ""
    click.echo(f"wrote {path} ({nodes} nodes{who}, {scheme}{', CURVE' if curve else ''}); "
               f"private keys in "
               f"{out / 'keys'} (0600)")


def _note_discarded(directory: Path, fresh: bool, existing: list[str]) -> None:
    if fresh and existing:
        click.echo(f"--fresh: discarding {', '.join(existing)}", err=True)


@cli.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path), required=True,
              help="Cluster file.")
@click.option("--id", "node_id", type=click.IntRange(min=0), required=True, help="Node id.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@click.option("--byzantine", "byzantine_mode", default=None, metavar="MODE",
              help="TEST FEATURE: run this node faulty on purpose. Modes: " + MODE_HELP + ".")
def node(config_file: Path, node_id: int, log_level: str, byzantine_mode: str | None) -> None:
    """Run one validator node in the foreground (one OS process).

    Refuses to start with a key file others can read, with a key that is not this node's,
    or over a ledger another node is using."""
    from dtnbus.byzantine import parse_mode
    from dtnbus.config import load_cluster
    from dtnbus.node import run_node

    try:
        mode = parse_mode(byzantine_mode) if byzantine_mode is not None else None
    except ValueError as exc:
        raise LocalError(f"--byzantine: {exc}") from None
    run_node(load_cluster(config_file), node_id, log_level, mode)


@cli.group()
def cluster() -> None:
    """Create, start, stop and inspect a cluster of node processes."""


IDS_OPTION = click.option("--id", "ids", type=click.IntRange(min=0), multiple=True,
                          help="Only this node (repeat for several; default: every node).")
READY_TIMEOUT_OPTION = click.option("--timeout", "ready_timeout", type=click.FloatRange(min=1),
                                    default=None,
                                    help="Seconds to wait for readiness (default 30 + 0.6 n).")


@cluster.command("up")
@click.option("--nodes", type=click.IntRange(min=1), default=4, show_default=True,
              help="Number of validator nodes (at least 4: n >= 3f+1 with f >= 1).")
@DIR_OPTION
@SCHEME_OPTION
@click.option("--bandwidth", type=click.FloatRange(min=0), default=0.0,
              help="Per-link bandwidth in Mbps (0: unlimited).")
@click.option("--latency", type=click.FloatRange(min=0), default=0.0,
              help="Per-link one-way latency in ms (0: none).")
@FRESH_OPTION
@CURVE_OPTION
@click.option("--byzantine", default="", metavar="ID=MODE,...",
              help="TEST FEATURE: these nodes misbehave on purpose, e.g. 3=equivocate,2=silent "
                   "(kept for restarts by 'cluster start'). Modes: " + MODE_HELP + ".")
@chain_options
def cluster_up_cmd(nodes: int, directory: Path | None, scheme: str, bandwidth: float,
                   latency: float, fresh: bool, curve: bool, chain: str | None,
                   threshold: int | None, deposit: str | None, takeover: float,
                   byzantine: str) -> None:
    """Create a new cluster in DIR and start it; returns when every node is ready.

    A directory that already holds a cluster is refused: start it with 'cluster start',
    or add --fresh to discard it."""
    from dtnbus.cluster import check_cluster_dir, cluster_up, refuse_running
    from dtnbus.config import existing_cluster_files
    from dtnbus.l2.commands import check_chain_options

    directory = directory or DEFAULT_DIR
    check_cluster_dir(directory)
    refuse_running(directory)
    check_chain_options(nodes, chain, threshold, deposit)
    shaping = ({"bandwidth_mbps": bandwidth, "latency_ms": latency}
               if bandwidth or latency else None)
    modes = _byzantine_assignment(byzantine, nodes)
    _note_discarded(directory, fresh,
                    existing_cluster_files(directory) if directory.is_dir() else [])
    config = cluster_up(directory, nodes, scheme, shaping=shaping, fresh=fresh, curve=curve,
                        byzantine=modes)
    click.echo(f"cluster of {config.n} nodes (f={config.f}{', CURVE' if curve else ''}) "
               f"ready in {directory}")
    if modes:
        click.echo("BYZANTINE (test feature): " + ", ".join(
            f"node {i} {m}" for i, m in sorted(modes.items()))
            + ("" if len(modes) <= config.f else f"; more than f={config.f}: PBFT promises "
               "nothing"))
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


def _byzantine_assignment(text: str, nodes: int) -> dict[int, str]:
    """`3=equivocate,2=silent` -> {3: "equivocate", 2: "silent"}; a bad one is exit 2."""
    from dtnbus.byzantine import parse_assignment

    try:
        fixed, unplaced = parse_assignment(text, nodes)
    except ValueError as exc:
        raise LocalError(f"--byzantine: {exc}") from None
    if unplaced:
        raise LocalError(f"--byzantine: name the node of each mode, e.g. 3={unplaced[0]}")
    return {i: str(m) for i, m in fixed.items()}


@cluster.command("start")
@DIR_OPTION
@IDS_OPTION
@READY_TIMEOUT_OPTION
def cluster_start_cmd(directory: Path | None, ids: tuple[int, ...],
                      ready_timeout: float | None) -> None:
    """Start the existing cluster in DIR over its own keys and ledgers.

    Nodes already running are left alone; restarted nodes catch up from their peers."""
    from dtnbus.cluster import cluster_start
    from dtnbus.l2.commands import restart_chain_for

    directory = directory or DEFAULT_DIR
    config, started = cluster_start(directory, list(ids) or None, ready_timeout)
    if started:
        click.echo(f"started node(s) {','.join(map(str, started))} of {config.n} in "
                   f"{directory}; ready (see 'dtnbus cluster status --dir {directory}')")
    else:
        click.echo(f"every requested node of {directory} was already running")
    chain_side = restart_chain_for(directory, list(ids) or None)
    if chain_side:
        click.echo(chain_side)


def _stop(directory: Path | None, config_file: Path | None, ids: tuple[int, ...]) -> None:
    from dtnbus.cluster import STOP_TIMEOUT, resolve_config, stop_cluster
    from dtnbus.l2.commands import stop_chain_for

    config = resolve_config(directory, config_file)
    home = config.path.parent if config_file is not None else (directory or DEFAULT_DIR)
    chain_side = stop_chain_for(home, list(ids) or None)
    report = stop_cluster(config, home, list(ids) or None)
    click.echo(f"{report.describe(STOP_TIMEOUT)}; keys and ledgers kept in {home}")
    if chain_side:
        click.echo(chain_side)


@cluster.command("stop")
@DIR_OPTION
@CONFIG_OPTION
@IDS_OPTION
def cluster_stop_cmd(directory: Path | None, config_file: Path | None,
                     ids: tuple[int, ...]) -> None:
    """Stop every node of the cluster on this machine, however it was started.

    Nodes are found by the lock each holds on its ledger and by command line, not only by
    the launcher's pid file: SIGTERM, then SIGKILL after 10 s. Keys and ledgers stay."""
    _stop(directory, config_file, ids)


@cluster.command("down")
@DIR_OPTION
@CONFIG_OPTION
@IDS_OPTION
def cluster_down_cmd(directory: Path | None, config_file: Path | None,
                     ids: tuple[int, ...]) -> None:
    """The same as 'cluster stop': every node stops, keys and ledgers stay."""
    _stop(directory, config_file, ids)


@cluster.command("restart")
@DIR_OPTION
@IDS_OPTION
@READY_TIMEOUT_OPTION
def cluster_restart_cmd(directory: Path | None, ids: tuple[int, ...],
                        ready_timeout: float | None) -> None:
    """Stop, then start the cluster in DIR (or only --id K): ledgers are kept and the
    restarted nodes catch up."""
    from dtnbus.cluster import STOP_TIMEOUT, cluster_start, resolve_config, stop_cluster
    from dtnbus.l2.commands import restart_chain_for, stop_chain_for

    directory = directory or DEFAULT_DIR
    config = resolve_config(directory, None)
    stop_chain_for(directory, list(ids) or None)
    report = stop_cluster(config, directory, list(ids) or None)
    click.echo(report.describe(STOP_TIMEOUT))
    config, started = cluster_start(directory, list(ids) or None, ready_timeout)
    click.echo(f"started node(s) {','.join(map(str, started))}; ready")
    chain_side = restart_chain_for(directory, list(ids) or None)
    if chain_side:
        click.echo(chain_side)


@cluster.command("status")
@DIR_OPTION
@CONFIG_OPTION
@click.option("--timeout", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="Seconds to wait for the nodes' answers.")
def cluster_status_cmd(directory: Path | None, config_file: Path | None,
                       timeout: float) -> None:
    """Each node's state, height, lag behind the quorum, view and ledger head.

    States: ready; catching-up (below the height a quorum has reached); joining (has not
    heard every peer yet); view-change (not in the view a quorum is in); down (no
    answer). Exit status 1 unless every node is ready."""
    from dtnbus.cluster import assess, cluster_status, resolve_config
    from dtnbus.messages import commit_quorum

    config = resolve_config(directory, config_file)
    health, quorum_height = assess(config, cluster_status(config, timeout))
    click.echo(f"{'node':>4} {'state':>11} {'height':>7} {'lag':>5} {'view':>5} "
               f"{'checkpoint':>10} {'pending':>7} {'txs':>9}  head")
    for h in health:
        s = h.status
        if s is None:
            click.echo(f"{h.node_id:>4} {h.state:>11}")
            continue
        click.echo(f"{h.node_id:>4} {h.state:>11} {s.last_executed:>7} {h.lag:>5} "
                   f"{s.view:>5} {s.stable_checkpoint:>10} {s.pending:>7} "
                   f"{s.executed_txs:>9}  {s.head.hex()[:16]}")
    counts: dict[str, int] = {}
    for h in health:
        counts[h.state] = counts.get(h.state, 0) + 1
    summary = ", ".join(f"{c} {state}" for state, c in sorted(counts.items()))
    answering = sum(1 for h in health if h.status is not None)
    q = commit_quorum(config.n)
    quorum = ("" if answering >= q else
              f"; NO QUORUM: {answering} of {config.n} answer, {q} needed to commit")
    click.echo(f"quorum height {quorum_height}; {summary}{quorum}")
    if counts.get("ready", 0) < config.n:
        sys.exit(1)


@cluster.command("assemble")
@click.argument("fragments", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="The cluster file to write.")
@click.option("--settings", type=click.Path(path_type=Path), default=None,
              help="A TOML file whose [protocol], [shaping] etc. go into the cluster file.")
@FRESH_OPTION
def cluster_assemble_cmd(fragments: tuple[Path, ...], out: Path, settings: Path | None,
                         fresh: bool) -> None:
    """Join node-K.toml and client-NAME.toml fragments (public keys and endpoints from
    each host's 'keygen --node') into one checked cluster file."""
    import tomllib

    from dtnbus.provision import assemble

    base = None
    if settings is not None:
        try:
            base = tomllib.loads(settings.read_text())
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise LocalError(f"cannot read --settings {settings}: {exc}") from None
        base = {k: v for k, v in base.items() if k not in ("nodes", "clients", "scheme")}
    path = assemble(list(fragments), out, fresh=fresh, base=base)
    from dtnbus.config import load_cluster

    config = load_cluster(path)
    click.echo(f"wrote {path}: {config.n} nodes (f={config.f}), {len(config.clients)} "
               "client(s); copy it to every host, next to its keys/")


@cli.command()
@DIR_OPTION
@CONFIG_OPTION
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="Generate this many transactions.")
@click.option("--tx-bytes", type=click.IntRange(min=12), default=300, show_default=True,
              help="Bytes per generated transaction.")
@click.option("--seed", type=int, default=None,
              help="With --count: generate these transactions (default: fresh random ones).")
@click.option("--file", "source", type=click.File("rb"), default=None,
              help="Read transactions from a file ('-' for stdin), one per line.")
@click.option("--request-txs", type=click.IntRange(min=1), default=256, show_default=True,
              help="Transactions per signed request.")
@click.option("--client", "client_name", default=None,
              help="Submit as this client (its own key; see 'dtnbus client new'). Makes the "
                   "submission resumable: run the same command again after a crash and "
                   "nothing executes twice. Default: the cluster's first client, in a fresh "
                   "session of its own (concurrent submitters never collide).")
@click.option("--window", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Requests outstanding at once.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Seconds to wait for every request to be decided.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on the last line.")
def submit(directory: Path | None, config_file: Path | None, count: int | None, tx_bytes: int,
           seed: int | None, source: object, request_txs: int, client_name: str | None,
           window: int, timeout: float, as_json: bool) -> None:
    """Send transactions and wait until each is decided (f+1 matching replies).

    First asks every node for its status: with fewer than a commit quorum answering it
    says so within seconds (exit 1) instead of waiting out --timeout. Prints how many
    transactions committed, how many were refused and why, how many requests were sent
    again and how long the cluster's full pools made it wait; exit 1 unless all
    committed."""
    from dtnbus.client import Client
    from dtnbus.cluster import resolve_config
    from dtnbus.identities import resume_session, work_digest
    from dtnbus.messages import commit_quorum
    from dtnbus.sync import chunk, make_transactions

    if (count is None) == (source is None):
        raise LocalError("give exactly one of --count N or --file FILE")
    if source is not None:
        txs = [line.rstrip(b"\n") for line in source if line.strip()]  # type: ignore[attr-defined]
    else:
        txs = make_transactions(count or 0, tx_bytes, seed=seed)
    if not txs:
        raise LocalError("no transactions to send (the file holds no non-empty line)")
    config = resolve_config(directory, config_file)
    spec = config.client(client_name)
    requests = chunk(txs, request_txs)
    session, resumed = None, False
    if client_name is not None:
        session, resumed = resume_session(config, spec.id, work_digest(requests))
        if resumed:
            click.echo(f"resuming session {session} of client {spec.id}: requests decided "
                       "before are answered with their results, not executed again", err=True)
    q = commit_quorum(config.n)
    with Client(config, spec.id, session=session) as client:
        answered = client.status(PROBE_SECONDS)
        if len(answered) < q:
            refused = client.refused_by()  # CURVE: the nodes may have refused our key
            raise ProblemFound(f"{len(answered)} of {config.n} nodes answered: {refused}"
                               if refused else
                               _down_message(config, answered, q, directory, config_file))
        silent = [s.id for s in config.nodes if s.id not in answered]
        if silent:
            click.echo(f"note: node(s) {','.join(map(str, silent))} did not answer; "
                       f"{len(answered)} of {config.n} did (a quorum is {q})", err=True)
        progress = _SubmitProgress(config.n, timeout)
        result = client.submit(requests, timeout=timeout, on_tick=progress, window=window)
        progress.done()
        now = client.status(PROBE_SECONDS) if result.seconds_f1 is None else answered
    summary = result.summary()
    if as_json:
        click.echo(json.dumps({**summary, "client": spec.id, "session": result.session,
                               "resumed": resumed}))
    else:
        click.echo(_submit_line(summary, config.f + 1))
    if result.seconds_f1 is None:
        raise ProblemFound(f"only {result.decided}/{result.requests} requests decided "
                           f"({config.f + 1} matching replies) within {timeout:g} s; "
                           f"{len(now)} of {config.n} nodes answer a status query now"
                           + ("" if len(now) >= q else f" (a quorum is {q})")
                           + "; run the same command again to resume"
                           * (client_name is not None) + "; see 'dtnbus cluster status'")
    if result.refused:
        raise ProblemFound(f"{summary['refused_txs']} transactions were not committed: "
                           + ", ".join(f"{k} {v}" for k, v in sorted(result.refused.items()))
                           + " (requests; see docs/protocol.md: clients and exactly-once)")


def _submit_line(s: dict, replies: int) -> str:
    parts = [f"{s['committed_txs']}/{s['transactions']} transactions committed in "
             f"{s['committed_requests']}/{s['requests']} requests"]
    if s["seconds"] is not None:
        parts.append(f"all decided in {s['seconds']:.3f}s ({replies} matching replies each)")
    if s["refused"]:
        parts.append("refused: " + ", ".join(f"{k} {v}" for k, v in sorted(s["refused"].items())))
    if s["undecided_requests"]:
        parts.append(f"{s['undecided_requests']} requests undecided")
    parts.append(f"{s['retransmissions']} sent again")
    if s["busy_answers"]:
        parts.append(f"pools full: {s['busy_answers']} busy answers, backed off "
                     f"{s['backed_off_s']:.2f}s")
    if s["last_seq"] is not None:
        parts.append(f"last seq {s['last_seq']}, head {s['head'][:16]}")
    return "; ".join(parts)


PROBE_SECONDS = 3.0


def _down_message(config: object, answered: dict, q: int, directory: Path | None,
                  config_file: Path | None) -> str:
    where = f"--config {config_file}" if config_file else f"--dir {directory or DEFAULT_DIR}"
    n = config.n  # type: ignore[attr-defined]
    who = f" (node {','.join(map(str, sorted(answered)))})" if answered else ""
    return (f"{len(answered)} of {n} nodes answered within {PROBE_SECONDS:g} s{who}; "
            f"committing needs {q}: start the cluster ('dtnbus cluster start {where}') or "
            f"check 'dtnbus cluster status {where}'")


class _SubmitProgress:
    """A progress line on stderr every 2 s while a submission waits (a terminal gets it
    rewritten in place, a log gets one line per update)."""

    EVERY = 2.0

    def __init__(self, n: int, timeout: float) -> None:
        import time

        self.n, self.timeout = n, timeout
        self.start = time.monotonic()
        self.next = self.start + self.EVERY
        self.shown = False
        self.tty = sys.stderr.isatty()

    def __call__(self, accepted: int, total: int, replied: dict[int, int]) -> None:
        import time

        now = time.monotonic()
        if now < self.next:
            return
        self.next = now + self.EVERY
        answering = sum(1 for c in replied.values() if c)
        line = (f"waiting: {accepted}/{total} requests committed, replies from "
                f"{answering}/{self.n} nodes, {now - self.start:.0f} s of {self.timeout:g} s")
        if self.tty:
            click.echo(f"\r{line}", err=True, nl=False)
        else:
            click.echo(line, err=True)
        self.shown = True

    def done(self) -> None:
        if self.shown and self.tty:
            click.echo("", err=True)


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
@click.option("--tentative/--no-tentative", default=None,
              help="PBFT tentative execution: replicas reply once prepared (the prepared "
                   "certificate durable first); the client accepts q matching replies, or "
                   "f+1 committed ones. Saves the commit hop. Default: the protocol's "
                   "([protocol] tentative, true).")
@SPECULATIVE_OPTION
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Seed of the emulated latencies' draws (default: a fresh one, printed); "
                   "run k of a cell uses seed+k-1.")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run each cell this many times; report the median and range.")
@SCHEME_OPTION
@CURVE_OPTION
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=None,
              help="Keep the cluster directory here (default: a temporary one); a grid "
                   "keeps one sub-directory per cell. An existing cluster is refused.")
@FRESH_OPTION
@click.option("--out", type=click.Path(path_type=Path), default=Path("results"),
              show_default=True, help="Where the CSV, markdown and PNG charts go.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on the last line.")
def sync(nodes: list[int], tx: list[int], tx_bytes: int, bandwidth: list[float],
         latency: list[float], mode: str, latency_dist: str, jitter: float, mbps_base: str,
         burst: int | None, request_txs: int, tentative: bool | None,
         speculative: bool | None, seed: int | None,
         repeat: int, scheme: str, curve: bool, directory: Path | None, fresh: bool,
         out: Path, as_json: bool) -> None:
    """Synchronize TX transactions across NODES nodes and report how long it took.

    Start-up is not timed. Prints the time to f+1 matching replies, to a commit quorum
    (2f+1) of nodes and to all nodes having executed everything (with --repeat: the
    median and range), the strict floor no run can beat and the expectation under the
    latency model, the per-phase means and every node's ledger head.
    """
    import itertools

    from dtnbus.report import result_row, series_row, write_results
    from dtnbus.shaping import LinkProfile
    from dtnbus.sync import SyncResult, fresh_seed
    from dtnbus.sync_runs import run_line, run_series, summary_lines

    def each_run(k: int, result: SyncResult) -> None:
        if repeat > 1:
            click.echo(run_line(k, result))

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
    dirs: list[Path | None] = [None] * len(cells)
    if directory is not None:
        dirs = ([directory / f"cell-{i}" for i in range(1, len(cells) + 1)] if grid
                else [directory])
        _check_sync_dirs(directory, dirs, fresh)  # all before the first cell runs
    seed = fresh_seed() if seed is None else seed  # one base for every cell: paired draws
    rows, run_rows, cells_json = [], [], []
    for i, (n, t, bw, lat) in enumerate(cells, 1):
        if grid:
            click.echo(f"[{i}/{len(cells)}] n={n} tx={t} {bw:g} Mbps {lat:g} ms", err=True)

        series = run_series(n, t, bw, lat, repeat=repeat, seed=seed, tx_bytes=tx_bytes,
                            request_txs=request_txs, scheme=scheme, directory=dirs[i - 1],
                            shaping=shaping, fresh=fresh, curve=curve, tentative=tentative,
                            speculative=speculative,
                            on_progress=_progress_printer(t, request_txs), on_run=each_run)
        for line in summary_lines(series):
            click.echo(line)
        cells_json.append(series.to_json())
        rows.append(series_row(series))
        run_rows += [result_row(r, run=k + 1, seed=r.seed) for k, r in enumerate(series.runs)]
        if not series.ledgers_identical:
            bad = next(r for r in series.runs if not r.ledgers_identical)
            raise LocalError(f"ledgers differ: {bad.ledger_error}")
    for path in write_results(rows, out, run_rows=run_rows if repeat > 1 else None):
        click.echo(f"wrote {path}")
    if as_json:
        payload = cells_json[0] if not grid else cells_json
        click.echo(json.dumps(payload, separators=(",", ":")))


def _check_sync_dirs(directory: Path, dirs: list[Path | None], fresh: bool) -> None:
    """sync makes a new cluster: never over one that runs, nor (without --fresh) over
    keys and ledgers already there."""
    from dtnbus.cluster import check_cluster_dir, refuse_running
    from dtnbus.config import existing_cluster_files

    check_cluster_dir(directory)
    for d in dirs:
        assert d is not None
        check_cluster_dir(d)
        refuse_running(d)
        existing = existing_cluster_files(d) if d.is_dir() else []
        if existing and not fresh:
            raise LocalError(f"{d} already holds a cluster ({', '.join(existing)}); sync "
                             "creates a new one: give another --dir, or add --fresh to "
                             "discard it (run a kept cluster with 'dtnbus cluster start')")
        _note_discarded(d, fresh, existing)


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
@click.option("--epoch", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="What the replicas' clocks read at the start, seconds: a node's clock is "
                   "the host's monotonic clock, far from 0 after uptime (e.g. 40000).")
@click.option("--spoil-tags", is_flag=True,
              help="Client c0 is faulty: the MAC tags of each of its requests hold at some "
                   "replicas only (drawn per send). Needs --authenticator ed25519.")
@click.option("--curve/--no-curve", default=True, show_default=True,
              help="Clients' connections authenticated as under CurveZMQ (a replica knows "
                   "who sent a frame); --no-curve: as a node without CURVE.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes for many seeds.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on the last line.")
def simulate(nodes: int, seed: int, seeds: int, byzantine: str, drop: float, reorder: bool,
             duplicate: float, partition: str, crash_restart: int, clients: int, requests: int,
             duration: float, settle: float, latency: float, bandwidth: float,
             authenticator: str, timers: str, epoch: float, spoil_tags: bool, curve: bool,
             jobs: int, as_json: bool) -> None:
    """Run the real replica code on a virtual clock and an in-memory network, with
    Byzantine replicas and network faults, checking the invariants after every step.

    Agreement at every sequence, no request executed twice, no exception, clients accept
    only what correct replicas executed, and, after the network heals, every request
    decided. A violation prints the seed, the command that replays it and a minimal
    trace; the exit status is then 1.
    """
    from dtnbus.byzantine import parse_assignment
    from dtnbus.messages import max_faulty
    from dtnbus.simulation.engine import SimOptions, spoil_error
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
                         settle=settle, authenticator=authenticator, timers=timers,
                         epoch=epoch, spoil_tags=spoil_tags, curve=curve)
    if (why := spoil_error(options)) is not None:
        raise LocalError(why)
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


@cli.command()
@click.option("--nodes", type=click.IntRange(min=4), default=4, show_default=True,
              help="Validator processes (n >= 3f+1).")
@click.option("--clients", type=click.IntRange(min=1), default=16, show_default=True,
              help="Independent clients, each with its own key and session.")
@click.option("--request-txs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Transactions per request (1: every transaction its own request).")
@click.option("--tx-bytes", type=click.IntRange(min=32), default=300, show_default=True)
@click.option("--seconds", type=click.FloatRange(min=0.5), default=30.0, show_default=True,
              help="Measured seconds (after --warmup).")
@click.option("--warmup", type=click.FloatRange(min=0), default=3.0, show_default=True,
              help="Seconds of load before measuring.")
@click.option("--pipeline", type=click.IntRange(min=1), default=32, show_default=True,
              help="Closed loop: requests outstanding per client.")
@click.option("--rate", type=click.FloatRange(min=1), default=None,
              help="Open loop instead: offer this many requests per second in all.")
@click.option("--auth", "authentication", type=click.Choice(["mac", "signature"]),
              default="mac", show_default=True,
              help="How clients authenticate requests (replicas accept both).")
@click.option("--durability", type=click.Choice(["fsync", "process"]), default="fsync",
              show_default=True,
              help="fsync: every group commit survives power loss; process: it survives any "
                   "crash of the node process.")
@SPECULATIVE_OPTION
@click.option("--out", type=click.Path(path_type=Path), default=Path("results"),
              show_default=True, help="Folder for the CSV.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on the last line.")
def bench(nodes: int, clients: int, request_txs: int, tx_bytes: int, seconds: float,
          warmup: float, pipeline: int, rate: float | None, authentication: str,
          durability: str, speculative: bool | None, out: Path, as_json: bool) -> None:
    """Throughput and latency under many independent clients (a fresh local cluster)."""
    import csv

    from dtnbus.bench import run_bench

    protocol = None if speculative is None else {"speculative": speculative}
    result = run_bench(nodes, clients, request_txs, seconds, tx_bytes, pipeline, rate, warmup,
                       protocol=protocol, authentication=authentication, durability=durability)
    row = result.to_json()
    click.echo(f"n={result.nodes} clients={result.clients} request_txs={result.request_txs} "
               f"{result.mode} loop" + (f" at {rate:g}/s" if rate else
                                        f", {pipeline} outstanding per client")
               + f", {result.authentication}, durability {durability}")
    click.echo(f"  {result.tx_per_s:,.0f} tx/s ({result.tx} tx in {result.seconds:.1f} s); "
               f"latency p50 {result.p50_ms} ms, p99 {result.p99_ms} ms, "
               f"p99.9 {result.p999_ms} ms")
    click.echo(f"  node CPU {result.cpu_us_per_tx} us per committed transaction (all nodes); "
               f"nodes used {result.node_cpu_share:.0%} of the machine, the load generator "
               f"{result.client_cpu_share:.0%}; ledgers identical: {result.ledgers_identical}")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "bench.csv"
    new = not path.exists()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
    click.echo(f"appended to {path}")
    if as_json:
        click.echo(json.dumps(row))
    if not result.ledgers_identical:
        raise ProblemFound(f"ledgers differ after the run: {result.ledger_error}")


@cli.group()
def ledger() -> None:
    """Inspect node ledgers."""


@ledger.command("verify")
@DIR_OPTION
@CONFIG_OPTION
@click.option("--node", "node_ids", type=click.IntRange(min=0), multiple=True,
              help="Only this node's ledger (repeat for several; default: every node whose "
                   "ledger is on this machine is expected).")
def ledger_verify(directory: Path | None, config_file: Path | None,
                  node_ids: tuple[int, ...]) -> None:
    """Find every kind of damage in each node's ledger, and where the ledgers disagree.

    Checks each block's links and digests, each stored request's frame, client signature
    (against the cluster file's keys), digest and transaction count, each block's
    transaction count, requests without their block, and the chains against each other.
    One line per problem (node, block, kind); exit status 1 if there is any."""
    from dtnbus.cluster import resolve_config
    from dtnbus.ledger_check import check_cluster

    config = resolve_config(directory, config_file)
    for node_id in node_ids:
        config.node(node_id)
    reports, findings = check_cluster(config, set(node_ids) or None)
    per_node: dict[int, int] = {}
    for f in findings:
        per_node[f.node] = per_node.get(f.node, 0) + 1
    for rep in reports:
        problems = per_node.get(rep.node, 0)
        state = "ok" if not problems else f"{problems} problem(s)"
        click.echo(f"node {rep.node}: height {rep.height} txs {rep.transactions} "
                   f"head {rep.head.hex()[:16]} {state}")
    for finding in findings:
        click.echo(f"  {finding.line()}")
    if findings:
        kinds = sorted({f.kind for f in findings})
        raise ProblemFound(f"ledger verify found {len(findings)} problem(s) in "
                           f"{len(per_node)} ledger(s): {', '.join(kinds)}")
    heights = sorted({r.height for r in reports})
    click.echo(f"all {len(reports)} ledgers valid and identical up to block "
               f"{heights[0] if heights else 0}"
               + (f" (longest {heights[-1]}: the others are behind, not damaged)"
                  if len(heights) > 1 else ""))


@ledger.command("export")
@DIR_OPTION
@CONFIG_OPTION
@click.option("--node", "node_id", type=click.IntRange(min=0), default=None,
              help="Whose ledger (default: the first node whose ledger is on this machine).")
@click.option("--format", "fmt", type=click.Choice(["lines", "jsonl"]), default="lines",
              show_default=True,
              help="lines: each executed transaction's bytes, one per line (diff it against "
                   "what you submitted); jsonl: every ordered transaction with seq, position, "
                   "client, session, number, request digest and outcome.")
def ledger_export(directory: Path | None, config_file: Path | None, node_id: int | None,
                  fmt: str) -> None:
    """Print the global transaction pool, in ledger order."""
    from dtnbus.cluster import resolve_config
    from dtnbus.export import export

    config = resolve_config(directory, config_file)
    if node_id is None:
        local = [s for s in config.nodes if s.ledger.exists()]
        if not local:
            raise LocalError(f"no node's ledger from {config.path} is on this machine; give "
                             "--node K on the host that runs node K")
        spec = local[0]
    else:
        spec = config.node(node_id)
    out = click.get_binary_stream("stdout")
    count = export(spec.ledger, fmt, out)
    out.flush()
    click.echo(f"node {spec.id}: {count} transactions", err=True)


@cli.group()
def client() -> None:
    """Client identities: one key per client program, admitted by the cluster."""


@client.command("new")
@DIR_OPTION
@CONFIG_OPTION
@click.option("--name", required=True, help="The client's id (letters, digits, _ . -).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Seconds to wait for the running cluster to admit it.")
def client_new(directory: Path | None, config_file: Path | None, name: str,
               timeout: float) -> None:
    """Make a key pair for a new client (0600) and have the running cluster admit it.

    The admission is an ordered command signed by an operator key of this directory, so
    every node admits the client at the same point in the order; no restart."""
    from dtnbus import admission
    from dtnbus.cluster import resolve_config
    from dtnbus.identities import admit, curve_key_of, new_identity, operator_of

    config = resolve_config(directory, config_file)
    operator_of(config)  # before a key is made: can this host admit anyone?
    spec = new_identity(config, name)
    click.echo(f"made client {name}: private key {spec.key_file} (0600)", err=True)
    result = admit(config, admission.AdmissionChange("add", name, spec.public_key,
                                                     curve_key_of(config, name)), timeout)
    _admission_result(result, f"client {name} admitted", timeout)


@client.command("remove")
@DIR_OPTION
@CONFIG_OPTION
@click.option("--name", required=True, help="The client to remove.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Seconds to wait for the running cluster to remove it.")
def client_remove(directory: Path | None, config_file: Path | None, name: str,
                  timeout: float) -> None:
    """Remove a client: every node refuses its requests from that point in the order on."""
    from dtnbus import admission
    from dtnbus.cluster import resolve_config
    from dtnbus.identities import admit

    config = resolve_config(directory, config_file)
    result = admit(config, admission.AdmissionChange("remove", name, ""), timeout)
    _admission_result(result, f"client {name} removed", timeout)


def _admission_result(result: object, what: str, timeout: float) -> None:
    if result.seconds_f1 is None:  # type: ignore[attr-defined]
        raise ProblemFound(f"the cluster did not decide the admission command within "
                           f"{timeout:g} s; is it running? (dtnbus cluster status)")
    if not result.results:  # type: ignore[attr-defined]
        raise ProblemFound(f"the admission command was refused: {result.refused}")  # type: ignore[attr-defined]
    seq, head = next(iter(result.results.values()))  # type: ignore[attr-defined]
    click.echo(f"{what} at seq {seq} (block {head.hex()[:16]})")


@client.command("list")
@DIR_OPTION
@CONFIG_OPTION
def client_list(directory: Path | None, config_file: Path | None) -> None:
    """The clients this directory knows: admitted at genesis, or made here since."""
    from dtnbus.cluster import resolve_config

    config = resolve_config(directory, config_file)
    for spec in config.clients:
        role = "operator" if spec.operator else "client"
        here = "key here" if spec.key_file is not None and spec.key_file.exists() else "no key"
        click.echo(f"{spec.id}\tgenesis {role}\t{here}")
    for spec in config.local_clients():
        click.echo(f"{spec.id}\tadmitted by command\tkey here")
    if config.open_admission:
        click.echo("(admission is open: any Ed25519 key is a client, named pk:<its key>)")


def _add_optional_commands() -> None:
    from dtnbus.l2.commands import payout, reward

    cli.add_command(payout)
    cli.add_command(reward)
    try:
        from dtnbus.monitor import monitor_command
    except ImportError:  # pragma: no cover - the monitoring module is optional at import
        return
    cli.add_command(monitor_command)


def _add_fault_commands() -> None:
    from dtnbus.chaos import chaos_command

    cli.add_command(chaos_command)


_add_optional_commands()
_add_fault_commands()


def main() -> None:
    """Run the CLI; a usage or local error is one line on stderr and exit status 2, a
    problem found (a damaged ledger, a cluster that does not answer) exit status 1."""
    try:
        cli.main(prog_name="dtnbus", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # bare `dtnbus` / `dtnbus cluster`
        click.echo(exc.ctx.get_help())
        sys.exit(0)
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
    except ProblemFound as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
