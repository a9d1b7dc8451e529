"""The `dtnbus` command line, run as a separate process (`python -m dtnbus ...`).

Contract (issue 3): `--help` on every command; every error a user can cause (a bad flag, a
missing or invalid cluster file, a missing key file) is exactly one line on stderr that
starts with "error:", and exit status 2 - never a traceback.
"""

from __future__ import annotations

import json
import re
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from integration_support import RunningCluster, processes_mentioning

from dtnbus.config import generate_cluster, load_cluster
from dtnbus.crypto import public_key_text, read_private_key

RunCli = Callable[..., subprocess.CompletedProcess[str]]

COMMANDS = [
    [],
    ["keygen"],
    ["node"],
    ["cluster"],
    ["cluster", "up"],
    ["cluster", "down"],
    ["cluster", "status"],
    ["submit"],
    ["sync"],
    ["ledger"],
    ["ledger", "verify"],
    ["monitor"],
]


def assert_one_line_error(out: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2, nothing on stdout, exactly one line on stderr starting with 'error:'."""
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{out.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in out.stderr
    assert out.stdout == "", out.stdout
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture
def keyed(tmp_path: Path) -> Path:
    """A 4-node cluster file and keys, made in-process (`dtnbus keygen` is tested below)."""
    generate_cluster(tmp_path / "k", 4)
    return tmp_path / "k"


# ------------------------------------------------------------------ help


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "dtnbus")
def test_help_on_every_command(run_cli: RunCli, command: list[str]) -> None:
    out = run_cli(*command, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    # `python -m dtnbus` is how the tests (and cluster up) run it; click then says so
    usage = re.escape(" ".join(["dtnbus", *command]))
    assert re.match(rf"Usage: (python -m )?{usage} ", out.stdout), out.stdout[:200]
    assert "--help" in out.stdout


# ------------------------------------------------------------------ usage errors


@pytest.mark.parametrize("args", [
    ["--bogus"],
    ["keygen", "--bogus"],
    ["keygen", "--out", "x"],  # required --nodes missing
    ["cluster", "up", "--nodes", "four"],
    ["cluster", "status", "--timeout", "soon"],
    ["sync", "--scheme", "dsa"],
    ["frobnicate"],
], ids=lambda a: " ".join(a))
def test_bad_flag_is_one_line_and_exit_2(run_cli: RunCli, args: list[str]) -> None:
    assert_one_line_error(run_cli(*args))


@pytest.mark.parametrize("args,needle", [
    (["sync", "--nodes", "3"], "--nodes"),
    (["sync", "--bandwidth", "-1"], "--bandwidth"),
    (["submit", "--dir", "nowhere"], "give exactly one of --count N or --file FILE"),
], ids=["sync-nodes", "sync-bandwidth", "submit-nothing"])
def test_bad_value_is_one_line_and_exit_2(run_cli: RunCli, args: list[str],
                                          needle: str) -> None:
    assert_one_line_error(run_cli(*args), needle)


# ------------------------------------------------------------------ cluster file errors


@pytest.mark.parametrize("args", [
    ["ledger", "verify", "--config", "missing/cluster.toml"],
    ["ledger", "verify", "--dir", "missing"],
    ["submit", "--dir", "missing", "--count", "1"],
    ["node", "--config", "missing/cluster.toml", "--id", "0"],
], ids=lambda a: " ".join(a[:2]))
def test_missing_cluster_file(run_cli: RunCli, args: list[str]) -> None:
    assert_one_line_error(run_cli(*args), "missing/cluster.toml", "not found")


def test_invalid_toml_cluster_file(run_cli: RunCli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('scheme = "ed25519"\n[[nodes]\nid = 0\n')
    for args in (["ledger", "verify", "--config", bad], ["node", "--config", bad, "--id", "0"]):
        assert_one_line_error(run_cli(*args), str(bad), "not valid TOML")


def test_cluster_file_that_is_not_text(run_cli: RunCli, tmp_path: Path) -> None:
    bad = tmp_path / "binary.toml"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    assert_one_line_error(run_cli("ledger", "verify", "--config", bad), str(bad))


# (what to replace, replacement, a word the error line must contain)
WRONG_TYPES = [
    ("id = 0\n", 'id = "zero"\n', "id"),
    ("id = 0\n", "id = 0.0\n", "id"),
    ('pub = "tcp://', "pub = 7\n#", "pub"),
    ('router = "tcp://', "router = false\n#", "router"),
    ('public_key = "', "public_key = 7\n#", "public_key"),
    ('ledger = "ledgers/node-0.sqlite"', "ledger = [1]", "ledger"),
    ('scheme = "ed25519"', "scheme = 5", "scheme"),
    ('metrics = "127.0.0.1:', "metrics = 7\n#", "metrics"),
    ('key_file = "keys/node-0.key"', "key_file = 7", "key_file"),
    ('scheme = "ed25519"', 'scheme = "ed25519"\nprotocol = 3', "protocol"),
    ('scheme = "ed25519"', 'scheme = "ed25519"\n[shaping]\nbandwidth_mbps = "fast"',
     "bandwidth_mbps"),
    ('scheme = "ed25519"', 'scheme = "ed25519"\nlinks = 4', "links"),
    ('scheme = "ed25519"', 'scheme = "ed25519"\n[protocol]\nwindow = "big"', "window"),
    ('scheme = "ed25519"', 'scheme = "ed25519"\n[protocol]\nbatch_delay = "fast"',
     "batch_delay"),
]


@pytest.mark.parametrize("old,new,word", WRONG_TYPES,
                         ids=[f"{w}-{i}" for i, (_o, _n, w) in enumerate(WRONG_TYPES)])
def test_cluster_file_with_a_wrong_typed_field(run_cli: RunCli, keyed: Path, old: str,
                                               new: str, word: str) -> None:
    text = (keyed / "cluster.toml").read_text()
    assert old in text
    path = keyed / "wrong.toml"
    path.write_text(text.replace(old, new, 1))
    # `node` is the command that uses every field; a file that loads would start a node.
    out = run_cli("node", "--config", path, "--id", "0", timeout=6)
    assert_one_line_error(out, word)
    assert processes_mentioning(str(path)) == []


@pytest.mark.parametrize("nodes", ["nodes = 5", "nodes = [1, 2]", 'nodes = "all"'])
def test_cluster_file_whose_nodes_are_not_tables(run_cli: RunCli, tmp_path: Path,
                                                 nodes: str) -> None:
    path = tmp_path / "nodes.toml"
    path.write_text(f'scheme = "ed25519"\n{nodes}\n')
    assert_one_line_error(run_cli("ledger", "verify", "--config", path), "nodes")


# ------------------------------------------------------------------ key file errors


def test_missing_node_key_file(run_cli: RunCli, keyed: Path) -> None:
    key = keyed / "keys" / "node-0.key"
    key.unlink()
    out = run_cli("node", "--config", keyed / "cluster.toml", "--id", "0", timeout=8)
    assert_one_line_error(out, "key file", str(key))


def test_missing_client_key_file(run_cli: RunCli, keyed: Path) -> None:
    key = keyed / "keys" / "client.key"
    key.unlink()
    out = run_cli("submit", "--dir", keyed, "--count", "1", "--timeout", "1")
    assert_one_line_error(out, "key file", str(key))


def test_key_file_that_is_not_a_key(run_cli: RunCli, keyed: Path) -> None:
    key = keyed / "keys" / "node-1.key"
    key.write_text("hello\n")
    out = run_cli("node", "--config", keyed / "cluster.toml", "--id", "1", timeout=8)
    assert_one_line_error(out, str(key), "not an unencrypted PEM private key")


def test_node_id_not_in_cluster(run_cli: RunCli, keyed: Path) -> None:
    out = run_cli("node", "--config", keyed / "cluster.toml", "--id", "9", timeout=8)
    assert_one_line_error(out, "node 9 is not in")


# ------------------------------------------------------------------ keygen


@pytest.mark.parametrize("scheme", ["ed25519", "rsa2048"])
def test_keygen_writes_cluster_file_and_private_keys_0600(run_cli: RunCli, tmp_path: Path,
                                                          scheme: str) -> None:
    out_dir = tmp_path / "keys-out"
    out = run_cli("keygen", "--nodes", "4", "--out", out_dir, "--scheme", scheme)
    assert out.returncode == 0, out.stderr
    for stream in (out.stdout, out.stderr):
        assert "PRIVATE KEY" not in stream and "-----BEGIN" not in stream
    assert "cluster.toml" in out.stdout

    config = load_cluster(out_dir / "cluster.toml")
    assert config.scheme == scheme and config.n == 4 and config.f == 1
    assert "PRIVATE" not in (out_dir / "cluster.toml").read_text()
    key_files = sorted((out_dir / "keys").iterdir())
    assert [p.name for p in key_files] == ["client.key"] + [f"node-{i}.key" for i in range(4)]
    for path in key_files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{path} is {path.stat().st_mode:o}"
    # the public keys in the file are the key files' own
    for spec in config.nodes:
        assert spec.key_file is not None
        assert public_key_text(read_private_key(spec.key_file).public_key()) == spec.public_key
    client = config.client()
    assert client.key_file is not None
    assert public_key_text(read_private_key(client.key_file).public_key()) == client.public_key
    endpoints = [e for s in config.nodes for e in (s.pub, s.router, s.metrics)]
    assert len(set(endpoints)) == 12  # 3 distinct ports per node


# ------------------------------------------------------------------ against a cluster


def test_submit_from_stdin_and_ledger_verify(run_cli: RunCli, cluster: RunningCluster) -> None:
    lines = "".join(f"transaction number {i} from stdin\n" for i in range(7))
    out = run_cli("submit", "--config", cluster.directory / "cluster.toml", "--file", "-",
                  "--request-txs", "3", "--timeout", "30", input=lines)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("7/7 transactions committed in 3/3 requests"), out.stdout
    assert "(2 matching replies each)" in out.stdout
    cluster.wait_executed(7)
    verify = run_cli("ledger", "verify", "--dir", cluster.directory)
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout.count(" txs 7 ") == 4, verify.stdout


# ------------------------------------------------------------------ sync end to end


def test_sync_rsa2048_json(run_cli: RunCli, tmp_path: Path) -> None:
    directory = tmp_path / "sync"
    out = run_cli("sync", "--nodes", "4", "--tx", "50", "--scheme", "rsa2048", "--json",
                  "--dir", directory, timeout=90)
    assert out.returncode == 0, out.stderr
    assert "PRIVATE KEY" not in out.stdout
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("nodes", "tx", "tx_bytes", "bandwidth_mbps", "latency_ms", "seconds_f1",
                "seconds_2f1", "seconds_all", "phases", "ledgers_identical"):
        assert key in result, key
    assert (result["nodes"], result["tx"], result["tx_bytes"]) == (4, 50, 300)
    assert result["bandwidth_mbps"] == 0 and result["latency_ms"] == 0
    assert result["ledgers_identical"] is True, result.get("ledger_error")
    f1, f2, fall = result["seconds_f1"], result["seconds_2f1"], result["seconds_all"]
    assert all(isinstance(t, float) and t > 0 for t in (f1, f2, fall)), (f1, f2, fall)
    assert f2 <= fall
    assert set(result["phases"]) == {"request_to_preprepare", "preprepare_to_prepared",
                                     "prepared_to_committed", "committed_to_executed"}
    assert all(v >= 0 for v in result["phases"].values())
    (run,) = result["runs"]
    heights = set(run["ledger_heights"].values())
    assert len(heights) == 1 and heights.pop() >= 1
    assert len(set(run["ledger_heads"].values())) == 1
    # the human-readable report precedes the JSON line
    assert re.search(r"(f\+1=2 matching replies|3 tentative|4 speculative replies).*:\s+"
                     r"\d+\.\d+ s",
                     out.stdout), out.stdout
    assert processes_mentioning(str(directory)) == []
    assert (directory / "cluster.toml").exists()
    assert load_cluster(directory / "cluster.toml").scheme == "rsa2048"
