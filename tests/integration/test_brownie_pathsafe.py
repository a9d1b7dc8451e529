"""`brownie run` works from a checkout whose path has a dot (issue 14): brownie 1.22 turns a
script's absolute path into a module name, so `/tmp/tmp.AbC/dtnbus/scripts/x.py` became
`tmp.tmp.AbC...` and failed; the venv's `brownie` (tools/brownie_pathsafe.py) imports
scripts by their path inside the project. Exercised through brownie's real `run()`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("brownie")

RUN = """
import sys
sys.path.insert(0, {tools!r})
if {patched!r}:
    import brownie_pathsafe
    brownie_pathsafe.patch()
from brownie import project
project.load({project!r}, name="DotPathTest")
from brownie.project.scripts import run
print("result:", run("scripts/hello.py"))
"""


@pytest.fixture
def dotted_project(tmp_path: Path) -> Path:
    """A minimal brownie project (no contracts, so nothing to compile) under 'tmp.AbC'."""
    project = tmp_path / "tmp.AbC" / "work.v2" / "dtnbus"
    (project / "scripts").mkdir(parents=True)
    (project / "contracts").mkdir()
    (project / "tests" / "contracts").mkdir(parents=True)
    shutil.copy(ROOT / "brownie-config.yaml", project / "brownie-config.yaml")
    # like the real scripts: one imports another as `scripts.<name>`
    (project / "scripts" / "helper.py").write_text("VALUE = 'imported by module path'\n")
    (project / "scripts" / "hello.py").write_text(
        "from scripts.helper import VALUE\n\n\ndef main():\n    return VALUE\n")
    return project


def _run(project: Path, patched: bool) -> subprocess.CompletedProcess[str]:
    code = RUN.format(tools=str(ROOT / "tools"), patched=patched, project=str(project))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=project)


def test_brownie_run_fails_from_a_dotted_path_without_the_fix(dotted_project: Path) -> None:
    out = _run(dotted_project, patched=False)
    assert out.returncode != 0
    assert "No module named 'tmp" in out.stderr, out.stderr[-2000:]


def test_brownie_run_works_from_a_dotted_path_with_the_fix(dotted_project: Path) -> None:
    out = _run(dotted_project, patched=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "result: imported by module path" in out.stdout


def test_the_venv_brownie_is_the_path_safe_wrapper() -> None:
    wrapper = Path(sys.executable).parent / "brownie"
    if not wrapper.exists():
        pytest.skip("no brownie in this venv (run tools/setup.sh)")
    assert "brownie_pathsafe.py" in wrapper.read_text(), "run: bash tools/setup.sh"
    out = subprocess.run([str(wrapper), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Brownie v" in out.stdout
