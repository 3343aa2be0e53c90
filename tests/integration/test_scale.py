"""Many bots at once (issue 22's scale goal, sized for a test): 150 `sleep infinity` bots come
up with one write of the uid registry, each as its own uid, `ps` lists every one with its
memory, and the daemon's descriptor limit is raised from a shell's low soft limit.

The speed of it (500 bots, `up` <= 10 s, `ps` <= 100 ms) is bench/scale_bench.py's to measure.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest
from helpers import DaemonCli

from clawpen.sandbox.users import RANGE
from conftest import UID_BASE

pytestmark = [pytest.mark.root, pytest.mark.bwrap, pytest.mark.slow]

N = 150


def _uid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0])


def _memory_file(pid: int) -> Path:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _hid, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return Path(f"/sys/fs/cgroup/memory{path}/memory.usage_in_bytes")
        if line.startswith("0::"):
            return Path(f"/sys/fs/cgroup{path}/memory.current")
    raise AssertionError(f"no memory cgroup for {pid}")


def test_150_bots_come_up_each_as_its_own_uid_and_ps_lists_them_all(daemon: DaemonCli) -> None:
    names = [f"many{i:03d}" for i in range(N)]
    daemon.write("".join(f'[bots.{b}]\ncommand = ["sleep", "infinity"]\n\n' for b in names))
    registry = daemon.home / "users.json"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(1024, hard)
    # a shell's usual soft limit: the daemon (started by `up`) raises it, or ~40 bots are the most
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        daemon.cli("up", "--wait-timeout", "120", timeout=180)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    pid = daemon.pid()
    assert pid is not None
    limits = Path(f"/proc/{pid}/limits").read_text()
    line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
    daemon_soft = int(line.split()[3])
    assert daemon_soft == min(65_536, hard) > low

    rows = daemon.json("ps")
    assert isinstance(rows, list)
    assert sorted(r["bot"] for r in rows) == names
    assert all(r["state"] == "running" and r["pid"] for r in rows), [r for r in rows if not r["pid"]]
    uids = json.loads(registry.read_text())
    assert sorted(uids) == names
    assert len(set(uids.values())) == N
    assert all(UID_BASE <= u < UID_BASE + RANGE for u in uids.values())
    for r in rows[:: N // 10]:  # a sample: bubblewrap's child runs as the bot's own uid
        child = int(Path(f"/proc/{r['pid']}/task/{r['pid']}/children").read_text().split()[0])
        assert _uid(child) == uids[r["bot"]]
        # ps's memory is the bot's cgroup's (a file read per bot), not another bot's or none
        assert r["memory_bytes"] and r["memory_bytes"] > 0
        now = int(_memory_file(child).read_text())
        assert abs(now - r["memory_bytes"]) <= max(now, r["memory_bytes"]) // 2 + 65_536

    # one more bot later: the others keep their uids, the new one gets a fresh one
    mtime = registry.stat().st_mtime_ns
    daemon.write("".join(f'[bots.{b}]\ncommand = ["sleep", "infinity"]\n\n' for b in [*names, "late"]))
    daemon.cli("up", "--detach")
    daemon.wait_state("late", "running", timeout=30)
    again = json.loads(registry.read_text())
    assert registry.stat().st_mtime_ns != mtime
    assert {b: again[b] for b in names} == uids
    assert again["late"] not in uids.values()
