#!/usr/bin/env bash
# The demo: checks the host, then runs a small bot in the namespace sandbox with limits.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CLAWPEN_HOME="${CLAWPEN_HOME:-$PWD/.demo-state}"
clawpen=.venv/bin/clawpen

echo "== clawpen doctor"
"$clawpen" doctor || true
echo
echo "== clawpen plan -f examples/demo/clawpen.toml demo"
"$clawpen" plan -f examples/demo/clawpen.toml demo
echo
echo "== clawpen run -f examples/demo/clawpen.toml demo"
"$clawpen" run -f examples/demo/clawpen.toml demo
echo
echo "== the bot's workspace, seen from the host (files belong to the bot's own uid)"
ls -ln examples/demo/workspace
