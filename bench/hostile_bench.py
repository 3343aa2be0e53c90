#!/usr/bin/env python3
"""`clawpen validate --hostile` cost (issue 8).

Run as root::

    .venv/bin/python bench/hostile_bench.py [--rounds 3]

Side by side in one run, each round: the whole hostile suite (every action: a throwaway
sandbox with the probe + the control on the host) against a policy, and the anchor: the same
number of bare sandbox runs of ``/usr/bin/python3 -c pass`` with the same policy (what one
sandboxed probe costs at least). Prints the medians and the ratio. Target: the suite finishes
in <= 30 s on 2 cores, i.e. a few times the bare-sandbox floor.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    home = Path(tempfile.mkdtemp(prefix="clawpen-hbench-"))
    os.environ["CLAWPEN_HOME"] = str(home)
    from clawpen.plan.build import HostFacts, build_plan
    from clawpen.sandbox.namespace import NamespaceTier
    from clawpen.sandbox.seccomp import default_policy
    from clawpen.sandbox.tier import Stdio
    from clawpen.sandbox.users import identity_for
    from clawpen.spec.policy import BotPolicy
    from clawpen.validate.actions import ACTIONS
    from clawpen.validate.hostile import all_contained, run_hostile

    policy = BotPolicy(name="hbench", command=("true",), memory=128 << 20, pids=64, disk=64 << 20)
    tier = NamespaceTier(home)
    null = os.open(os.devnull, os.O_RDWR)

    def anchor() -> float:
        plan = build_plan(
            policy._replace(command=("/usr/bin/python3", "-c", "pass")),
            identity_for(policy.name, home),
            HostFacts.probe(),
            default_policy(),
        )
        t0 = time.perf_counter()
        for _ in ACTIONS:
            sb = tier.start(plan, stdio=Stdio(null, null, null))
            try:
                sb.wait(30)
            finally:
                sb.teardown()
        return time.perf_counter() - t0

    suite, floor = [], []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        outcomes = run_hostile(policy, home)
        suite.append(time.perf_counter() - t0)
        if not all_contained(outcomes):
            print("not all contained:", [o for o in outcomes if o.verdict != "contained"])
            return 1
        floor.append(anchor())
    s, f = statistics.median(suite), statistics.median(floor)
    n = len(ACTIONS)
    print(f"hostile suite ({n} actions, inside + control): median {s:.2f} s ({s / n * 1000:.0f} ms/action)")
    print(f"anchor: {n} bare sandbox runs of python3 -c pass: median {f:.2f} s ({f / n * 1000:.0f} ms/run)")
    print(f"ratio suite / anchor: {s / f:.2f}x; target <= 30 s: {'met' if s <= 30 else 'NOT met'}")
    return 0 if s <= 30 else 1


if __name__ == "__main__":
    sys.exit(main())
