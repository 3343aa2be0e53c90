#!/bin/sh
# Starts the OpenClaw gateway inside its clawpen sandbox. HOME is the workspace (/workspace).
set -eu
OPENCLAW="/opt/bot/node_modules/openclaw/openclaw.mjs"
if [ ! -f "$OPENCLAW" ]; then
    echo "openclaw is not installed at /opt/bot: check the build steps (clawpen up shows them)" >&2
    exit 1
fi
# First start: no update checks, no model catalog refresh (the sandbox only reaches its allowlist).
if [ ! -f "$HOME/.openclaw/.clawpen-configured" ]; then
    node "$OPENCLAW" config set update.checkOnStart false
    node "$OPENCLAW" config set models.catalogRefresh.enabled false
    node "$OPENCLAW" config set gateway.mode local
    # its own log file: in the workspace, rotated at 10 MB (5 archives are kept)
    node "$OPENCLAW" config set logging.file "$HOME/.openclaw/logs/openclaw.log"
    node "$OPENCLAW" config set logging.maxFileBytes 10485760
    mkdir -p "$HOME/.openclaw" && touch "$HOME/.openclaw/.clawpen-configured"
fi
# The token comes from the vault as OPENCLAW_GATEWAY_TOKEN (environment), never on the argv.
exec node "$OPENCLAW" gateway run --bind loopback --port 18789 --auth token
