"""Helpers shared by the MultiSigContract tests."""

from __future__ import annotations

import brownie

GWEI = 10**9


def reverts(error: str):
    """brownie.reverts for one of the contract's custom errors, e.g. reverts("NotAnOwner").
    brownie decodes a custom error without arguments as "NotAnOwner: "."""
    return brownie.reverts(revert_pattern=f"{error}(: )?")
