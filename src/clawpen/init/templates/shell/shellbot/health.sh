#!/bin/sh
# Healthy while the heartbeat is younger than 30 seconds.
[ -f /tmp/heartbeat ] || exit 1
age=$(( $(date +%s) - $(stat -c %Y /tmp/heartbeat) ))
[ "$age" -lt 30 ]
