#!/usr/bin/env python3
"""Scale: how `up`, `ps`, crash -> restart, idle CPU, RSS, fds and kernel memory grow with N bots.

Run as root::

    .venv/bin/python bench/scale_bench.py [--sizes 10,50,500] [--quick] [--no-anchor]
                                          [--profile DIR] [--json out.json]

For each N: a private daemon (temporary CLAWPEN_HOME, started by this script as
``python -m clawpen daemon``, or under cProfile with ``--profile``) and a spec of N bots running
``sleep infinity`` with the default network (a private loopback, no way out). Measured:

- ``up``: ``clawpen up --detach`` (a fresh CLI) until every bot is ``running`` (the states
  polled every 50 ms with the ``topology`` op), and the daemon's CPU time over it (utime +
  stime, every thread: less sensitive than the wall time to a loaded host); the anchor, in the
  same run: supervisord (Debian's ``supervisor``) with the same N programs, from its start to
  all ``RUNNING``, and its CPU time.
- ``ps``: a fresh ``clawpen ps`` CLI, p50 of 10; the socket ``ps`` op, p50 of 20.
- crash -> restart: the bot's process (``sleep``) of 9 different bots SIGKILLed, the time from
  the kill to the daemon's ``running`` event of the next instance (p50 of 9).
- idle: over a window (20 s, 8 s with ``--quick``) once every bot runs: CPU of the daemon
  (utime + stime from /proc/PID/stat, % of one core) and of supervisord side by side, RSS.
- fds: the daemon's open fds (/proc/PID/fd) with no bot and with N; the bots' fds per bot
  (bubblewrap and the bot's processes); bubblewrap processes per bot.
- kernel memory: per bot, the bot's memory cgroup ``memory.kmem.usage_in_bytes`` (cgroup v1)
  or ``memory.stat`` ``kernel`` (v2), and Slab from /proc/meminfo before ``up`` and with N
  bots, divided by N (host-wide: noisy on a shared host).

Before anything: the host's limits (pid_max, threads-max, inotify, RLIMIT_NOFILE, the uid
range) are checked against the largest N. The goals for 500 bots (issue 22): ``up`` <= 10 s,
idle daemon CPU <= 1 % of a core, ``ps`` <= 100 ms (the CLI's p50). Everything is stopped at
the end (``clawpen down``, the daemon SIGTERMed, supervisord and its programs) and the
temporary folder removed; /etc/passwd and /etc/group are compared before and after (clawpen
allocates bot uids in its state's users.json and creates no host user). Exits 0 when every
goal is met, 1 when one is missed, 2 when the benchmark cannot run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon_bench import (  # bench/, next to this file
    VENV_BIN,
    BenchError,
    Clawpen,
    Supervisord,
    comm,
    cpu_seconds,
    descendants,
    ensure_supervisord,
    log,
    mono,
    status_kb,
    terminate,
    toml_bot,
    wait_until,
)

GOAL_UP_S = 10.0
GOAL_IDLE_CPU_PCT = 1.0
GOAL_PS_MS = 100.0
PROCS_PER_BOT = 3  # bwrap (monitor), bwrap (pid 1 in the sandbox), the bot's process
PREFIX = f"sc{os.getpid() % 0xFFFF:04x}"  # cgroups are host-wide: bot names unique to this run

# The daemon under cProfile (--profile): the stats go to argv[1] when it is SIGTERMed.
PROFILED = """
import cProfile, signal, sys
from clawpen.daemon.app import run_daemon
from clawpen.paths import state_dir
prof = cProfile.Profile()
def stop(*_):
    prof.disable()
    prof.dump_stats(sys.argv[1])
    sys.exit(0)
prof.enable()
signal.signal(signal.SIGTERM, stop)
try:
    run_daemon(state_dir())
finally:
    prof.disable()
    prof.dump_stats(sys.argv[1])
"""


def fd_count(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def meminfo_kb(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def memory_cgroup(pid: int) -> Path | None:
    """The memory cgroup folder of a process (v1 ``memory`` controller, or v2's one tree)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _hid, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path("/sys/fs/cgroup/memory" + path)
    for line in lines:
        if line.startswith("0::"):
            return Path("/sys/fs/cgroup" + line[3:])
    return None


def kernel_bytes(cg: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int((cg / "memory.kmem.usage_in_bytes").read_text())
    with contextlib.suppress(OSError, ValueError):
        for line in (cg / "memory.stat").read_text().splitlines():
            if line.startswith("kernel "):
                return int(line.split()[1])
    return None


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def check_limits(biggest: int) -> list[str]:
    """The host limits a daemon with ``biggest`` bots meets; a line per limit (BenchError if one
    would break the run)."""
    from clawpen.sandbox.users import RANGE

    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    threads = int(Path("/proc/sys/kernel/threads-max").read_text())
    watches = int(Path("/proc/sys/fs/inotify/max_user_watches").read_text())
    instances = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    used = len(os.listdir("/proc"))
    need = biggest * PROCS_PER_BOT
    lines = [
        f"pid_max {pid_max}, threads-max {threads}: {need} processes for {biggest} bots "
        f"(+ {used} /proc entries now)",
        f"inotify: max_user_watches {watches}, max_user_instances {instances}",
        f"RLIMIT_NOFILE of this shell (the daemon inherits it): {soft} soft, {hard} hard "
        "(the systemd unit sets 65536:524288)",
        f"bot uids: a range of {RANGE} in the state's users.json, no /etc/passwd entry",
    ]
    if need + used > min(pid_max, threads):
        raise BenchError(f"{biggest} bots need {need} processes: pid_max/threads-max too low")
    return lines


def host_users() -> tuple[int, int]:
    return len(Path("/etc/passwd").read_text().splitlines()), len(Path("/etc/group").read_text().splitlines())


@dataclass
class Row:
    n: int
    up_s: float = float("nan")
    up_sup_s: float | None = None
    up_cpu_s: float = float("nan")
    up_sup_cpu_s: float | None = None
    ps_cli_ms: float = float("nan")
    ps_op_ms: float = float("nan")
    restart_ms: float = float("nan")
    cpu_pct: float = float("nan")
    cpu_sup_pct: float | None = None
    rss_mb: float = float("nan")
    rss0_mb: float = float("nan")
    rss_sup_mb: float | None = None
    fds: int = 0
    fds0: int = 0
    bot_fds: float = float("nan")
    bwraps: float = float("nan")
    kmem_kb: float = float("nan")
    slab_kb: float = float("nan")
    notes: list[str] = field(default_factory=list)


class Daemon:
    """A private clawpen daemon (our child, its own session)."""

    def __init__(self, work: Path, env: dict[str, str], profile: Path | None) -> None:
        spec_dir = work / "spec"
        spec_dir.mkdir(mode=0o755)
        self.cp = Clawpen(work / "state", spec_dir, env)
        argv = [str(VENV_BIN / "python"), "-m", "clawpen", "daemon"]
        if profile is not None:
            argv = [str(VENV_BIN / "python"), "-c", PROFILED, str(profile)]
        self.log = work / "daemon.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                argv, env=self.cp.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd="/"
            )

        def up() -> bool:
            if self.proc.poll() is not None:
                raise BenchError(f"the daemon exited: see {self.log}")
            with contextlib.suppress(OSError):
                return bool(self.cp.call("ping"))
            return False

        wait_until(up, 30, "the daemon")

    def rows(self) -> list[dict[str, Any]]:
        return list(self.cp.call("ps"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.cp.cli("down", timeout=600)
            except (BenchError, subprocess.TimeoutExpired) as err:
                log(f"clawpen down: {err}")
            terminate(self.proc.pid, 60)
        self.proc.wait()


def all_running(d: Daemon, n: int) -> bool:
    """Every bot running, from the ``topology`` op: the states without ``ps``'s cgroup reads (at
    500 bots a ``ps`` every 50 ms would take a third of the daemon's loop from the start-up)."""
    bots = d.cp.call("topology")["bots"]
    return len(bots) == n and all(b["states"] == ["running"] for b in bots)


def process_tree() -> dict[int, list[int]]:
    """Every process's children (one pass over /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                text = Path(f"/proc/{entry}/stat").read_text()
                children.setdefault(int(text[text.rindex(")") + 2 :].split()[1]), []).append(int(entry))
    return children


def bot_process(bwrap: int, tree: dict[int, list[int]] | None = None) -> int | None:
    """The bot's own process (``sleep``) below its bubblewrap."""
    tree = process_tree() if tree is None else tree
    todo = [bwrap]
    while todo:
        for child in tree.get(todo.pop(), []):
            if comm(child) == "sleep":
                return child
            todo.append(child)
    return None


def crash_restart(d: Daemon, rows: list[dict[str, Any]], count: int) -> list[float]:
    """SIGKILL the bot's process of ``count`` bots, one at a time: kill -> ``running`` event, ms."""
    out: list[float] = []
    for row in rows[:count]:
        victim = bot_process(int(row["pid"]))
        if victim is None:
            continue
        killed = time.time()
        os.kill(victim, signal.SIGKILL)

        def ran(bot: str = row["bot"], after: float = killed) -> list[float]:
            evs = d.cp.call("events", bot=bot, limit=20)
            return [
                e["at"]
                for e in evs
                if e["kind"] == "state" and e["to_state"] == "running" and e["at"] > after
            ]

        wait_until(lambda: bool(ran()), 60, f"{row['bot']} restarted", 0.005)
        at = min(ran())
        out.append((at - killed) * 1000)
        time.sleep(0.2)
    return out


def idle_cpu(pids: dict[str, int], window: float) -> dict[str, float]:
    first = {k: cpu_seconds(p) for k, p in pids.items()}
    t0 = mono()
    time.sleep(window)
    elapsed = mono() - t0
    return {k: (cpu_seconds(p) - first[k]) / elapsed * 100 for k, p in pids.items()}


def time_cli(cp: Clawpen, args: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = mono()
        cp.cli(*args)
        out.append((mono() - t0) * 1000)
    return out


def time_op(cp: Clawpen, op: str, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = mono()
        cp.call(op)
        out.append((mono() - t0) * 1000)
    return out


def measure(n: int, work: Path, env: dict[str, str], ns: argparse.Namespace) -> Row:
    row = Row(n)
    profile = Path(ns.profile) / f"daemon-{n}.prof" if ns.profile else None
    names = [f"{PREFIX}-{n}-{i:03d}" for i in range(n)]
    slab0 = meminfo_kb("Slab")
    d = Daemon(work, env, profile)
    sup: Supervisord | None = None
    try:
        time.sleep(1.0)
        row.rss0_mb = status_kb(d.proc.pid, "VmRSS") / 1024
        row.fds0 = fd_count(d.proc.pid)
        spec = d.cp.write_spec("clawpen.toml", "".join(toml_bot(b, ["sleep", "infinity"]) for b in names))
        t0, c0 = mono(), cpu_seconds(d.proc.pid)
        d.cp.cli("up", "--detach", "-f", str(spec), timeout=600)
        wait_until(lambda: all_running(d, n), 600, f"{n} bots running", 0.05)
        row.up_s, row.up_cpu_s = mono() - t0, cpu_seconds(d.proc.pid) - c0
        log(f"{n}: clawpen up {row.up_s:.2f} s")
        if not ns.no_anchor:
            sup = Supervisord(
                work,
                "sup",
                {b: {"command": "sleep infinity", "autorestart": "true", "startsecs": "1"} for b in names},
                env,
            )
            t0 = mono()
            sup.start()
            wait_until(
                lambda: (s := sup.states()) and all(v == "RUNNING" for v in s.values()),  # type: ignore[union-attr]
                600,
                "supervisord's programs",
                0.05,
            )
            row.up_sup_s, row.up_sup_cpu_s = mono() - t0, cpu_seconds(sup.pid)
            log(f"{n}: supervisord {row.up_sup_s:.2f} s")
        time.sleep(ns.settle)
        pids = {"clawpen": d.proc.pid}
        if sup is not None:
            pids["supervisord"] = sup.pid
        cpu = idle_cpu(pids, ns.window)
        row.cpu_pct, row.cpu_sup_pct = cpu["clawpen"], cpu.get("supervisord")
        row.rss_mb = status_kb(d.proc.pid, "VmRSS") / 1024
        if sup is not None:
            row.rss_sup_mb = status_kb(sup.pid, "VmRSS") / 1024
        row.fds = fd_count(d.proc.pid)
        tree = descendants(d.proc.pid)
        row.bwraps = sum(comm(p) == "bwrap" for p in tree) / n
        row.bot_fds = sum(fd_count(p) for p in tree) / n
        rows = d.rows()
        kmem = []
        children = process_tree()
        for r in rows:
            victim = bot_process(int(r["pid"]), children)
            cg = memory_cgroup(victim) if victim else None
            got = kernel_bytes(cg) if cg else None
            if got is not None:
                kmem.append(got)
        row.kmem_kb = statistics.mean(kmem) / 1024 if kmem else float("nan")
        row.slab_kb = (meminfo_kb("Slab") - slab0) / n
        row.ps_cli_ms = p50(time_cli(d.cp, ["ps"], 10))
        row.ps_op_ms = p50(time_op(d.cp, "ps", 20))
        row.restart_ms = p50(crash_restart(d, rows, 9))
        log(f"{n}: ps {row.ps_cli_ms:.1f} ms, restart {row.restart_ms:.1f} ms, idle {row.cpu_pct:.3f} %")
    finally:
        if sup is not None:
            sup.stop()
        t0 = mono()
        d.stop()
        row.notes.append(f"down + daemon stop {mono() - t0:.1f} s")
        shutil.rmtree(work / "sup", ignore_errors=True)
    return row


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[Row]) -> None:
    cols: list[tuple[str, Any]] = [
        ("bots", lambda r: str(r.n)),
        ("up s", lambda r: fmt(r.up_s, ".2f")),
        ("sup up s", lambda r: fmt(r.up_sup_s, ".2f")),
        ("up CPU s", lambda r: fmt(r.up_cpu_s, ".2f")),
        ("sup CPU s", lambda r: fmt(r.up_sup_cpu_s, ".2f")),
        ("ps CLI ms", lambda r: fmt(r.ps_cli_ms, ".1f")),
        ("ps op ms", lambda r: fmt(r.ps_op_ms, ".1f")),
        ("restart ms", lambda r: fmt(r.restart_ms, ".1f")),
        ("idle CPU %", lambda r: fmt(r.cpu_pct, ".3f")),
        ("sup CPU %", lambda r: fmt(r.cpu_sup_pct, ".3f")),
        ("RSS MB", lambda r: f"{r.rss0_mb:.0f}->{r.rss_mb:.0f}"),
        ("sup RSS", lambda r: fmt(r.rss_sup_mb, ".0f")),
        ("daemon fds", lambda r: f"{r.fds0}->{r.fds}"),
        ("fds/bot", lambda r: f"{(r.fds - r.fds0) / r.n:.1f}+{r.bot_fds:.1f}"),
        ("bwrap/bot", lambda r: fmt(r.bwraps, ".1f")),
        ("kmem/bot kB", lambda r: fmt(r.kmem_kb, ".0f")),
        ("slab/bot kB", lambda r: fmt(r.slab_kb, ".0f")),
    ]
    cells = [[h for h, _ in cols]] + [[f(r) for _, f in cols] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    for line in cells:
        print("  " + "  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))
    print(
        "  up CPU s: the daemon's CPU time (utime+stime, every thread) from `up` to all running;"
        " sup CPU s: supervisord's from its start"
    )
    print(
        "  fds/bot: the daemon's extra fds per bot + the fds of the bot's processes (bwrap, sleep);"
        " kmem: the bot's memory cgroup (v1 memory.kmem.usage_in_bytes); slab: /proc/meminfo Slab"
        " growth over N (host-wide)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="10,50,500")
    parser.add_argument("--quick", action="store_true", help="an 8 s idle window, 2 s of settling")
    parser.add_argument("--no-anchor", action="store_true", help="no supervisord")
    parser.add_argument("--profile", help="a folder: the daemon runs under cProfile, stats there")
    parser.add_argument("--json")
    ns = parser.parse_args(argv)
    ns.window, ns.settle = (8.0, 2.0) if ns.quick else (20.0, 5.0)
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    sizes = [int(s) for s in ns.sizes.split(",")]
    users0 = host_users()
    try:
        print("== limits")
        for line in check_limits(max(sizes)):
            print("  " + line)
        if not ns.no_anchor:
            print("  anchor: " + ensure_supervisord())
    except BenchError as err:
        print(f"cannot run: {err}", file=sys.stderr)
        return 2
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAWPEN_")}
    results: list[Row] = []
    for n in sizes:
        work = Path(tempfile.mkdtemp(prefix=f"clawpen-scale{n}-", dir="/tmp"))
        work.chmod(0o755)
        try:
            results.append(measure(n, work, env, ns))
        except BenchError as err:
            print(f"{n} bots: cannot run: {err}", file=sys.stderr)
            return 2
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print("\n== scale: N idle bots (`sleep infinity`, default network: private loopback)")
    print_table(results)
    for r in results:
        print(f"  {r.n}: {'; '.join(r.notes)}")
    ok = True
    big = next((r for r in results if r.n == 500), None)
    if big is not None:
        for label, value, goal, unit in (
            ("`clawpen up` to all running", big.up_s, GOAL_UP_S, "s"),
            ("idle daemon CPU", big.cpu_pct, GOAL_IDLE_CPU_PCT, "% of a core"),
            ("`clawpen ps` (fresh CLI, p50)", big.ps_cli_ms, GOAL_PS_MS, "ms"),
        ):
            good = value <= goal
            ok &= good
            print(f"  {'PASS' if good else 'FAIL'}  500 bots: {label} {value:.3g} {unit} (goal <= {goal:g})")
        if big.up_sup_s:
            print(f"  info  500 bots: up {big.up_s / big.up_sup_s:.2f}x supervisord's")
    users1 = host_users()
    print(
        f"  host users: /etc/passwd {users0[0]} -> {users1[0]} lines, /etc/group {users0[1]} -> {users1[1]}"
    )
    if ns.json:
        Path(ns.json).write_text(json.dumps([r.__dict__ for r in results], indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
