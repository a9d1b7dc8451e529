"""`dtnbus monitor` works for any cluster file, and an installed wheel carries its
configuration (dtnbus/monitoring is package data)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dtnbus.cluster import scrape_address
from dtnbus.config import generate_cluster, load_cluster
from dtnbus.monitor import targets_file, targets_for_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    src = tmp_path_factory.mktemp("src")  # build a copy: setuptools writes build/ in the tree
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "dtnbus", src / "dtnbus",
                    ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(out), str(src)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (path,) = out.glob("dtnbus-*.whl")
    return path


def test_the_wheel_carries_every_monitoring_file(wheel: Path) -> None:
    tracked = subprocess.run(["git", "ls-files", "dtnbus/monitoring"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    assert len(tracked) >= 6
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [t for t in tracked if t not in names]
    assert not missing, missing


def test_monitor_from_the_installed_wheel_renders_its_configuration(
        wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    cluster = generate_cluster(tmp_path / "c", 4)
    # the wheel's folder first on sys.path, run outside the checkout: the installed copy
    code = ("import sys, pathlib; sys.path.insert(0, sys.argv[1]); from dtnbus import monitor;"
            "assert str(monitor.MONITORING_DIR).startswith(sys.argv[1]), monitor.MONITORING_DIR;"
            "d = monitor.targets_for_config(pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]));"
            "print(monitor.render_workdir(pathlib.Path(sys.argv[4]), d))")
    out = subprocess.run([sys.executable, "-c", code, str(site), str(cluster),
                          str(tmp_path / "t"), str(tmp_path / "w")],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "w" / "prometheus.yml").is_file()
    assert (tmp_path / "w" / "rules" / "dtnbus.yml").is_file()


def test_targets_for_any_cluster_file(tmp_path: Path) -> None:
    path = generate_cluster(tmp_path / "prod", 4, hosts=[f"10.5.0.{i}" for i in range(4)],
                            metrics_host="0.0.0.0")
    folder = targets_for_config(path, tmp_path / "t")
    entries = json.loads(targets_file(folder).read_text())
    assert [e["targets"] for e in entries] == [[f"10.5.0.{i}:7002"] for i in range(4)]
    assert {e["labels"]["cluster"] for e in entries} == {"prod"}
    spec = load_cluster(generate_cluster(tmp_path / "local", 4)).node(0)
    assert scrape_address(spec) == spec.metrics  # loopback stays loopback


@pytest.mark.skipif(not any((Path(p) / "prometheus").exists()
                            for p in os.environ.get("PATH", "").split(":")),
                    reason="prometheus not installed (apt-get install prometheus)")
def test_monitor_config_scrapes_a_running_cluster(tmp_path: Path) -> None:
    import urllib.request

    from dtnbus.cluster import cluster_up, stop_nodes
    from dtnbus.waiting import poll_until

    class C:
        directory = tmp_path / "c"

    c = C()
    cluster_up(c.directory, 4)
    moved = tmp_path / "elsewhere" / "prod.toml"  # a cluster file outside any cluster dir
    moved.parent.mkdir()
    moved.write_text((c.directory / "cluster.toml").read_text().replace(
        'key_file = "keys/', f'key_file = "{c.directory}/keys/').replace(
        'ledger = "ledgers/', f'ledger = "{c.directory}/ledgers/'))
    proc = subprocess.Popen([sys.executable, "-m", "dtnbus", "monitor", "--config", str(moved),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("prometheus: http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split()[1]
        active: list[dict] = []

        def four_up() -> bool:  # Prometheus' own scrape schedule: nothing to block on
            with urllib.request.urlopen(f"{url}/api/v1/targets", timeout=5) as resp:
                active[:] = json.load(resp)["data"]["activeTargets"]
            return len(active) == 4 and all(t["health"] == "up" for t in active)

        assert poll_until(four_up, 60, 0.5), active
        assert {t["labels"]["cluster"] for t in active} == {"elsewhere"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        stop_nodes(c.directory)
