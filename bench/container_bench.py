#!/usr/bin/env python3
"""The container tier's start against ``docker run`` (issue 16: start <= 1.1x docker run).

Run as root with a Docker engine and the image (tests build ``clawpen-test-base:bookworm``)::

    .venv/bin/python bench/container_bench.py [--runs 10] [--image clawpen-test-base:bookworm]
        [--engine podman]

With ``--engine podman`` (Podman's API service running, the image in its store) clawpen starts
the bot on Podman and the anchor is ``podman run --rm`` with the same arguments (and the nproc
and nofile limits clawpen gives it on Podman).

Both sides start the same image with the same uid, limits, read-only root and no network, and
are timed from the call to the bot's first byte on stdout ("ready"), interleaved (ABAB) after
one warm-up each. clawpen: ``ContainerTier.start`` (image check, hardened create, start, gate),
its stdout on a named pipe as the daemon gives it; the anchor: ``docker run --rm`` (the CLI,
attached to the container's stdout). Removal is not timed. Prints p50/p90 and the ratio; exits
1 when the target is missed.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clawpen.container.tier import ContainerTier
from clawpen.daemon.lifecycle import instance_plan, open_fifos
from clawpen.plan.build import HostFacts
from clawpen.plan.model import Plan
from clawpen.sandbox.seccomp import default_policy
from clawpen.sandbox.tier import Stdio
from clawpen.spec.loader import parse_spec_text

TARGET = 1.1
SCRIPT = "echo ready; exec sleep 60"


def first_byte(fd: int, timeout: float = 30.0) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if not poller.poll(int(timeout * 1000)) or not os.read(fd, 64):
        raise RuntimeError("no output")


def clawpen_start(tier: ContainerTier, plan: Plan, run: Path, i: int) -> float:
    bot_ends: dict[str, int] = {}
    pipes: dict[str, int] = {}
    open_fifos([("out", run / f"b.{i}.out"), ("err", run / f"b.{i}.err")], bot_ends, pipes)
    start = time.perf_counter()
    stdio = Stdio(None, bot_ends["out"], bot_ends["err"])
    sandbox = tier.start(plan, cgroup_name=f"bench.{i}", stdio=stdio)
    first_byte(pipes["out"])
    took = time.perf_counter() - start
    sandbox.kill()
    sandbox.collect()
    sandbox.teardown()
    for fd in (*bot_ends.values(), *pipes.values()):
        os.close(fd)
    return took


def docker_start(image: str, uid: int, i: int, engine: str = "docker") -> float:
    limits = ["--ulimit", "nproc=32768:32768", "--ulimit", "nofile=1024:1024"] if engine == "podman" else []
    argv = [
        engine, "run", *limits, "--rm", "--name", f"clawpen-test-bench-{i}", "--network", "none",
        "--user", f"{uid}:{uid}", "--read-only", "--tmpfs", "/tmp:size=64m", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "--memory", "512m", "--memory-swap", "512m",
        "--cpus", "1", "--pids-limit", "256", "--init", image, "sh", "-c", SCRIPT,
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    first_byte(proc.stdout.fileno())
    took = time.perf_counter() - start
    subprocess.run([engine, "rm", "-f", f"clawpen-test-bench-{i}"], capture_output=True, check=False)
    proc.wait(30)
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--image", default="clawpen-test-base:bookworm")
    ap.add_argument("--engine", choices=["docker", "podman"], default="docker")
    args = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which(args.engine):
        print(f"needs root and {args.engine}", file=sys.stderr)
        return 2
    top = Path(tempfile.mkdtemp(prefix="clawpen-cbench-"))
    try:
        state, run = top / "state", top / "state" / "run"
        run.mkdir(parents=True, mode=0o700)
        spec = (
            f'[bots.bench]\ntier = "container"\nimage = "{args.image}"\nengine = "{args.engine}"\n'
            f'command = ["sh", "-c", "{SCRIPT}"]\n'
        )
        bot = parse_spec_text(spec, top / "clawpen.toml").spec.bots["bench"]
        plan = instance_plan(
            bot, "bench", 0, str(top), state_dir=state, host=HostFacts.probe(), seccomp=default_policy()
        )
        tier = ContainerTier(state)
        ours: list[float] = []
        theirs: list[float] = []
        clawpen_start(tier, plan, run, 0)  # warm-up
        docker_start(args.image, plan.identity.uid, 0, args.engine)
        for i in range(1, args.runs + 1):
            ours.append(clawpen_start(tier, plan, run, i))
            theirs.append(docker_start(args.image, plan.identity.uid, i, args.engine))
    finally:
        shutil.rmtree(top, ignore_errors=True)

    def p(xs: list[float], q: int) -> float:
        return statistics.quantiles(xs, n=10)[q - 1] if len(xs) > 1 else xs[0]

    ratio = statistics.median(ours) / statistics.median(theirs)
    print(f"container start to first output, {args.runs} runs each, interleaved ({args.image})")
    for label, xs in (("clawpen ContainerTier.start", ours), (f"{args.engine} run --rm (CLI)", theirs)):
        print(f"  {label:<28} p50 {statistics.median(xs) * 1000:7.1f} ms  p90 {p(xs, 9) * 1000:7.1f} ms")
    print(f"  ratio {ratio:.2f}x (target <= {TARGET}x): {'met' if ratio <= TARGET else 'NOT met'}")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
