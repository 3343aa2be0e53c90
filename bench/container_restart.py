#!/usr/bin/env python3
"""The container tier's crash -> restart and idle cost against Docker alone (issue 16, "Speed").

Run as root with a Docker engine and the image (tests build ``clawpen-test-base:bookworm``)::

    .venv/bin/python bench/container_restart.py [--crashes 20] [--bots 10] [--window 30]

Both parts run a real clawpen daemon (``clawpen daemon`` started by the CLI, with its own
CLAWPEN_HOME in a temporary folder) and, side by side in the same run, the same image with the
same uid, limits, read-only root, ``--init`` and no network under Docker alone:

1. ``restart``  a bot ``sh -c`` that appends ``s <date +%s.%N>`` to a workspace file as its first
   instruction, sleeps 0.3 s, appends ``e <date +%s.%N>`` and exits 1. The figure is the bot's
   view: ``e`` -> the next instance's ``s`` (wall clock, p50/p90). clawpen: ``tier =
   "container"`` with ``restart = "always"`` tuned so that every restart is the first of a streak
   (no backoff: backoff_max 50 ms, window 100 ms; the bench counts ``backoff`` states). Anchor:
   ``docker run -d --restart always``, *first restarts of fresh containers* (one container per
   sample; Docker waits 100 ms before a container's first restart, doubling for the next ones
   and reset only after 10 s of running, so the first restart is Docker's fastest). Interleaved
   in blocks: clawpen's bot runs a block of crashes and is stopped, then as many fresh Docker
   containers. Target: clawpen p50 <= Docker's p50.
2. ``idle``     N bots ``sleep infinity`` under clawpen's daemon, then the same N containers by
   ``docker run -d`` alone, after a window with no bot (the daemon having run and removed one
   container bot first, so its container code is loaded). Over each window (after settling): CPU
   (on-CPU time of every thread, /proc/PID/task/*/schedstat) and RSS of the clawpen daemon,
   dockerd, containerd, the containers' containerd-shims and the containers' own processes. Per
   bot: (with N bots - with none) / N. dockerd and containerd serve every container on the host
   (other users' too): their figures are as noisy as the host. Targets (daemon_bench's for the
   daemon): daemon CPU <= 0.2 % of a core, RSS <= 100 MB, with the N bots.

Containers are named ``clawpen-bench-*`` (Docker's side) and ``clawpen-<scope>-<bot>-0`` with bots
``cbench-*`` (clawpen's); all are removed and the daemon stopped at the end. Exits 0 when every
target is met, 1 when one is missed, 2 when the bench cannot run.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from container_common import (  # bench/, next to this file
    DOCKER_PREFIX,
    BenchError,
    Clawpen,
    all_pids,
    bot_toml,
    cmdline,
    comm,
    descendants,
    docker,
    docker_argv,
    docker_rm_ours,
    loadavg,
    log,
    pct,
    pid_of,
    rss_kb,
    wait_until,
)

TARGET_IDLE_CPU_PCT = 0.2
TARGET_IDLE_RSS_MB = 100.0
STAMP = "echo {} $(date +%s.%N) >> /workspace/stamps"
CRASH_SH = f"{STAMP.format('s')}; sleep 0.3; {STAMP.format('e')}; exit 1"
FAST_RESTART = (
    'restart = { policy = "always", backoff_initial = "50ms", backoff_max = "50ms", '
    'window = "100ms", max_restarts = 10000 }'
)


def stamps(path: Path) -> list[tuple[str, float]]:
    out = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            tag, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                out.append((tag, float(value) if value else 0.0))
    return out


def gaps(marks: list[tuple[str, float]]) -> list[tuple[float, float]]:
    """(exit, next first instruction) for each ``e`` directly followed by ``s``."""
    return [(a[1], b[1]) for a, b in itertools.pairwise(marks) if (a[0], b[0]) == ("e", "s")]


# ------------------------------------------------------------------------------------ 1. restart
def rfc3339(stamp: str | None) -> float | None:
    """Docker's ``2026-12-01T23:19:41.123456789Z`` as a Unix time (nanoseconds kept to float)."""
    if not stamp or stamp.startswith("0001-"):
        return None
    whole, _, frac = stamp.rstrip("Z").partition(".")
    try:
        return datetime.fromisoformat(whole + "+00:00").timestamp() + float(f"0.{frac or 0}")
    except ValueError:
        return None


def bench_restart(cp: Clawpen, work: Path, image: str, n: int, block: int, raw: bool) -> bool:
    bot = "cbench-crash"
    ws = work / "ws-crash"
    spec = cp.spec_dir / "crash.toml"
    spec.write_text(bot_toml(bot, image, ["sh", "-c", CRASH_SH], 'workspace = "../ws-crash"', FAST_RESTART))
    ours: list[tuple[float, float]] = []
    theirs: list[float] = []
    engine: list[float] = []  # Docker's own FinishedAt -> StartedAt of the first restart
    late: list[tuple[str, float]] = []  # stamps after a stop (there should be none)
    uid = None
    first = True
    i = 0
    while len(ours) < n or len(theirs) < n:
        if len(ours) < n:
            marks = stamps(ws / "stamps")
            if marks and marks[-1][0] != "x":  # a line written by a bot clawpen had stopped
                last_x = max((k for k, m in enumerate(marks) if m[0] == "x"), default=-1)
                late.extend(marks[last_x + 1 :])
                with (ws / "stamps").open("a") as f:
                    f.write("x\n")
            before = len(gaps(stamps(ws / "stamps")))
            if first:
                cp.cli("up", "--detach", "-f", str(spec), bot)
                first = False
            else:
                cp.cli("start", bot)
            want = min(block, n - len(ours))
            wait_until(
                lambda b=before, w=want: len(gaps(stamps(ws / "stamps"))) >= b + w,
                60 + want * 5,
                f"{want} restarts of clawpen's {bot}",
                0.2,
            )
            cp.cli("stop", bot)
            with (ws / "stamps").open("a") as f:
                f.write("x\n")  # a stop and the next start are no restart
            ours = [g for g in gaps(stamps(ws / "stamps"))][:n]
            if uid is None:
                uid = (ws / "stamps").stat().st_uid
        for _ in range(min(block, n - len(theirs))):
            i += 1
            name = f"{DOCKER_PREFIX}crash-{i}"
            dws = work / f"ws-docker-{i}"
            dws.mkdir(mode=0o700)
            os.chown(dws, uid or 0, uid or 0)
            argv = docker_argv(name, image, uid or 0, "--restart", "always", "-v", f"{dws}:/workspace")
            subprocess.run([*argv, "sh", "-c", CRASH_SH], capture_output=True, check=True)
            try:
                wait_until(lambda d=dws: len(gaps(stamps(d / "stamps"))) >= 1, 30, f"{name}'s restart", 0.05)
                state = json.loads(docker("inspect", "--format", "{{json .State}}", name))
            finally:
                subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
            exit_, start = gaps(stamps(dws / "stamps"))[0]
            theirs.append((start - exit_) * 1000)
            fin, sta = rfc3339(state.get("FinishedAt")), rfc3339(state.get("StartedAt"))
            if fin and sta and sta > fin:
                engine.append((sta - fin) * 1000)
    events = cp.events(bot)
    backoffs = sum(e["to_state"] == "backoff" for e in events)
    # a restart has the daemon's `exited` event between the exit and the next first instruction
    exits = [e["at"] for e in events if e["to_state"] == "exited"]
    unconfirmed = [(a, b) for a, b in ours if not any(a <= x <= b for x in exits)]
    ours = [g for g in ours if g not in unconfirmed]
    split = split_restarts(ours, events)
    cp.cli("down", bot)
    ms = [(b - a) * 1000 for a, b in ours]
    print("\n1. crash -> restart, the bot's view: its last instruction (exit 1) -> next first instruction")
    print(
        f"   {len(ms)} / {len(theirs)} restarts, blocks of {block} (clawpen's, then fresh Docker containers)"
    )
    print(f"   load average before: {LOAD_START}, now: {loadavg()}")
    print(f"   {'':<60} {'n':>3} {'p50 ms':>8} {'p90 ms':>8} {'min ms':>8} {'max ms':>8}")
    rows = [("clawpen daemon, tier=container, restart=always (no backoff)", ms), *split]
    rows += [
        ("docker run -d --restart always, first restart (fresh)", theirs),
        ("  Docker's own FinishedAt -> StartedAt (inspect; 100 ms delay)", engine),
    ]
    nan = float("nan")
    for label, xs in rows:
        p50, p90, low = statistics.median(xs) if xs else nan, pct(xs, 9), min(xs, default=nan)
        print(f"   {label:<60} {len(xs):>3} {p50:>8.1f} {p90:>8.1f} {low:>8.1f} {max(xs, default=nan):>8.1f}")
    if raw:
        for label, xs in rows:
            print(f"   raw {label.strip()}: " + " ".join(f"{x:.0f}" for x in xs))
    if unconfirmed:
        gone = ", ".join(f"{(b - a) * 1000:.0f}" for a, b in unconfirmed)
        print(f"   dropped {len(unconfirmed)} gaps with no `exited` event inside (not a restart): {gone} ms")
    if late:
        print(f"   WARNING: {len(late)} stamps written after `clawpen stop` returned: {late}")
    print(f"   {backoffs} `backoff` states among clawpen's restarts (0: every restart was a streak's first)")
    ratio = statistics.median(ms) / statistics.median(theirs)
    ok = ratio <= 1.0
    print(f"   ratio clawpen / docker (p50) {ratio:.2f}x (target <= 1.0x): {'met' if ok else 'NOT met'}")
    print(f"   docker without its 100 ms restart delay: about {statistics.median(theirs) - 100:.1f} ms (p50)")
    return ok


def split_restarts(
    ours: list[tuple[float, float]], events: list[dict[str, Any]]
) -> list[tuple[str, list[float]]]:
    """clawpen's restarts split at the daemon's events (wall clock, as the bot's stamps)."""
    parts: list[tuple[str, list[float]]] = [
        ("  exit -> `exited` event (init's pidfd, inspect, teardown)", []),
        ("  `exited` -> `starting` (decision)", []),
        ("  `starting` -> `running` (plan, create, start, gate)", []),
        ("  `running` -> first instruction (gate opens, exec)", []),
    ]
    for exit_, start in ours:
        ex = next((k for k, e in enumerate(events) if e["to_state"] == "exited" and e["at"] >= exit_), None)
        if ex is None or ex + 2 >= len(events):
            continue
        st, ru = events[ex + 1], events[ex + 2]
        if (st["to_state"], ru["to_state"]) != ("starting", "running") or ru["at"] > start + 1:
            continue
        edges = [exit_, events[ex]["at"], st["at"], ru["at"], start]
        for (_, xs), x, y in zip(parts, edges, edges[1:], strict=False):
            xs.append((y - x) * 1000)
    return parts


# ------------------------------------------------------------------------------------ 2. idle
def sched_seconds(pid: int) -> float:
    """On-CPU time of every thread of ``pid`` (ns in /proc/PID/task/*/schedstat)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    return total / 1e9


class Group:
    def __init__(self, label: str, pids: list[int]) -> None:
        self.label, self.pids = label, pids

    def cpu(self) -> float:
        total = 0.0
        for pid in self.pids:
            with contextlib.suppress(OSError):
                total += sched_seconds(pid)
        return total

    def rss_mb(self) -> float:
        total = 0
        for pid in self.pids:
            with contextlib.suppress(OSError):
                total += rss_kb(pid)
        return total / 1024


def container_groups(ids: list[str]) -> list[Group]:
    shims = [
        p for p in all_pids() if comm(p).startswith("containerd-shim") and any(i in cmdline(p) for i in ids)
    ]
    inits = [int(docker("inspect", "--format", "{{.State.Pid}}", i).strip()) for i in ids]
    inside = [p for init in inits for p in descendants(init)]
    return [Group("containerd-shims", shims), Group("in the containers", inside)]


Figures = dict[str, tuple[float, float]]  # label -> (CPU % of one core, RSS MB)


def measure(groups: list[Group], window: float, settle: float) -> Figures:
    time.sleep(settle)
    first, t0 = [g.cpu() for g in groups], time.monotonic()
    time.sleep(window)
    last, took = [g.cpu() for g in groups], time.monotonic() - t0
    out = {g.label: ((b - a) / took * 100, g.rss_mb()) for g, a, b in zip(groups, first, last, strict=True)}
    for g in groups:  # an engine restarted by someone else during the window: no figure
        if g.pids and not all(Path(f"/proc/{p}").exists() for p in g.pids):
            log(f"idle: {g.label} ended during the window (restarted?): no figure")
            out[g.label] = (float("nan"), float("nan"))
    return out


def bench_idle(cp: Clawpen, work: Path, image: str, n: int, window: float, settle: float) -> bool:
    names = [f"cbench-idle-{k:02d}" for k in range(n)]
    spec = cp.spec_dir / "idle.toml"
    spec.write_text("".join(bot_toml(b, image, ["sleep", "infinity"]) for b in names))
    warm = cp.spec_dir / "warm.toml"  # the daemon with the container tier loaded, then no bot
    warm.write_text(bot_toml("cbench-warm", image, ["sleep", "infinity"]))
    cp.cli("up", "--detach", "-f", str(warm))
    wait_until(lambda: cp.states().get("cbench-warm") == "running", 60, "the warm-up bot", 0.2)
    cp.cli("down", "cbench-warm")
    daemon = cp.pid()
    if daemon is None:
        raise BenchError("no clawpen daemon")

    def engine() -> list[Group]:  # looked up for each window: another user may restart dockerd
        return [Group("dockerd", [pid_of("dockerd")]), Group("containerd", [pid_of("containerd")])]

    log(f"idle: baseline, no bot: {window:g} s window")
    loads = [loadavg()]
    base = measure([Group("clawpen daemon", [daemon]), *engine()], window, settle)
    cp.cli("up", "--detach", "-f", str(spec))
    wait_until(lambda: all(cp.states().get(b) == "running" for b in names), 180, "clawpen's idle bots", 0.5)
    ids = [docker("ps", "-q", "--no-trunc", "--filter", f"label=clawpen.bot={b}").strip() for b in names]
    if not all(ids):
        raise BenchError("cannot find clawpen's containers by their clawpen.bot label")
    log(f"idle: {n} clawpen bots running; {settle:g} s settling, {window:g} s window")
    loads.append(loadavg())
    ours = measure([Group("clawpen daemon", [daemon]), *engine(), *container_groups(ids)], window, settle)
    cp.cli("down")
    for k in range(n):  # the same uid as a clawpen bot's would be: any non-root one
        argv = docker_argv(f"{DOCKER_PREFIX}idle-{k:02d}", image, 60000 + k)
        subprocess.run([*argv, "sleep", "infinity"], capture_output=True, check=True)
    ids = [docker("inspect", "--format", "{{.Id}}", f"{DOCKER_PREFIX}idle-{k:02d}").strip() for k in range(n)]
    log(f"idle: {n} docker containers running; {settle:g} s settling, {window:g} s window")
    loads.append(loadavg())
    theirs = measure([*engine(), *container_groups(ids)], window, settle)
    docker_rm_ours()
    print(
        f"\n2. idle: {n} bots `sleep infinity`; CPU over {window:g} s after {settle:g} s (% of a core, on-CPU"
    )
    print("   time of every thread from schedstat), RSS at the end; per bot: (with N - no bot) / N")
    print(f"   load average at each window's start: no bot {loads[0]}, clawpen {loads[1]}, docker {loads[2]}")
    head = ["no bot", "", "clawpen", "", "docker", "", "per bot: clawpen", "", "docker alone", ""]
    print(f"   {'':<20}" + "".join(f"{h:>12}" for h in head))
    print(f"   {'':<20}" + "".join(f"{h:>12}" for h in ["CPU %", "RSS MB"] * 5))
    per: dict[str, tuple[float, float, float, float]] = {}
    for label in ours:
        b = base.get(label, (0.0, 0.0))
        a, d = ours[label], theirs.get(label, (float("nan"), float("nan")))
        per[label] = ((a[0] - b[0]) / n, (a[1] - b[1]) / n, (d[0] - b[0]) / n, (d[1] - b[1]) / n)
        cells = [*b, *a, *d, *per[label]]
        print(f"   {label:<20}" + "".join(f"{c:>12.{3 - i % 2}f}" for i, c in enumerate(cells)))
    tot_a = [sum(v[i] for v in per.values()) for i in (0, 1)]
    tot_b = [sum(v[i] for k, v in per.items() if k != "clawpen daemon") for i in (2, 3)]
    share = per["clawpen daemon"]
    print(
        f"   all of it per bot: clawpen {tot_a[0]:.3f} % CPU, {tot_a[1]:.2f} MB; docker alone "
        f"{tot_b[0]:.3f} % CPU, {tot_b[1]:.2f} MB (the daemon's share: {share[0]:.4f} %, "
        f"{share[1] * 1024:.0f} kB)"
    )
    dcpu, drss = ours["clawpen daemon"]
    ok_cpu, ok_rss = dcpu <= TARGET_IDLE_CPU_PCT, drss <= TARGET_IDLE_RSS_MB
    verdict = {True: "met", False: "NOT met"}
    print(f"   clawpen daemon CPU, {n} bots: {dcpu:.3f} % (<= {TARGET_IDLE_CPU_PCT} %): {verdict[ok_cpu]}")
    print(f"   clawpen daemon RSS, {n} bots: {drss:.1f} MB (<= {TARGET_IDLE_RSS_MB:g} MB): {verdict[ok_rss]}")
    return ok_cpu and ok_rss


LOAD_START = loadavg()


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--crashes", type=int, default=20, help="restarts measured on each side")
    ap.add_argument("--block", type=int, default=5, help="restarts per interleaved block")
    ap.add_argument("--bots", type=int, default=10, help="idle bots")
    ap.add_argument("--window", type=float, default=30.0, help="idle window, seconds")
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (the daemon's state)")
    ap.add_argument("--raw", action="store_true", help="print every restart's figures")
    ap.add_argument("--image", default="clawpen-test-base:bookworm")
    ap.add_argument("--only", action="append", choices=["restart", "idle"])
    args = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("docker"):
        print("container_restart: needs root and Docker", file=sys.stderr)
        return 2
    only = set(args.only or ["restart", "idle"])

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    work = Path(tempfile.mkdtemp(prefix="clawpen-cbench-"))
    work.chmod(0o711)
    cp = Clawpen(work)
    print(
        f"container tier: restart and idle vs Docker alone ({args.image}); "
        f"load average {LOAD_START}, {os.cpu_count()} CPUs"
    )
    results: list[bool] = []
    code = 0
    try:
        if "restart" in only:
            results.append(bench_restart(cp, work, args.image, args.crashes, args.block, args.raw))
        if "idle" in only:
            results.append(bench_idle(cp, work, args.image, args.bots, args.window, args.settle))
        print(f"\n{sum(results)} of {len(results)} targets met; load average now {loadavg()}")
        code = 0 if all(results) else 1
    except (BenchError, subprocess.CalledProcessError) as err:
        print(f"container_restart: {err}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("container_restart: interrupted; cleaning up", file=sys.stderr)
        code = 2
    finally:
        log("cleaning up")
        with contextlib.suppress(Exception):
            cp.close()
        docker_rm_ours()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
            if work.exists():  # e.g. a file still being written: one more try, then say so
                time.sleep(1.0)
                shutil.rmtree(work, ignore_errors=True)
            if work.exists():
                print(f"could not remove {work}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
