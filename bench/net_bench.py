#!/usr/bin/env python3
"""Network set-up per bot: clawpen's LinkManager against one ``ip`` process per step.

Run as root::

    .venv/bin/python bench/net_bench.py [--runs 40] [--json out.json]

Both sides do the same steps, interleaved in one run, each in namespaces of its own (nothing
in the machine's namespace is touched):

* **clawpen**: ``LinkManager.attach``: a new network namespace (unshare in a thread, bind-mounted
  on a file), IPv6 off by sysctl, a veth pair created in the gateway namespace with its peer
  placed straight into the bot's namespace, addresses, links up, ``lo`` up, the default route;
  all over pyroute2 netlink sockets opened inside each namespace. The nftables rules are per
  link name pattern (``cb*``) and loaded once with the gateway namespace, so a bot adds no
  rule. Then ``detach`` (veth deleted, namespace unmounted).
* **anchor**: the same steps with ``ip``: ``ip netns add``, ``ip netns exec sysctl`` (IPv6),
  ``ip -n gw link add ... peer ... netns``, 2 x ``addr add``, 3 x ``link set up``,
  ``route add default``; teardown ``ip -n gw link del`` + ``ip netns del``.

Target: set-up p50 <= 30 ms. Prints p50/p90/min of set-up and teardown and the ratio to the
anchor. Exits 0 when the target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from clawpen.net.links import LinkManager
from clawpen.spec.policy import BotPolicy

TARGET_MS = 30.0


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def anchor_setup(gw: str, bot: str, n: int) -> None:
    ip("netns", "add", bot)
    ip(
        "netns",
        "exec",
        bot,
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1",
    )
    ip("-n", gw, "link", "add", f"ab{n}", "type", "veth", "peer", "name", "eth0", "netns", bot)
    ip("-n", gw, "addr", "add", "10.214.0.1/30", "dev", f"ab{n}")
    ip("-n", gw, "link", "set", f"ab{n}", "up")
    ip("-n", bot, "link", "set", "lo", "up")
    ip("-n", bot, "addr", "add", "10.214.0.2/30", "dev", "eth0")
    ip("-n", bot, "link", "set", "eth0", "up")
    ip("-n", bot, "route", "add", "default", "via", "10.214.0.1")


def anchor_teardown(gw: str, bot: str, n: int) -> None:
    ip("-n", gw, "link", "del", f"ab{n}")
    ip("netns", "del", bot)


def stats(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {
        "p50": statistics.median(xs),
        "p90": xs[min(len(xs) - 1, int(len(xs) * 0.9))],
        "min": xs[0],
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--json")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    tag = uuid.uuid4().hex[:6]
    gw = f"clawpen-b-{tag}-gw"
    ip("netns", "add", gw)
    state = Path(tempfile.mkdtemp(prefix="clawpen-netbench-"))
    lm = LinkManager(state)
    policy = BotPolicy(name="b", command=("true",), egress="open")
    res: dict[str, list[float]] = {
        "clawpen_setup": [],
        "clawpen_teardown": [],
        "ip_setup": [],
        "ip_teardown": [],
    }
    try:
        lm.gateway_netns_fd  # noqa: B018 - the gateway namespace and its rules exist once per daemon
        lm.attach("warm", 0, policy)
        lm.detach("warm", 0)
        for i in range(args.runs):
            t = time.perf_counter()
            lm.attach("b", i % 4, policy)
            res["clawpen_setup"].append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            lm.detach("b", i % 4)
            res["clawpen_teardown"].append((time.perf_counter() - t) * 1e3)
            bot = f"clawpen-b-{tag}-{i}"
            t = time.perf_counter()
            anchor_setup(gw, bot, i)
            res["ip_setup"].append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            anchor_teardown(gw, bot, i)
            res["ip_teardown"].append((time.perf_counter() - t) * 1e3)
    finally:
        lm.destroy()
        subprocess.run(["ip", "netns", "del", gw], check=False)
        subprocess.run(["rm", "-rf", str(state)], check=False)
    out = {k: stats(v) for k, v in res.items()}
    for phase in ("setup", "teardown"):
        c, a = out[f"clawpen_{phase}"], out[f"ip_{phase}"]
        print(
            f"{phase:<9} clawpen p50 {c['p50']:6.2f} ms  p90 {c['p90']:6.2f}  min {c['min']:6.2f} | "
            f"ip per step p50 {a['p50']:6.2f} ms  p90 {a['p90']:6.2f} | ratio {c['p50'] / a['p50']:.2f}"
        )
    ok = out["clawpen_setup"]["p50"] <= TARGET_MS
    print(f"target set-up p50 <= {TARGET_MS:g} ms: {'PASS' if ok else 'FAIL'} ({args.runs} runs)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
