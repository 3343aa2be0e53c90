#!/usr/bin/env bash
# The demo deployment: checks the host, runs a one-off bot in the sandbox, then brings up a
# supervised deployment with the daemon (clawpen up): a health-checked web bot published on the
# host's loopback, and a bot whose egress is limited to one site by the clawpen gateway. Shows
# them (state, logs, the gateway's connection log, metrics, the dashboard's address), runs the
# hostile-action check, and takes everything down again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CLAWPEN_HOME="${CLAWPEN_HOME:-$PWD/.demo-state}"
clawpen=.venv/bin/clawpen
# The demo works on a copy (.demo-work), so it leaves examples/ as it was.
work="$PWD/.demo-work"
rm -rf "$work" && cp -r examples/demo "$work"
spec="$work/clawpen.toml"
# Some sandboxed build machines reach package registries through a mirror on a reserved address
# (e.g. 203.0.113.80), which the gateway refuses unless allowed: allow exactly that address.
addr="$(getent ahostsv4 pypi.org | awk 'NR==1{print $1}')"
if [ -n "$addr" ] && ! .venv/bin/python -c "import ipaddress,sys; sys.exit(not ipaddress.ip_address('$addr').is_global)"; then
  echo "note: pypi.org resolves to the non-public address $addr here; the demo allows it (allow_private)"
  sed -i "s|network = { egress = \[\"pypi.org:443\"\] }|network = { egress = [\"pypi.org:443\"], allow_private = [\"$addr/32\"] }|" "$spec"
fi
step() { printf '\n== %s\n' "$*"; }

step "clawpen doctor"
"$clawpen" doctor || true
step "clawpen run -f $spec demo   (one-off, in the foreground)"
"$clawpen" run -f "$spec" demo
step "the bot's workspace, seen from the host (its files belong to the bot's own uid)"
ls -ln "$work/workspace"
step "clawpen up -f $spec   (starts the daemon, applies the spec)"
"$clawpen" up -f "$spec"
sleep 10
step "clawpen ps"
"$clawpen" ps
step "curl http://127.0.0.1:18000/   (web, published on the host's loopback only)"
curl -s -o /dev/null -w 'HTTP %{http_code} from the web bot\n' http://127.0.0.1:18000/ || true
step "clawpen logs web --tail 5"
"$clawpen" logs web --tail 5
step "clawpen logs fetcher --tail 3   (allowed, not on the list, raw IP)"
"$clawpen" logs fetcher --tail 3
step "clawpen net log fetcher   (every connection the gateway saw, with its verdict)"
"$clawpen" net log fetcher -n 6
step "clawpen metrics web --since 5m"
"$clawpen" metrics web --since 5m | head -n 14 || true
step "clawpen validate --hostile demo   (hostile actions in a throwaway sandbox with demo's policy)"
"$clawpen" validate --hostile -f "$spec" demo | tail -n 12 || true
step "clawpen audit --only spec,configuration   (each bot's exposure and what changed, with fixes)"
"$clawpen" audit -f "$spec" --only spec,configuration --offline | head -n 30 || true
step "clawpen dashboard   (the web dashboard, on this host's loopback)"
"$clawpen" dashboard || true
step "clawpen events"
"$clawpen" events | tail -n 12
step "clawpen releases"
"$clawpen" releases
step "clawpen down"
"$clawpen" down
kill -TERM "$(cat "$CLAWPEN_HOME/daemon.pid")" 2>/dev/null || true
