"""The start-up CPU allowance and health events (issue 21's open ends, items 1 and 2).

The bot's real cgroup quota is read from the host: ``start_cpus`` (capped at the host's cores)
from the start until the first passing health check or ``start_for``, then ``cpus``; again
from each restart; a ``start-cpus`` event says when and why it ended. A change of health is a
``health`` event with the check's detail; checks that change nothing are not.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
from helpers import DaemonCli, alive, wait_for

from clawpen.paths import cgroup_scope
from clawpen.sandbox.cgroups import detect

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

CORES = os.cpu_count() or 1
PERIOD = 100_000


def quota_of(daemon: DaemonCli, bot: str, replica: int = 0) -> int:
    """The CPU quota (µs per 100 ms period) of the bot's cgroup, read from the host."""
    host = detect()
    name = f"{cgroup_scope(daemon.home)}{bot}.{replica}"
    monitor = daemon.ps()[bot]["pid"]  # bubblewrap, outside the cgroup; its child is inside
    with contextlib.suppress(OSError, TypeError, IndexError):
        child = Path(f"/proc/{monitor}/task/{monitor}/children").read_text().split()[0]
        if f"/{name}.b" in Path(f"/proc/{child}/cgroup").read_text():
            name += ".b"  # a warm restart runs the bot in its second slot (clawpen.daemon.warm)
    folder = host.hierarchies["cpu"] / host.base / name
    if host.version == 2:
        quota, period = (folder / "cpu.max").read_text().split()
    else:
        quota = (folder / "cpu.cfs_quota_us").read_text().strip()
        period = (folder / "cpu.cfs_period_us").read_text().strip()
    assert int(period) == PERIOD
    return -1 if quota in ("max", "-1") else int(quota)


def events_of(daemon: DaemonCli, bot: str, kind: str) -> list[str]:
    return [e["reason"] for e in daemon.events(bot) if e["kind"] == kind]


def test_the_allowance_lasts_until_the_first_passing_check_and_health_changes_are_events(
    daemon: DaemonCli,
) -> None:
    daemon.write("""
        [bots.scpu]
        command = ["sleep", "300"]
        resources = { cpus = 0.5, start_cpus = 64 }
        health = { cmd = ["test", "-e", "/tmp/ready"], interval = "1s", retries = 1, start_period = "4s", on_unhealthy = "none" }
    """)  # noqa: E501
    daemon.cli("up", "--detach")
    daemon.wait_state("scpu", "running")
    # not healthy yet: the allowance, capped at the host's cores (64 asks for more)
    boosted = wait_for(lambda: quota_of(daemon, "scpu") == CORES * PERIOD, 5, interval=0.05)
    assert boosted, quota_of(daemon, "scpu")
    assert daemon.ps()["scpu"]["health"] == "starting"
    assert events_of(daemon, "scpu", "start-cpus") == []
    daemon.cli("exec", "scpu", "--", "touch", "/tmp/ready")
    assert wait_for(lambda: quota_of(daemon, "scpu") == 50_000, 10, interval=0.05), quota_of(daemon, "scpu")
    assert daemon.ps()["scpu"]["health"] == "healthy"
    assert wait_for(lambda: events_of(daemon, "scpu", "start-cpus"), 5, interval=0.1)
    (ended,) = events_of(daemon, "scpu", "start-cpus")
    assert ended.startswith(f"start_cpus {CORES:g} ended, cpus 0.5 now: healthy after "), ended
    # health: one event per change, with the check's detail (checks every second in between: none)
    daemon.cli("exec", "scpu", "--", "rm", "/tmp/ready")
    assert wait_for(lambda: daemon.ps()["scpu"]["health"] == "unhealthy", 10, interval=0.1)
    daemon.cli("exec", "scpu", "--", "touch", "/tmp/ready")
    assert wait_for(lambda: daemon.ps()["scpu"]["health"] == "healthy", 10, interval=0.1)
    assert wait_for(lambda: len(events_of(daemon, "scpu", "health")) == 3, 5, interval=0.1)
    health = events_of(daemon, "scpu", "health")
    assert health[0].startswith("starting -> healthy: exit 0 ("), health
    assert health[0].endswith("s after the start)"), health
    assert health[1] == "healthy -> unhealthy: exit 1", health
    assert health[2] == "unhealthy -> healthy: exit 0", health
    # the quota stays at cpus after the allowance (going unhealthy does not grant it again)
    assert quota_of(daemon, "scpu") == 50_000
    assert len(events_of(daemon, "scpu", "start-cpus")) == 1


def test_without_a_health_check_it_lasts_start_for_and_comes_back_at_each_restart(daemon: DaemonCli) -> None:
    daemon.write("""
        [bots.scpu2]
        command = ["sleep", "300"]
        resources = { cpus = 0.25, start_cpus = 1, start_for = "2s" }
        [bots.plain]
        command = ["sleep", "300"]
        resources = { cpus = 0.25 }
    """)
    daemon.cli("up", "--detach")
    daemon.wait_state("scpu2", "running")
    daemon.wait_state("plain", "running")
    assert wait_for(lambda: quota_of(daemon, "scpu2") == PERIOD, 5, interval=0.05), quota_of(daemon, "scpu2")
    assert quota_of(daemon, "plain") == 25_000  # control: no allowance without start_cpus
    assert wait_for(lambda: quota_of(daemon, "scpu2") == 25_000, 6, interval=0.05), quota_of(daemon, "scpu2")
    assert wait_for(lambda: events_of(daemon, "scpu2", "start-cpus"), 5, interval=0.1)
    ended = events_of(daemon, "scpu2", "start-cpus")
    assert ended == ["start_cpus 1 ended, cpus 0.25 now: start_for 2s passed"], ended
    pid = daemon.ps()["scpu2"]["pid"]
    daemon.cli("restart", "scpu2")
    assert wait_for(lambda: daemon.ps()["scpu2"].get("pid") not in (None, pid), 10, interval=0.1)
    assert wait_for(lambda: quota_of(daemon, "scpu2") == PERIOD, 5, interval=0.05), quota_of(daemon, "scpu2")
    assert wait_for(lambda: quota_of(daemon, "scpu2") == 25_000, 6, interval=0.05), quota_of(daemon, "scpu2")
    assert wait_for(lambda: len(events_of(daemon, "scpu2", "start-cpus")) == 2, 5, interval=0.1)
    assert events_of(daemon, "plain", "start-cpus") == []


def test_a_new_daemon_carries_on_an_allowance_it_adopts_and_grants_none_that_had_ended(
    daemon: DaemonCli,
) -> None:
    daemon.write("""
        [bots.scpu3]
        command = ["sleep", "300"]
        resources = { cpus = 0.5, start_cpus = 64 }
        health = { cmd = ["test", "-e", "/tmp/ready"], interval = "1s", start_period = "60s" }
    """)
    daemon.cli("up", "--detach")
    daemon.wait_state("scpu3", "running")
    assert wait_for(lambda: quota_of(daemon, "scpu3") == CORES * PERIOD, 5, interval=0.05)
    pid = daemon.ps()["scpu3"]["pid"]
    kill_daemon(daemon)  # during the allowance: the bot runs on with it
    assert quota_of(daemon, "scpu3") == CORES * PERIOD
    assert daemon.ps()["scpu3"]["pid"] == pid  # a new daemon, the same (adopted) bot
    time.sleep(1.0)
    assert quota_of(daemon, "scpu3") == CORES * PERIOD  # carried on: not healthy yet
    assert events_of(daemon, "scpu3", "start-cpus") == []
    daemon.cli("exec", "scpu3", "--", "touch", "/tmp/ready")
    assert wait_for(lambda: quota_of(daemon, "scpu3") == 50_000, 10, interval=0.05), quota_of(daemon, "scpu3")
    assert wait_for(lambda: events_of(daemon, "scpu3", "start-cpus"), 5, interval=0.1)
    # after it ended: the next daemon adopts the bot and grants nothing again (no boost, no event)
    kill_daemon(daemon)
    seen = set()
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        seen.add(quota_of(daemon, "scpu3"))
        if daemon.ps()["scpu3"]["health"] == "healthy":
            break
        time.sleep(0.05)
    assert daemon.ps()["scpu3"]["pid"] == pid and daemon.ps()["scpu3"]["health"] == "healthy"
    time.sleep(0.5)
    seen.add(quota_of(daemon, "scpu3"))
    assert seen == {50_000}, seen
    assert len(events_of(daemon, "scpu3", "start-cpus")) == 1


def kill_daemon(daemon: DaemonCli) -> None:
    """SIGKILL the daemon (its bots run on), then start a new one (``ps`` does)."""
    old = daemon.pid()
    assert old is not None
    os.kill(old, signal.SIGKILL)
    assert wait_for(lambda: not alive(old), 10)
    daemon.cli("ps")
    assert daemon.pid() not in (None, old)
