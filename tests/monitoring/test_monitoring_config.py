"""monitoring/ without a running Prometheus: promtool checks, the dashboard's shape, and
every PromQL expression naming only metrics that dtnbus.metrics really registers."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from monitoring_exprs import (
    DASHBOARD,
    MONITORING,
    RULES_DIR,
    dashboard,
    dashboard_exprs,
    iter_panels,
    metric_names,
    recorded_names,
    rule_exprs,
    variable_selectors,
)

from dtnbus import monitor
from dtnbus.errors import LocalError
from dtnbus.metrics import ClientMetrics, NodeMetrics, registered_metric_names

HERE = Path(__file__).resolve().parent
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)"
)


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def write_targets(cluster_dir: Path, ports: list[int]) -> Path:
    """A targets file in the format `dtnbus cluster up` writes."""
    path = monitor.targets_file(cluster_dir)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps([
        {"targets": [f"127.0.0.1:{port}"], "labels": {"node": str(i), "cluster": cluster_dir.name}}
        for i, port in enumerate(ports)
    ]))
    return path


@needs_promtool
def test_the_top_level_monitoring_folder_is_the_packaged_one() -> None:
    """The repository's `monitoring/` (where the layout says it is) and the package's
    (what `dtnbus monitor` ships) are one folder, never two copies that drift apart."""
    top = MONITORING.parent.parent / "monitoring"
    assert top.is_symlink() and top.resolve() == MONITORING.resolve()
    assert (top / "prometheus.yml").is_file() and (top / "rules").is_dir()


def test_promtool_accepts_the_template_config() -> None:
    result = promtool("check", "config", MONITORING / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_accepts_the_config_rendered_for_a_cluster(tmp_path: Path) -> None:
    write_targets(tmp_path / "cluster", [9101, 9102, 9103, 9104])
    config = monitor.render_workdir(tmp_path / "work", tmp_path / "cluster", scrape_interval="1s")
    result = promtool("check", "config", config)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output  # the targets file is found through the link
    assert "1 rule files found" in output


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", *sorted(RULES_DIR.glob("*.yml")))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_each_alert_fires_on_its_incident_and_not_on_a_healthy_node() -> None:
    result = promtool("test", "rules", HERE / "alert_rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test() -> None:
    tests = yaml.safe_load((HERE / "alert_rules_test.yml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])}
    alerts = {e.where.removeprefix("alert ") for e in rule_exprs() if e.kind == "alert"}
    assert alerts == tested


def provisioned_datasource_uid() -> str:
    path = MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    (source,) = yaml.safe_load(path.read_text())["datasources"]
    assert source["type"] == "prometheus"
    return source["uid"]


def test_dashboard_json_is_a_provisionable_dashboard() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    ids = [panel["id"] for panel in iter_panels(board["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    provider = MONITORING / "grafana" / "provisioning" / "dashboards" / "dtnbus.yml"
    (entry,) = yaml.safe_load(provider.read_text())["providers"]
    assert entry["type"] == "file" and entry["options"]["path"]


def test_every_panel_has_the_provisioned_datasource_and_targets() -> None:
    uid = provisioned_datasource_uid()
    panels = [p for p in iter_panels(dashboard()["panels"]) if p["type"] != "row"]
    assert len(panels) >= 10
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no targets"
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == uid, panel["title"]
        assert "gridPos" in panel, panel["title"]


def test_dashboard_panels_do_not_overlap_on_the_grid() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in iter_panels(dashboard()["panels"]):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = panel["title"]


def test_dashboard_covers_what_operators_watch() -> None:
    exprs = " ".join(e.promql for e in dashboard_exprs())
    for needed in (
        "histogram_quantile(0.99, sum by (phase, le) (rate(dtnbus_phase_seconds_bucket",
        "dtnbus_executed_transactions_total", "dtnbus_dropped_messages_total",
        "dtnbus_view", "dtnbus_last_executed_sequence", "dtnbus_shaper_queue_bytes",
        "dtnbus_messages_total", "dtnbus_message_bytes_total",
    ):
        assert needed in exprs, needed
    kinds = {p["type"] for p in iter_panels(dashboard()["panels"])}
    assert "heatmap" in kinds


def exported_names() -> set[str]:
    return registered_metric_names(NodeMetrics(0).registry) | registered_metric_names(
        ClientMetrics().registry
    )


def test_every_expression_names_only_metrics_dtnbus_exports() -> None:
    # The dashboard and the rules cannot drift from dtnbus/metrics.py: any name they use
    # must be registered there, created by a recording rule, or Prometheus' own `up`.
    known = exported_names() | recorded_names() | {"up"}
    exprs = dashboard_exprs() + variable_selectors() + rule_exprs()
    assert len(exprs) > 20
    for expr in exprs:
        names = metric_names(expr.promql)
        assert names, f"{expr.where}: no metric name found in {expr.promql!r}"
        unknown = names - known
        assert not unknown, f"{expr.where} uses {sorted(unknown)} which nothing exports"


def test_the_name_check_would_catch_a_renamed_metric() -> None:
    known = exported_names()
    renamed = "rate(dtnbus_phase_secs_bucket[1m])"
    assert metric_names(renamed) - known == {"dtnbus_phase_secs_bucket"}
    assert metric_names('sum by (reason) (rate(dtnbus_dropped_messages_total{x="y"}[5m]))') == {
        "dtnbus_dropped_messages_total"
    }


def test_dashboard_file_is_formatted_json() -> None:
    text = DASHBOARD.read_text()
    assert text == json.dumps(json.loads(text), indent=2) + "\n"


def test_monitor_says_in_one_line_when_prometheus_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_targets(tmp_path, [9101])
    monkeypatch.setattr(monitor.shutil, "which", lambda name: None)
    with pytest.raises(LocalError, match="prometheus is not installed"):
        monitor.start_prometheus(tmp_path)
    result = CliRunner().invoke(monitor.monitor_command, ["--dir", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "prometheus is not installed" in result.output


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed")
def test_monitor_says_in_one_line_when_the_cluster_has_no_targets(tmp_path: Path) -> None:
    result = CliRunner().invoke(monitor.monitor_command, ["--dir", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert "no targets file" in result.output and "dtnbus cluster up" in result.output


def test_monitor_help() -> None:
    result = CliRunner().invoke(monitor.monitor_command, ["--help"])
    assert result.exit_code == 0
    assert "--dir" in result.output and "--port" in result.output
