#!/usr/bin/env python3
"""`ps` with 50 bots: the daemon's reply time now that each row reads its cgroup's memory.

Run as root::

    .venv/bin/python bench/ps_bench.py [--bots 50] [--rounds 200]

A private daemon (temporary state folder) runs N bots (``sleep infinity``); over one socket
connection per call, side by side and interleaved: the ``ps`` operation (every replica's status,
health and the cgroup's memory.current) and, as the anchor, ``topology`` (every bot's state from
the same in-memory instances and store, no cgroup read). p50/p90 in ms and their difference
(what the memory column costs for N bots). Target: ps p50 <= 20 ms with 50 bots. Everything is
stopped at the end (``clawpen down``, the daemon SIGTERMed, the folder removed).
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
from pathlib import Path

from clawpen.daemon.client import Client

CLAWPEN = str(Path(sys.executable).with_name("clawpen"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bots", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=200)
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
    try:
        subprocess.run([CLAWPEN, "up", "--wait-timeout", "300"], cwd=work, env=env, check=True, timeout=600)
        client = Client(state)
        rows = client.call("ps")
        assert len(rows) == ns.bots and all(r.get("memory_bytes") for r in rows), rows[:2]
        times: dict[str, list[float]] = {"ps": [], "topology": []}
        for _ in range(ns.rounds):
            for op, got in times.items():
                start = time.perf_counter()
                client.call(op)
                got.append((time.perf_counter() - start) * 1000)
        print(f"{ns.bots} bots, {ns.rounds} calls each (ms):")
        for op, ms in times.items():
            q = statistics.quantiles(ms, n=10)
            print(f"  {op:<9} p50 {statistics.median(ms):6.2f}  p90 {q[8]:6.2f}  min {min(ms):6.2f}")
        extra = statistics.median(times["ps"]) - statistics.median(times["topology"])
        print(f"  ps - topology p50: {extra:+.2f} ms ({extra / ns.bots * 1000:+.0f} us per bot)")
        ok = statistics.median(times["ps"]) <= 20.0
        print("PASS" if ok else "FAIL", "ps p50 <= 20 ms")
        return 0 if ok else 1
    finally:
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
