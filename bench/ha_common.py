"""Helpers of bench/ha_bench.py: the shared term log read incrementally, the bot's processes,
percentiles, and the keepalived (VRRP) anchor. Not a benchmark by itself."""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster_env import Fabric, SimHost, bot_cgroups  # tests/integration (sys.path by the bench)


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(xs: list[float], q: float) -> float:
    """The q-th percentile (nearest rank): with few samples p99 is the max, never below a sample."""
    if not xs:
        return math.nan
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def wait_until(pred: Callable[[], object], timeout: float, interval: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(interval)


@dataclass(frozen=True)
class Row:
    at: float
    host: str
    token: int


@dataclass
class Lines:
    """The bots' shared log ("<host> <token> <token from the file> <time>"), read as it grows."""

    path: Path
    offset: int = 0
    rows: list[Row] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)  # env token != file token

    def poll(self) -> list[Row]:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        cut = data.rfind(b"\n")
        if cut < 0:
            return self.rows
        self.offset += cut + 1
        for line in data[: cut + 1].decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) != 4:
                continue  # a line cut by a kill
            try:
                row = Row(float(parts[3]), parts[0], int(parts[1]))
                if int(parts[2]) != row.token:
                    self.bad.append(line)
            except ValueError:
                continue
            self.rows.append(row)
        return self.rows

    def since(self, t: float) -> list[Row]:
        self.poll()
        found = []
        for row in reversed(self.rows):
            if row.at < t - 5:  # the file is in write order; two writers differ by ms
                break
            if row.at > t:
                found.append(row)
        return found[::-1]

    def serving(self, within: float = 0.5) -> set[tuple[str, int]]:
        """The (host, term) pairs that wrote in the last ``within`` seconds."""
        return {(r.host, r.token) for r in self.since(time.time() - within)}


# ------------------------------------------------------------------------------ bot processes
def bot_pids(home: Path, bot: str = "pen") -> list[int]:
    """The non-root processes in bot ``bot``'s cgroups of the daemon on state dir ``home``."""
    found: set[int] = set()
    for cg in bot_cgroups(home):
        procs = cg / "cgroup.procs"
        if cg.name.endswith(f"{bot}.0") and procs.exists():
            with contextlib.suppress(OSError, ValueError):
                found |= {int(p) for p in procs.read_text().split()}
    mine = []
    for p in found:
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{p}").st_uid != 0:
                mine.append(p)
    return mine


def signal_bot(home: Path, sig: int, passes: int = 3) -> list[int]:
    """Send ``sig`` to every process of the bot, ``passes`` times (its shell loop forks)."""
    hit: set[int] = set()
    for _ in range(passes):
        for p in bot_pids(home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
                hit.add(p)
        time.sleep(0.05)
    return sorted(hit)


def children(pid: int) -> list[int]:
    """``pid``'s descendants (by /proc/*/stat's ppid)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (d / "stat").read_text()
                parent[int(d.name)] = int(stat[stat.rfind(")") + 2 :].split()[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


# ------------------------------------------------------------------------------ keepalived
KEEPALIVED = "/usr/sbin/keepalived"
VRRP_CONF = """global_defs {{
  router_id clawpen_bench_{name}
}}
vrrp_instance clawpen_bench {{
  state {state}
  interface eth0
  virtual_router_id {vrid}
  priority {prio}
  advert_int 1
  virtual_ipaddress {{
    {vip}/24 dev eth0
  }}
}}
"""


def keepalived_missing() -> str | None:
    if shutil.which(KEEPALIVED) is None and shutil.which("keepalived") is None:
        return "keepalived is not installed (apt-get install -y keepalived)"
    return None


@dataclass
class Vrrp:
    host: SimHost
    proc: subprocess.Popen[str]
    log: Path

    def pids(self) -> list[int]:
        return [self.proc.pid, *children(self.proc.pid)] if self.proc.poll() is None else []

    def signal(self, sig: int) -> None:
        for p in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)

    def kill(self) -> None:
        pids = self.pids()
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


def holds(host: SimHost, vip: str) -> bool:
    out = subprocess.run(
        ["ip", "-n", host.ns, "-o", "-4", "addr", "show", "dev", "eth0"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return f" {vip}/" in out


@contextlib.contextmanager
def vrrp_pair(fabric: Fabric, work: Path) -> Iterator[tuple[Vrrp, Vrrp, str]]:
    """Two keepalived instances (defaults: advert_int 1, preempt) on two new hosts of ``fabric``
    with one VIP: ``ka`` the MASTER (priority 150), ``kb`` the BACKUP (100)."""
    work.mkdir(parents=True, exist_ok=True)
    vip, vrid = fabric.addr(200), random.SystemRandom().randrange(1, 255)
    made: list[Vrrp] = []
    try:
        for name, state, prio in (("ka", "MASTER", 150), ("kb", "BACKUP", 100)):
            host = fabric.host(name)
            conf = work / f"{name}.conf"
            conf.write_text(VRRP_CONF.format(name=name, state=state, vrid=vrid, prio=prio, vip=vip))
            out = work / f"{name}.log"
            argv = [KEEPALIVED, "--dont-fork", "--log-console", "--log-detail", "--vrrp", "--no-syslog"]
            argv += ["-f", str(conf), "-p", str(work / f"{name}.pid"), "-r", str(work / f"{name}.vrrp.pid")]
            with open(out, "a") as f:
                proc = host.popen(argv, stdout=f, stderr=subprocess.STDOUT)
            made.append(Vrrp(host, proc, out))
        ka, kb = made
        if not wait_until(lambda: holds(ka.host, vip) and not holds(kb.host, vip), 15, 0.05):
            raise BenchError(f"keepalived: no stable MASTER\n{ka.log.read_text()[-1500:]}")
        yield ka, kb, vip
    finally:
        for v in made:
            v.kill()


def vrrp_round(ka: Vrrp, kb: Vrrp, vip: str, stopped_for: float = 1.0) -> dict[str, Any]:
    """SIGSTOP the MASTER's keepalived (all its processes); the time until the BACKUP holds the
    VIP (polled every 10 ms); then SIGCONT, and how long both hold it (no fencing: the stopped
    master keeps the address all along)."""
    ka.signal(signal.SIGSTOP)
    t0 = time.time()
    try:
        if not wait_until(lambda: holds(kb.host, vip), 20, 0.01):
            raise BenchError("keepalived: the BACKUP never took the VIP")
        took = time.time() - t0
        both_at_takeover = holds(ka.host, vip)
        time.sleep(stopped_for)
    finally:
        ka.signal(signal.SIGCONT)
    t1 = time.time()
    settled = wait_until(lambda: holds(ka.host, vip) != holds(kb.host, vip), 20, 0.01)
    after = time.time() - t1
    # back to the start: the MASTER (higher priority, preempt) holds it alone, steadily
    wait_until(lambda: holds(ka.host, vip) and not holds(kb.host, vip), 20, 0.05)
    time.sleep(1.5)
    return {
        "took": took,
        "stopped_master_still_holds": both_at_takeover,
        "both_hold": took and (t1 + after) - (t0 + took),
        "after_resume": after,
        "settled": settled,
    }


# ------------------------------------------------------------------------------ planned failover data
SYNC_SECRET, SYNC_PASSWORD = "HA_SYNC_PASSWORD", "ha-bench-restic-password-7c41"
KEEP_SH = r"""cd /workspace
i=$(cat counter 2>/dev/null || echo 0)
while :; do
  i=$((i+1))
  echo "$CLAWPEN_HA_HOST $i" >> log
  echo $i > counter.new && mv counter.new counter
  sleep 0.02
done
"""


def keep_bot(repo: Path, interval: str = "5s") -> str:
    """A second HA bot (no check): it appends numbered lines to ``log`` in its workspace and
    keeps the last number in ``counter`` (read back at its start); shipped through ``repo``."""
    sync = f'sync = {{ repository = "{repo}", password_secret = "{SYNC_SECRET}", interval = "{interval}" }}'
    return f"""
[bots.keep]
command = ["sh", "-c", '''{KEEP_SH}''']
workspace = "./keep"
restart.stop_grace = "1s"
ha = {{ mode = "primary-backup", hosts = ["a", "b"], {sync} }}
"""


def lines_of(ws: Path) -> bytes:
    try:
        return (ws / "log").read_bytes()
    except OSError:
        return b""


def bytes_lost(before: bytes, after: bytes) -> dict[str, Any]:
    """``before``: the old primary's log once its bot stopped; ``after``: the new primary's. Lost:
    the bytes of ``before`` that are not the start of ``after``; the new lines must continue the
    numbering with no gap or repeat."""
    n = next((i for i, (x, y) in enumerate(zip(before, after, strict=False)) if x != y), None)
    common = before[: min(len(before), len(after)) if n is None else n]
    old = before.decode(errors="replace").splitlines()
    new = after[len(before) :].decode(errors="replace").splitlines() if common == before else []
    last = int(old[-1].split()[1]) if old else 0
    nxt = int(new[0].split()[1]) if new and len(new[0].split()) == 2 else None
    return {
        "before_bytes": len(before),
        "after_bytes": len(after),
        "lost_bytes": len(before) - len(common),
        "last_line_before": old[-1] if old else "",
        "first_line_after": new[0] if new else "",
        "continues": nxt == last + 1,
    }
