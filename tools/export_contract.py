"""Copy the compiled MultiSigContract (ABI, creation bytecode, compiler settings) from brownie's
build into the dtnbus package, which deploys it and talks to it without loading brownie.

    brownie compile && python tools/export_contract.py

tests/contracts/test_artifact.py fails while the copy differs from a fresh compile."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "contracts" / "MultiSigContract.json"
SOURCE = ROOT / "contracts" / "MultiSigContract.sol"
ARTIFACT = ROOT / "dtnbus" / "l2" / "MultiSigContract.json"


def artifact_from_build(build: dict) -> dict:
    return {
        "contractName": build["contractName"],
        "source": "contracts/MultiSigContract.sol",
        "sourceSha256": hashlib.sha256(SOURCE.read_bytes()).hexdigest(),
        "compiler": build["compiler"],
        "abi": build["abi"],
        "bytecode": "0x" + build["bytecode"].removeprefix("0x"),
    }


def main() -> int:
    if not BUILD.exists():
        print(f"{BUILD} not found: run 'brownie compile' first", file=sys.stderr)
        return 2
    artifact = artifact_from_build(json.loads(BUILD.read_text()))
    ARTIFACT.write_text(json.dumps(artifact, indent=1) + "\n")
    print(f"wrote {ARTIFACT.relative_to(ROOT)} ({len(artifact['bytecode']) // 2 - 1} bytes of "
          f"creation code)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
