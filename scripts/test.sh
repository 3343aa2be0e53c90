#!/usr/bin/env bash
# The whole test suite: lint, types, unit and integration tests (integration needs root).
#
# Without arguments, four parts run at the same time: lint (ruff, mypy, import layers) and three
# pytest processes, `--group main` (unit and most integration tests), `--group wait` (the
# tests that mostly wait, and every `docker` test; tests/conftest.py WAIT_GROUP) and `--group vm`
# (every `vm` test: QEMU guests under TCG, CPU-bound, started first as the longest). Each part's
# output is printed when it ends; the script fails when any part fails.
# With arguments: lint, then one pytest with those arguments (bash scripts/test.sh tests/unit -x).
# At the end, a dockerd the tests started is stopped (unless test processes of another run use it).
set -euo pipefail
cd "$(dirname "$0")/.."
CLAWPEN_DEV=1 bash scripts/setup.sh

lint() {
  .venv/bin/ruff check src tests bench
  .venv/bin/ruff format --check src tests bench
  .venv/bin/mypy
  .venv/bin/lint-imports --no-cache # the import layers: pyproject.toml [tool.importlinter]
}
stop_dockerd() { .venv/bin/python -m tests.integration.container_env stop || true; }

if [ $# -gt 0 ]; then
  lint
  trap stop_dockerd EXIT
  .venv/bin/python -m pytest "$@"
  exit
fi

logs=$(mktemp -d /tmp/clawpen-test.XXXXXX)
declare -A names=() started=()
start_part() { # name command...: in the background, in a process group of its own, output to $logs/name.log
  local name=$1
  shift
  setsid "$@" >"$logs/$name.log" 2>&1 &
  names[$!]=$name
  started[$name]=$SECONDS
  echo "test.sh: started $name (pid $!, output in $logs/$name.log)"
}
stop_parts() {
  for pid in "${!names[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
}
trap 'stop_parts; exit 130' INT TERM
trap stop_dockerd EXIT

# no cache plugin: two pytest processes would overwrite each other's .pytest_cache/lastfailed;
# a base temp folder each: three pytest processes cleaning /tmp/pytest-of-root's numbered folders
# at once raced, and pytest's cleanup then failed a part that had passed (an unclosed scandir)
start_part vm .venv/bin/python -m pytest -p no:cacheprovider --group vm --basetemp "$logs/t-vm"
start_part main .venv/bin/python -m pytest -p no:cacheprovider --group main --basetemp "$logs/t-main"
start_part wait .venv/bin/python -m pytest -p no:cacheprovider --group wait --basetemp "$logs/t-wait"
start_part lint bash -c "set -euo pipefail; $(declare -f lint); lint"

failed=()
while [ ${#names[@]} -gt 0 ]; do
  rc=0
  wait -n -p done "${!names[@]}" || rc=$?
  name=${names[$done]}
  unset "names[$done]"
  echo
  echo "===== test.sh: $name ended with exit code $rc after $((SECONDS - started[$name]))s ====="
  cat "$logs/$name.log"
  [ "$rc" -eq 0 ] || failed+=("$name")
done
echo
if [ ${#failed[@]} -gt 0 ]; then
  echo "test.sh: FAILED: ${failed[*]} (outputs in $logs)"
  exit 1
fi
rm -rf "$logs"/t-vm "$logs"/t-main "$logs"/t-wait  # the tests' folders; kept when a part failed
echo "test.sh: all parts passed (outputs in $logs)"
