#!/usr/bin/env python3
"""`ps` with 50 bots: the daemon's reply, and a fresh `clawpen ps` against a fresh `pm2 ls`.

Run as root::

    .venv/bin/python bench/ps_bench.py [--bots 50] [--rounds 200] [--cli-rounds 30] [--no-pm2]

A private daemon (temporary state folder) runs N bots (``sleep infinity``), and pm2 (its own
PM2_HOME in the same folder; pm2 on PATH, else ``npm install pm2`` there) runs N ``sleep
infinity`` apps too. Side by side, interleaved:

1. over one socket connection per call: the ``ps`` operation (every replica's status, health and
   the cgroup's memory.current) and, as the anchor, ``topology`` (every bot's state from the same
   in-memory instances and store, no cgroup read). Target: ps p50 <= 20 ms with 50 bots.
2. what a person waits for: ``clawpen ps`` (a fresh CLI process: interpreter, imports, the
   request, the table printed to a pipe) against ``pm2 ls`` (a fresh pm2 CLI process, its table
   printed to a pipe), wall clock from spawn to exit. Target (issue 22): clawpen ps p50
   <= 1.2x pm2 ls p50. The CLI gets a bytecode cache in the temporary folder
   (PYTHONPYCACHEPREFIX, PYTHONDONTWRITEBYTECODE removed), as an installed clawpen has.

Everything is stopped at the end (``clawpen down``, the daemon SIGTERMed, ``pm2 kill``, the folder
removed). Exits 0 when every target measured is met, 1 when one is missed, 2 when the benchmark
cannot run (or pm2 is missing, unless --no-pm2).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from daemon_bench import BenchError, find_pm2  # bench/, next to this file
from daemon_bench import Pm2 as DaemonBenchPm2
from run_bench import interleave as interleave_runs

from clawpen.daemon.client import Client

CLAWPEN = str(Path(sys.executable).with_name("clawpen"))
TARGET_PS_OP_MS = 20.0
TARGET_CLI_VS_PM2 = 1.2


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def quantiles(ms: list[float]) -> str:
    p90 = statistics.quantiles(ms, n=10, method="inclusive")[8] if len(ms) > 1 else ms[0]
    return f"p50 {statistics.median(ms):7.2f}  p90 {p90:7.2f}  min {min(ms):7.2f}"


# ------------------------------------------------------------------------------------ pm2
class Pm2(DaemonBenchPm2):
    """pm2 with its own PM2_HOME in the temporary folder (bench/daemon_bench.py's), running N
    ``sleep infinity`` apps."""

    def start_sleepers(self, n: int) -> None:
        self.start(
            "apps.json", [{"name": f"b{i:02d}", "script": "sleep", "args": "infinity"} for i in range(n)]
        )

    def online(self) -> int:
        return sum(state == "online" for state in self.states().values())


# ------------------------------------------------------------------------------------ runs
def wall(argv: list[str], env: dict[str, str], cwd: Path, expect: str) -> float:
    """Milliseconds from spawn to exit of a fresh process whose table (stdout, a pipe) is read
    whole; raises when it fails or its table lacks ``expect``."""
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    elapsed = (time.perf_counter() - start) * 1000
    if done.returncode != 0 or expect not in done.stdout:
        raise RuntimeError(
            f"{' '.join(argv)} exited {done.returncode}: {(done.stderr or done.stdout)[-500:]}"
        )
    return elapsed


def interleave(rounds: int, warmup: int, runners: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Each runner in turn, ``rounds`` times after ``warmup`` rounds, the order flipped every
    round (bench/run_bench.py's, by name)."""
    return dict(zip(runners, interleave_runs(rounds, warmup, *runners.values()), strict=True))


def bench_op(client: Client, n: int, rounds: int) -> bool:
    times: dict[str, list[float]] = {"ps": [], "topology": []}
    for _ in range(rounds):
        for op, got in times.items():
            start = time.perf_counter()
            client.call(op)
            got.append((time.perf_counter() - start) * 1000)
    print(f"\n== 1. the ps operation on the socket: {n} bots, {rounds} calls each (ms) ==")
    for op, ms in times.items():
        print(f"  {op:<9} {quantiles(ms)}")
    extra = statistics.median(times["ps"]) - statistics.median(times["topology"])
    print(f"  ps - topology p50: {extra:+.2f} ms ({extra / n * 1000:+.0f} us per bot)")
    ok = statistics.median(times["ps"]) <= TARGET_PS_OP_MS
    print(f"  -> ps p50 <= {TARGET_PS_OP_MS:g} ms: {'PASS' if ok else 'FAIL'}")
    return ok


def bench_cli(
    work: Path, env: dict[str, str], pm2: Pm2 | None, n: int, rounds: int, compare: str | None
) -> bool | None:
    """Fresh `clawpen ps` against fresh `pm2 ls`; None when there is no pm2 to compare with."""
    cli_env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cli_env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    runners = {"clawpen ps": lambda: wall([CLAWPEN, "ps"], cli_env, work, "b00")}
    if compare:  # another clawpen source tree (an older commit), e.g. for a before/after figure
        other = {**cli_env, "PYTHONPATH": compare, "PYTHONPYCACHEPREFIX": str(work / "pycache-other")}
        runners[f"(clawpen ps, {compare})"] = lambda: wall([CLAWPEN, "ps"], other, work, "b00")
    if pm2 is not None:
        runners[f"pm2 ls (pm2 {pm2.version})"] = lambda: wall([pm2.bin, "ls"], pm2.env, pm2.dir, "b00")
    python = [sys.executable, "-c", "print('b00')"]
    runners["(python -c print, for scale)"] = lambda: wall(python, cli_env, work, "b00")
    times = interleave(rounds, 3, runners)
    print(f"\n== 2. a fresh CLI process with its table: {n} bots, {rounds} runs each, interleaved (ms) ==")
    width = max(map(len, times))
    for name, ms in times.items():
        print(f"  {name:<{width}} {quantiles(ms)}")
    if pm2 is None:
        print("  -> no ratio: no pm2 to compare with")
        return None
    ratio = statistics.median(times["clawpen ps"]) / statistics.median(times[f"pm2 ls (pm2 {pm2.version})"])
    ok = ratio <= TARGET_CLI_VS_PM2
    verdict = "PASS" if ok else "FAIL"
    print(f"  -> clawpen ps / pm2 ls (p50): {ratio:.2f}x (target <= {TARGET_CLI_VS_PM2}) {verdict}")
    return ok


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bots", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=200, help="calls of each operation on the socket")
    parser.add_argument("--cli-rounds", type=int, default=30, help="fresh CLI processes of each kind")
    parser.add_argument("--no-pm2", action="store_true", help="skip the pm2 comparison")
    parser.add_argument(
        "--compare-src", metavar="DIR", help="also time `clawpen ps` from this src/ folder (PYTHONPATH)"
    )
    ns = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="clawpen-psbench-", dir="/tmp"))
    work.chmod(0o755)
    state = work / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAWPEN_")} | {"CLAWPEN_HOME": str(state)}
    spec = "".join(
        f'[bots.b{i:02d}]\ncommand = ["sleep", "infinity"]\nresources = {{ memory = "32M" }}\n\n'
        for i in range(ns.bots)
    )
    (work / "clawpen.toml").write_text(spec)
    pm2: Pm2 | None = None
    try:
        if not ns.no_pm2:
            found = find_pm2(work)
            if found is None:
                print(
                    "ps_bench: pm2 is missing (and npm install pm2 failed); --no-pm2 skips it",
                    file=sys.stderr,
                )
                return 2
            pm2 = Pm2(work, *found)
            log(f"pm2 {pm2.version}: starting {ns.bots} sleep infinity apps")
            pm2.start_sleepers(ns.bots)
            wait_until(lambda: pm2 is not None and pm2.online() >= ns.bots, 120, "pm2's apps")
        log(f"clawpen: up with {ns.bots} bots")
        subprocess.run([CLAWPEN, "up", "--wait-timeout", "300"], cwd=work, env=env, check=True, timeout=600)
        client = Client(state)
        rows = client.call("ps")
        assert len(rows) == ns.bots and all(r.get("memory_bytes") for r in rows), rows[:2]
        results = [
            bench_op(client, ns.bots, ns.rounds),
            bench_cli(work, env, pm2, ns.bots, ns.cli_rounds, ns.compare_src),
        ]
        print("\n== summary ==")
        print(f"  {'PASS' if results[0] else 'FAIL'}  ps operation p50 <= {TARGET_PS_OP_MS:g} ms")
        if results[1] is None:
            print("  SKIP  clawpen ps / pm2 ls (--no-pm2)")
        else:
            print(f"  {'PASS' if results[1] else 'FAIL'}  clawpen ps / pm2 ls p50 <= {TARGET_CLI_VS_PM2}")
        return 0 if all(r is not False for r in results) else 1
    except (RuntimeError, BenchError, subprocess.SubprocessError, OSError) as err:
        print(f"ps_bench: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    finally:
        if pm2 is not None:
            pm2.stop()
        subprocess.run([CLAWPEN, "down"], cwd=work, env=env, capture_output=True, timeout=300, check=False)
        try:
            pid = int((state / "daemon.pid").read_text())
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.1)
        except (OSError, ValueError):
            pass
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
