#!/usr/bin/env bash
# The whole test suite: lint, types, unit and integration tests (integration needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
CLAWPEN_DEV=1 bash scripts/setup.sh
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/mypy
.venv/bin/lint-imports --no-cache  # the import layers: pyproject.toml [tool.importlinter]
exec .venv/bin/python -m pytest "$@"
