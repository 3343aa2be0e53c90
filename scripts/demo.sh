#!/usr/bin/env bash
# The demo deployment: checks the host, runs a one-off bot in the sandbox, then brings up a
# supervised deployment with the daemon (clawpen up), shows it, and takes it down again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CLAWPEN_HOME="${CLAWPEN_HOME:-$PWD/.demo-state}"
clawpen=.venv/bin/clawpen
spec=examples/demo/clawpen.toml
step() { printf '\n== %s\n' "$*"; }

step "clawpen doctor"
"$clawpen" doctor || true
step "clawpen run -f $spec demo   (one-off, in the foreground)"
"$clawpen" run -f "$spec" demo
step "the bot's workspace, seen from the host (its files belong to the bot's own uid)"
ls -ln examples/demo/workspace
step "clawpen up -f $spec   (starts the daemon, applies the spec)"
"$clawpen" up -f "$spec"
sleep 8
step "clawpen ps"
"$clawpen" ps
step "clawpen logs web --tail 5"
"$clawpen" logs web --tail 5
step "clawpen events"
"$clawpen" events | tail -n 12
step "clawpen releases"
"$clawpen" releases
step "clawpen down"
"$clawpen" down
kill -TERM "$(cat "$CLAWPEN_HOME/daemon.pid")" 2>/dev/null || true
