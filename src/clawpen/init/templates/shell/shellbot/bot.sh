#!/bin/sh
# A small bot: appends a line to its workspace and refreshes its heartbeat every 5 seconds.
set -eu
echo "shellbot: started as $(id -un) in $(pwd)"
while :; do
    date -u +%FT%TZ >> "$HOME/runs.log"
    tail -n 1000 "$HOME/runs.log" > "$HOME/runs.log.tmp" && mv "$HOME/runs.log.tmp" "$HOME/runs.log"
    touch /tmp/heartbeat
    sleep 5
done
