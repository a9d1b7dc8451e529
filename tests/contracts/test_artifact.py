"""The contract the dtnbus package deploys (dtnbus/l2/MultiSigContract.json, used without
brownie) is the one these tests compile: same source, same settings, same bytecode."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

ARTIFACT = Path("dtnbus/l2/MultiSigContract.json")
BUILD = Path("build/contracts/MultiSigContract.json")  # brownie test compiled it just now
FIX = "stale copy: run 'brownie compile && python tools/export_contract.py'"


def test_packaged_contract_matches_this_build(MultiSigContract):
    artifact = json.loads(ARTIFACT.read_text())
    build = json.loads(BUILD.read_text())
    source = Path("contracts/MultiSigContract.sol").read_bytes()
    assert artifact["sourceSha256"] == hashlib.sha256(source).hexdigest(), FIX
    assert artifact["abi"] == build["abi"], FIX
    assert artifact["compiler"] == build["compiler"], FIX
    assert artifact["bytecode"].removeprefix("0x") == MultiSigContract.bytecode, FIX
