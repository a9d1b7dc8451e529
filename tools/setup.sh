#!/usr/bin/env bash
# One idempotent set-up for `make run` / `make test` on a fresh machine, offline but for
# PyPI, npm and Debian: the venv (pure-Python eth-brownie + dtnbus), solc through solc-js
# behind a shim py-solc-x takes for native solc, and anvil from npm on the venv's PATH.
# A stamp skips the slow part when requirements and lock files have not changed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd); cd "$ROOT"
VENV=${VENV:-$ROOT/.venv}
STAMP="$VENV/.dtnbus-setup"
want=$(cat requirements.txt pyproject.toml package.json package-lock.json tools/setup.sh tools/brownie_pathsafe.py 2>/dev/null | sha256sum | cut -c1-16)
# py-solc-x looks for solc in one place per machine ($HOME/.solcx), shared by every
# checkout: the shim there must run this checkout's solc-js (a CI clone in /tmp that wrote
# it last and was deleted left every other checkout without a compiler), so it is written
# on every run, before the stamp may skip the rest
solc_shim() {
  FULL=$(node -p "require('solc').version()"); VER=${FULL%%+*}
  DEST=${SOLCX_BINARY_PATH:-$HOME/.solcx}; mkdir -p "$DEST"
  cat > "$DEST/solc-v$VER" <<SH
#!/bin/sh
case "\$1" in --version|-v) printf 'solc, the solidity compiler commandline interface\nVersion: %s\n' '$FULL'; exit 0;; esac
exec node '$ROOT/tools/solc-shim.js' "\$@"
SH
  chmod +x "$DEST/solc-v$VER"
}
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/dtnbus" ]; then
  if [ -d node_modules/solc ]; then solc_shim; fi
  exit 0
fi
echo "setup: building $VENV (first run takes about a minute)"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip >/dev/null
# BROWNIE_NOCOMPILE + --no-binary: brownie as plain Python (the mypyc wheel breaks --coverage).
BROWNIE_NOCOMPILE=1 "$VENV/bin/pip" install -q --no-binary eth-brownie -r requirements.txt
if find "$VENV"/lib/python3*/site-packages/brownie -name '*.so' | grep -q .; then
  echo "setup: a compiled (mypyc) brownie is installed; run: BROWNIE_NOCOMPILE=1 $VENV/bin/pip install --force-reinstall --no-deps --no-cache-dir --no-binary eth-brownie eth-brownie==1.22.2" >&2
  exit 1
fi
"$VENV/bin/pip" install -q --no-deps -e .
# `brownie run` from any checkout path: brownie turns a script's absolute path into a module
# name, so a dot in a parent folder (mktemp's tmp.XXXX) breaks it; the wrapper imports
# scripts by their path inside the project (tools/brownie_pathsafe.py)
cat > "$VENV/bin/brownie" <<SH
#!/bin/sh
exec "$VENV/bin/python" "$ROOT/tools/brownie_pathsafe.py" "\$@"
SH
chmod +x "$VENV/bin/brownie"
if [ -f package.json ]; then
  command -v npm >/dev/null || { echo "setup: npm is missing; install Node.js 20 and npm" >&2; exit 1; }
  if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --silent; else npm install --no-audit --no-fund --silent; fi
  ln -sf "$ROOT/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil" "$VENV/bin/anvil"
  solc_shim
fi
echo "$want" > "$STAMP"
echo "setup: ok ($VENV)"
