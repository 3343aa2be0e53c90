#!/usr/bin/env bash
# clawpen's benchmarks (docs/benchmarks.md): start-up split, end to end against Docker, CPU-bound
# overhead. Needs root: cgroups, the bots' uids, and a dockerd it starts (and stops) if none runs.
#   bash scripts/bench.sh [--quick] [--json FILE] [--no-docker] [--only startup|e2e|cpu]
# Exits 0 when every target is met, 1 when one is missed, 2 when the benchmarks cannot run.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "bench: run as root: sudo bash scripts/bench.sh" >&2
  exit 2
fi
bash scripts/setup.sh
# gcc for the CPU-bound program; docker.io and busybox-static are installed by the bench itself,
# only when the Docker comparison needs them.
if ! command -v gcc >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends gcc libc6-dev >/dev/null
fi
exec .venv/bin/python bench/run_bench.py "$@"
