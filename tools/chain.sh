#!/usr/bin/env bash
# `make chain`: a persistent local chain for docs/contracts.md's walk-through.
# anvil on 127.0.0.1:$CHAIN_PORT (default 8546, so brownie's own development chain on 8545
# stays free), chain id 1337, its state kept in $CHAIN_STATE (default
# .dtnbus/chain/state.json: saved every 5 s and on exit, loaded on the next start), and the
# brownie network `dtnbus-local` pointing at it (a live network: deployments are recorded
# in build/deployments/1337 and survive between `brownie run`s). Ctrl-C stops it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd); cd "$ROOT"
VENV=${VENV:-$ROOT/.venv}
export PATH="$VENV/bin:$PATH"
PORT=${CHAIN_PORT:-8546}
STATE=${CHAIN_STATE:-.dtnbus/chain/state.json}
NETWORK=dtnbus-local

die() { echo "chain: $*" >&2; exit 1; }
for tool in anvil brownie; do
  command -v "$tool" >/dev/null || die "$tool not on PATH; run: make setup"
done
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  die "something already listens on 127.0.0.1:$PORT (make chain in another terminal?); stop it or set CHAIN_PORT"
fi
mkdir -p "$(dirname "$STATE")"
# the network list lives in ~/.brownie (per user): add it once, then keep its host current
if ! brownie networks modify "$NETWORK" host="http://127.0.0.1:$PORT" chainid=1337 >/dev/null 2>&1; then
  brownie networks add Ethereum "$NETWORK" host="http://127.0.0.1:$PORT" chainid=1337 >/dev/null \
    || die "could not register the brownie network $NETWORK"
fi
[ -f "$STATE" ] && what="resumed from $STATE" || what="new; state will be kept in $STATE"
echo "chain: anvil on http://127.0.0.1:$PORT, chain id 1337 ($what)"
echo "chain: brownie network '$NETWORK'; anvil's first dev account funds everything:"
echo "  export PRIVATE_KEY=0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
echo "chain: Ctrl-C stops it (state saved)"
exec anvil --port "$PORT" --chain-id 1337 --state "$STATE" --state-interval 5 --silent
