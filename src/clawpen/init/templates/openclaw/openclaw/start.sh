#!/bin/sh
# Starts the OpenClaw gateway inside its clawpen sandbox. HOME is the workspace (/workspace).
set -eu
OPENCLAW="/opt/bot/node_modules/openclaw/openclaw.mjs"
if [ ! -f "$OPENCLAW" ]; then
    echo "openclaw is not installed at /opt/bot: check the build steps (clawpen up shows them)" >&2
    exit 1
fi
# First start only: write OpenClaw's config file (what five `openclaw config set` calls would
# write, without their ~12 s). An existing file is never touched: edit it freely.
#   no update checks, no model catalog refresh (the sandbox only reaches its allowlist),
#   local mode, its own log file in the workspace rotated at 10 MB (5 archives are kept)
CONFIG="$HOME/.openclaw/openclaw.json"
if [ ! -e "$CONFIG" ]; then
    (
    umask 077
    mkdir -p "$HOME/.openclaw"
    cat > "$CONFIG.clawpen-new" <<EOF
{
  "update": { "checkOnStart": false },
  "models": { "catalogRefresh": { "enabled": false } },
  "gateway": { "mode": "local" },
  "logging": { "file": "$HOME/.openclaw/logs/openclaw.log", "maxFileBytes": 10485760 }
}
EOF
    mv "$CONFIG.clawpen-new" "$CONFIG"
    )
fi
# The token comes from the vault as OPENCLAW_GATEWAY_TOKEN (environment), never on the argv.
exec node "$OPENCLAW" gateway run --bind loopback --port 18789 --auth token
