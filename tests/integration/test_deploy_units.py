"""deploy/: the systemd unit, the container image and the compose file, parsed and
checked against what dtnbus really does (ports, paths, labels, ids); run with a daemon
or systemd-analyze where this machine has them, skipped with the reason otherwise."""

from __future__ import annotations

import configparser
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dtnbus.config import load_cluster

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "dtnbus-node@.service"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_systemd_unit_restarts_runs_unprivileged_and_is_hardened() -> None:
    unit = _unit()
    service = unit["Service"]
    assert service["User"] == "dtnbus" and service["Group"] == "dtnbus"
    assert service["Restart"] == "on-failure" and float(service["RestartSec"]) > 0
    assert service["RestartPreventExitStatus"] == "2"  # dtnbus' exit code for a bad config
    argv = shlex.split(service["ExecStart"])
    assert argv[1:] == ["node", "--config", "/var/lib/dtnbus/cluster.toml", "--id", "%i"]
    assert service["StateDirectory"] == "dtnbus"
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "ProtectHome": "yes", "PrivateTmp": "yes", "CapabilityBoundingSet": "",
                       "UMask": "0077", "KillSignal": "SIGTERM"}.items():
        assert service[key] == value, key
    assert "After" in unit["Unit"] and unit["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed")
def test_systemd_analyze_accepts_the_unit(tmp_path: Path) -> None:
    dtnbus = Path(sys.executable).parent / "dtnbus"
    text = UNIT.read_text().replace("/opt/dtnbus/bin/dtnbus", str(dtnbus))
    (tmp_path / UNIT.name).write_text(text)
    out = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "dtnbus-node@3.service")],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    complaints = [line for line in (out.stdout + out.stderr).splitlines()
                  if UNIT.name in line or "dtnbus-node@3" in line]
    assert not complaints, complaints
    # the check can fail: a misspelt setting is reported
    (tmp_path / UNIT.name).write_text(text.replace("ProtectProc=invisible",
                                                   "ProtectProc=invisibl"))
    bad = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "dtnbus-node@3.service")],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert "invisibl" in bad.stdout + bad.stderr


def _dockerfile() -> list[tuple[str, str]]:
    steps = []
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            steps.append((word.upper(), rest.strip()))
    return steps


def test_dockerfile_installs_the_package_and_runs_as_a_user() -> None:
    steps = _dockerfile()
    assert steps[0][0] == "FROM" and steps[0][1].startswith("python:3.11")
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    copied = [rest.split()[0] for word, rest in steps if word == "COPY"]
    for path in [p for c in copied for p in c.split()]:
        assert (ROOT / path).exists(), path
    assert json.loads(dict(steps)["ENTRYPOINT"]) == ["dtnbus"]
    assert "7000 7001 7002" in dict(steps)["EXPOSE"]
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "!dtnbus/" in ignore and "!pyproject.toml" in ignore  # the COPY sources survive


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_runs_four_nodes_of_one_keygen_cluster(tmp_path: Path) -> None:
    compose = _compose()
    services = compose["services"]
    nodes = {name: s for name, s in services.items() if name.startswith("node")}
    assert sorted(nodes) == ["node0", "node1", "node2", "node3"]
    keygen = services["keygen"]["command"][0]
    assert "test -f /var/lib/dtnbus/cluster.toml ||" in keygen  # never regenerates keys
    argv = shlex.split(keygen.split("exec ", 1)[1])
    assert argv[:2] == ["dtnbus", "keygen"]
    # run keygen exactly as the container would, into a temporary volume
    volume = tmp_path / "volume"
    argv[argv.index("--out") + 1] = str(volume)
    made = subprocess.run([sys.executable, "-m", "dtnbus", *argv[1:]], capture_output=True,
                          text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    config = load_cluster(volume / "cluster.toml")
    assert config.n == len(nodes)
    for name, service in nodes.items():
        node_id = int(name.removeprefix("node"))
        assert service["command"] == ["node", "--config", "/var/lib/dtnbus/cluster.toml",
                                      "--id", str(node_id)]
        spec = config.node(node_id)
        assert spec.pub == f"tcp://{name}:7000" and spec.bind_pub == "tcp://0.0.0.0:7000"
        assert service["restart"] == "unless-stopped"
        assert service["depends_on"]["keygen"]["condition"] == "service_completed_successfully"
        assert service["cap_drop"] == ["ALL"] and service["read_only"] is True
        assert "7002/metrics" in " ".join(service["healthcheck"]["test"])
        assert spec.metrics.endswith(":7002")
    # published ports only on loopback
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)


def test_compose_prometheus_and_grafana_point_at_the_nodes_and_the_dashboard() -> None:
    compose = _compose()
    services = compose["services"]
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), (name, source)
    prom = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    targets = {t["targets"][0]: t["labels"] for t in job["static_configs"]}
    assert targets == {f"node{i}:7002": {"node": str(i), "cluster": "compose"}
                       for i in range(4)}
    source = yaml.safe_load((DEPLOY / "compose" / "grafana-datasource.yml").read_text())
    (datasource,) = source["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    dashboard = (ROOT / "dtnbus" / "monitoring" / "grafana" / "dashboards" / "dtnbus.json")
    assert f'"uid": "{datasource["uid"]}"' in dashboard.read_text()


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_compose_prometheus_config(tmp_path: Path) -> None:
    shutil.copy(DEPLOY / "compose" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copytree(ROOT / "dtnbus" / "monitoring" / "rules", tmp_path / "rules")
    out = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def _compose_command() -> list[str] | None:
    """`docker compose` (v2) or `docker-compose` (v1); both validate a file offline."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True,
                               timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def test_docker_compose_validates_the_file(tmp_path: Path) -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("neither 'docker compose' nor docker-compose is installed")
    out = subprocess.run([*command, "-f", str(DEPLOY / "compose.yaml"), "config", "-q"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    broken = DEPLOY / "compose.yaml"  # the check can fail: a wrong condition is refused
    bad = tmp_path / "compose.yaml"
    bad.write_text(broken.read_text().replace("service_completed_successfully", "done"))
    for sub in ("compose", "../dtnbus"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
    out = subprocess.run([*command, "-f", str(bad), "config", "-q"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0 and "done" in out.stderr, out.stderr
