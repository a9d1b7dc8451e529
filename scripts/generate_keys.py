"""Generate owner keys: `brownie run scripts/generate_keys.py [main COUNT]`.

Writes COUNT (default $OWNERS_COUNT or 30) fresh key pairs to $OWNERS_FILE (default owners.json,
git-ignored) with mode 0600 and prints only the addresses. Refuses to overwrite an existing file
unless OVERWRITE=1.
"""

import os

from scripts.multisig import generate_owner_keys, owners_file


def main(count=None):
    path = owners_file()
    n = int(count or os.environ.get("OWNERS_COUNT", 30))
    addresses = generate_owner_keys(path, n, overwrite=os.environ.get("OVERWRITE") == "1")
    print(f"wrote {n} owner keys to {path} (mode 0600); addresses:")
    for i, address in enumerate(addresses):
        print(f"  {i:3d} {address}")
