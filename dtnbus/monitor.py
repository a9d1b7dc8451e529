"""Run Debian's `prometheus` against a running cluster (`dtnbus monitor`).

`--config FILE` works for any cluster file (targets are made from its nodes' `metrics`
addresses into a temporary folder). With `--dir`, the cluster directory is the contract:
`dtnbus cluster up --dir DIR` writes
DIR/prometheus/targets.json (Prometheus file_sd format, one entry per node with `node` and
`cluster` labels). We run Prometheus on a verbatim copy of dtnbus/monitoring/prometheus.yml in a
temporary folder where `targets/` links to DIR/prometheus/ and `rules/` holds copies of
dtnbus/monitoring/rules/*.yml, with its TSDB in that folder too, so nothing outside it is written
and the config that is tested is the config that runs. The configuration ships inside the
package (dtnbus/monitoring/, package data), so an installed wheel has it too.
"""

from __future__ import annotations

import ctypes
import json
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from dtnbus.errors import LocalError

MONITORING_DIR = Path(__file__).resolve().parent / "monitoring"
DEFAULT_CLUSTER_DIR = Path(".dtnbus/cluster")


def targets_file(cluster_dir: Path) -> Path:
    """Where `dtnbus cluster up` writes the file_sd targets of a cluster."""
    return Path(cluster_dir) / "prometheus" / "targets.json"


def find_prometheus() -> str:
    """The path of the prometheus binary, or a one-line LocalError saying how to get it."""
    path = shutil.which("prometheus")
    if path is None:
        raise LocalError("prometheus is not installed; install it with: apt-get install prometheus")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class PrometheusHandle:
    """A running Prometheus: its URL, process, and the folder holding config, TSDB and log."""

    url: str
    process: subprocess.Popen[bytes]
    workdir: Path
    data_dir: Path
    log_path: Path
    _owns_workdir: bool = field(default=True, repr=False)

    def query(self, expr: str, timeout: float = 10.0) -> dict[str, Any]:
        """Run an instant PromQL query; returns the API's `data` (raises LocalError on error)."""
        return api_get(self.url, "/api/v1/query", {"query": expr}, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop Prometheus (SIGTERM, then SIGKILL) and remove the temporary folder."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 5) -> str:
        """The last lines of Prometheus' log, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> PrometheusHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def api_get(base_url: str, path: str, params: dict[str, str], timeout: float = 10.0) -> Any:
    """GET a Prometheus HTTP API endpoint and return its `data`, or raise LocalError."""
    url = f"{base_url}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:  # 400/422: the API explains a bad query in JSON
        try:
            body = json.load(exc)
        except ValueError:
            raise LocalError(f"prometheus {path}: HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise LocalError(f"prometheus {path}: {exc}") from exc
    if body.get("status") != "success":
        error = f"{body.get('errorType')}: {body.get('error')}"
        raise LocalError(f"prometheus {path} {params}: {error}")
    return body["data"]


def render_workdir(
    workdir: Path,
    cluster_dir: Path,
    monitoring_dir: Path = MONITORING_DIR,
    scrape_interval: str | None = None,
) -> Path:
    """Lay out prometheus.yml, rules/ and targets/ for one cluster; returns the config path.

    `scrape_interval` (e.g. "1s") overrides the scrape and evaluation interval of the
    template for tests that cannot wait for several default intervals.
    """
    template = monitoring_dir / "prometheus.yml"
    if not template.is_file():
        raise LocalError(f"{template}: missing; reinstall dtnbus (the monitoring "
                         "configuration is package data)")
    config = template.read_text()
    if scrape_interval is not None:
        if not re.fullmatch(r"\d+(ms|s|m)", scrape_interval):
            raise LocalError(f"bad scrape interval {scrape_interval!r}; expected e.g. 1s")
        config = re.sub(
            r"^(\s*(?:scrape_interval|evaluation_interval|scrape_timeout):).*$",
            rf"\g<1> {scrape_interval}", config, flags=re.MULTILINE,
        )
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "prometheus.yml").write_text(config)
    rules = workdir / "rules"
    rules.mkdir(exist_ok=True)
    for rule_file in sorted((monitoring_dir / "rules").glob("*.yml")):
        shutil.copy(rule_file, rules / rule_file.name)
    link = workdir / "targets"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(targets_file(cluster_dir).parent.resolve(), target_is_directory=True)
    return workdir / "prometheus.yml"


def start_prometheus(
    cluster_dir: Path,
    listen: str = "127.0.0.1:0",
    data_dir: Path | None = None,
    scrape_interval: str | None = None,
    ready_timeout: float = 30.0,
    monitoring_dir: Path = MONITORING_DIR,
) -> PrometheusHandle:
    """Start Prometheus scraping the cluster in `cluster_dir`, wait until it is ready.

    `listen` is host:port; port 0 picks a free one. The TSDB goes under `data_dir` or, by
    default, under the temporary folder that `stop()` removes.
    """
    cluster_dir = Path(cluster_dir)
    binary = find_prometheus()
    if not targets_file(cluster_dir).is_file():
        raise LocalError(
            f"{targets_file(cluster_dir)}: no targets file; start the cluster first with "
            f"`dtnbus cluster up --dir {cluster_dir}`"
        )
    host, _, port_text = listen.rpartition(":")
    if not host or not port_text.isdigit():
        raise LocalError(f"bad listen address {listen!r}; expected HOST:PORT")
    port = int(port_text) or free_port(host)
    workdir = Path(tempfile.mkdtemp(prefix="dtnbus-prometheus-"))
    try:
        config = render_workdir(workdir, cluster_dir, monitoring_dir, scrape_interval)
        data = Path(data_dir) if data_dir is not None else workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        log_path = workdir / "prometheus.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={data}",
                    f"--web.listen-address={host}:{port}",
                    "--storage.tsdb.retention.time=1d",
                ],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # our stop(), not the terminal's Ctrl-C, ends it
                preexec_fn=_die_with_parent,
            )
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    handle = PrometheusHandle(f"http://{host}:{port}", process, workdir, data, log_path)
    try:
        _wait_ready(handle, ready_timeout)
    except BaseException:
        handle.stop()
        raise
    return handle


def _wait_ready(handle: PrometheusHandle, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if handle.process.poll() is not None:
            raise LocalError(
                f"prometheus exited with code {handle.process.returncode}: "
                + (handle.log_tail(1) or "no log")
            )
        try:
            with urllib.request.urlopen(f"{handle.url}/-/ready", timeout=1.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise LocalError(f"prometheus at {handle.url} not ready after {timeout:.0f}s")
        time.sleep(0.1)


@click.command("monitor")
@click.option(
    "--dir", "cluster_dir", type=click.Path(path_type=Path), default=None,
    help=f"Directory of a running cluster (from `dtnbus cluster up`; default "
         f"{DEFAULT_CLUSTER_DIR}).",
)
@click.option(
    "--config", "config_file", type=click.Path(path_type=Path), default=None,
    help="Any cluster file (instead of --dir): scrape the metrics address of each node.",
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=9090, show_default=True,
    help="Port for Prometheus' web UI and API on 127.0.0.1 (0 picks a free one).",
)
@click.option(
    "--data-dir", type=click.Path(path_type=Path), default=None,
    help="Keep the TSDB here instead of in a temporary folder removed on exit.",
)
def monitor_command(cluster_dir: Path | None, config_file: Path | None, port: int,
                    data_dir: Path | None) -> None:
    """Run Prometheus against a running cluster until Ctrl-C.

    It scrapes every node (DIR/prometheus/targets.json, or the metrics addresses in
    --config FILE) and evaluates the rules in dtnbus/monitoring/rules; point Grafana at
    the printed URL (see docs/monitoring.md).
    """
    if cluster_dir is not None and config_file is not None:
        raise click.UsageError("give --dir or --config, not both")
    # SIGTERM (e.g. from a supervisor) stops Prometheus the same way Ctrl-C does, also
    # while it starts: start_prometheus() stops what it started on any exception.
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    # Ctrl-C too, explicitly: a process started with SIGINT ignored (a background job of a
    # non-interactive shell, some supervisors) inherits that, and Python then installs no
    # KeyboardInterrupt for it; `monitor` promises to stop on Ctrl-C wherever it runs.
    previous_int = signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
    made: Path | None = None
    try:
        if config_file is not None:
            made = Path(tempfile.mkdtemp(prefix="dtnbus-targets-"))
            cluster_dir = targets_for_config(config_file, made)
        _run_until_interrupted(cluster_dir or DEFAULT_CLUSTER_DIR, port, data_dir)
    except KeyboardInterrupt:
        click.echo("prometheus: stopped")
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)


def targets_for_config(config_file: Path, into: Path) -> Path:
    """Write file_sd targets for any cluster file under `into`; returns the folder to
    pass as a cluster directory."""
    from dtnbus.cluster import write_targets
    from dtnbus.config import load_cluster

    try:
        config = load_cluster(config_file)
    except LocalError as exc:
        error = click.ClickException(str(exc))
        error.exit_code = 2
        raise error from exc
    if not any(s.metrics for s in config.nodes):
        error = click.ClickException(f"{config_file}: no node has a metrics address")
        error.exit_code = 2
        raise error
    name = config.path.resolve().parent.name or "cluster"
    write_targets(config, into, cluster_name=name)
    return into


def _run_until_interrupted(cluster_dir: Path, port: int, data_dir: Path | None) -> None:
    try:
        handle = start_prometheus(cluster_dir, f"127.0.0.1:{port}", data_dir)
    except LocalError as exc:
        error = click.ClickException(str(exc))
        error.exit_code = 2  # as the rest of the CLI reports a LocalError
        raise error from exc
    try:
        click.echo(
            f"prometheus: {handle.url}  targets: {targets_file(cluster_dir)}  "
            f"data: {handle.data_dir}  (Ctrl-C to stop)"
        )
        code = handle.process.wait()
        raise click.ClickException(f"prometheus exited with code {code}: {handle.log_tail(1)}")
    finally:
        handle.stop()


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the process that started it dies, even
    by SIGKILL (Linux PR_SET_PDEATHSIG), so a killed `dtnbus monitor` leaves no Prometheus
    behind in its own session."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: stop() still ends it on a clean exit
        pass
