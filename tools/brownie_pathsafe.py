"""`brownie`, with `brownie run` working from any checkout path (tools/setup.sh installs
this as the venv's `brownie`).

brownie 1.22 imports a script by turning its absolute path into a dotted module name
(`/tmp/tmp.AbC/dtnbus/scripts/deploy.py` -> `tmp.tmp.AbC.dtnbus.scripts.deploy`, with `/` on
sys.path), so a dot in any directory above the project (`mktemp -d`, `~/work.v2/`) breaks
every `brownie run` with "No module named 'tmp.tmp'". Here a script is imported by its
module path inside the project (`scripts.deploy`, the project root on sys.path, as
brownie's project loader already arranges); everything else is brownie's own CLI.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType


def _import_from_path(path: Path) -> ModuleType:
    from brownie.project import get_loaded_projects
    from brownie.project import scripts as brownie_scripts

    module_path = None
    for project in get_loaded_projects():
        root = Path(project._path).resolve()
        if path.resolve().is_relative_to(root):
            relative = path.resolve().relative_to(root)
            module_path = ".".join((*relative.parts[:-1], relative.stem))
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            break
    if module_path is None or any("." in part for part in module_path.split(".")[:-1]):
        return _ORIGINAL(path)  # not inside a loaded project: brownie's own rule
    cache = brownie_scripts._import_cache
    if module_path in cache:
        return importlib.reload(cache[module_path])
    module = importlib.import_module(module_path)
    cache[module_path] = module
    return module


def patch() -> None:
    """Make brownie import project scripts by their module path within the project."""
    global _ORIGINAL
    from brownie.project import scripts as brownie_scripts

    if brownie_scripts._import_from_path is not _import_from_path:
        _ORIGINAL = brownie_scripts._import_from_path
        brownie_scripts._import_from_path = _import_from_path


_ORIGINAL = None


def main() -> int:
    patch()
    from brownie._cli.__main__ import main as brownie_main

    sys.argv[0] = "brownie"
    return brownie_main()


if __name__ == "__main__":
    sys.exit(main())
