"""The container tier honours a bot's ``build`` steps and its ``start_cpus`` allowance.

- ``build``: the steps run on the host in the sandbox tier (output cached under
  ``<state>-build``); the container gets the output as a read-only bind at ``build.mount``, and
  the bot runs a script the build wrote there.
- ``start_cpus``: the CPU quota is on clawpen's cgroup around the container (the engine's cgroup
  parent), not the engine's own: the allowance's quota is read from the host's cgroup files
  before and after the bot turns healthy, and a CPU-bound container is held to it (it runs
  above ``cpus`` during the allowance, at most ``cpus`` after it).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from container_env import BASE_IMAGE, container_daemon
from helpers import DaemonCli, wait_for

from clawpen.paths import cgroup_scope
from clawpen.sandbox.cgroups import detect

pytestmark = [pytest.mark.root, pytest.mark.docker]

CORES = os.cpu_count() or 1
PERIOD = 100_000
CONTAINER = f'tier = "container"\nimage = "{BASE_IMAGE}"\n'


@pytest.fixture
def daemon() -> Iterator[DaemonCli]:
    """A daemon whose state (and so ``<state>-build``) sits in a folder the bot uid can reach."""
    base = Path(tempfile.mkdtemp(prefix="clawpen-cb-", dir="/tmp"))
    base.chmod(0o755)
    try:
        with container_daemon(base / "state") as d:
            yield d
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def _inspect(name: str) -> dict[str, object]:
    out = subprocess.run(["docker", "inspect", name], capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]  # type: ignore[no-any-return]


@pytest.mark.bwrap
def test_a_container_bots_build_output_is_bound_read_only_and_runs_from_opt_bot(daemon: DaemonCli) -> None:
    # the step runs on the host (the sandbox tier): it records where it ran, then writes the script
    step = (
        "test -e /.clawpen && echo in-container > /opt/bot/where || echo on-host > /opt/bot/where; "
        "printf '#!/bin/sh\\necho from-build uid=$(id -u) $(cat /opt/bot/where)\\nexec sleep 300\\n' "
        "> /opt/bot/run.sh"
    )
    daemon.write(
        f"[bots.cb]\n{CONTAINER}"
        'command = ["sh", "/opt/bot/run.sh"]\n'
        f'build = {{ steps = [["sh", "-c", "{step}"]] }}\n'
    )
    up = daemon.cli("up", timeout=180)
    row = daemon.wait_state("cb", "running")
    assert wait_for(lambda: "from-build" in daemon.cli("logs", "cb").stdout, 60), daemon.cli(
        "logs", "cb"
    ).stdout
    logs = daemon.cli("logs", "cb").stdout
    [out] = [p for p in Path(f"{daemon.home}-build/cb").iterdir() if p.is_dir() and p.name != "cache"]
    uid = out.stat().st_uid
    assert f"from-build uid={uid} on-host" in logs, (logs, up.stdout)
    assert (out / "run.sh").is_file()
    # the container's view: the output at /opt/bot, a read-only bind of the host's folder
    info = _inspect(f"clawpen-{cgroup_scope(daemon.home)}cb-0")
    [bind] = [m for m in info["Mounts"] if m["Destination"] == "/opt/bot"]  # type: ignore[attr-defined]
    assert bind["Source"] == str(out) and bind["RW"] is False, bind
    assert info["Config"]["Image"] == BASE_IMAGE  # type: ignore[index]
    # hostile: the bot cannot change its build output; positive control: it reads it
    got = daemon.cli(
        "exec", "cb", "--", "sh", "-c", "cat /opt/bot/where; echo x >> /opt/bot/run.sh", check=False
    )
    assert got.returncode != 0 and "Read-only file system" in got.stderr, got
    assert got.stdout.strip() == "on-host", got
    assert "exec sleep 300" in (out / "run.sh").read_text() and "x\n" not in (out / "run.sh").read_text()
    # a second `up` finds the output cached and changes nothing
    again = daemon.cli("up", timeout=120)
    assert "cached" in again.stdout + again.stderr or any(
        "cached" in e["reason"] for e in daemon.events("cb") if e["kind"] == "build"
    ), again.stdout
    assert daemon.ps()["cb"]["pid"] == row["pid"]
    daemon.cli("down")
    assert (
        subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"name=clawpen-{cgroup_scope(daemon.home)}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        == []
    )


def _cgroup_dir(daemon: DaemonCli, bot: str, controller: str) -> Path:
    host = detect()
    return host.hierarchies[controller] / host.base / f"{cgroup_scope(daemon.home)}{bot}.0"


def quota_of(daemon: DaemonCli, bot: str) -> int:
    """The CPU quota (µs per 100 ms period) of clawpen's cgroup around the bot's container."""
    folder = _cgroup_dir(daemon, bot, "cpu")
    if detect().version == 2:
        quota, period = (folder / "cpu.max").read_text().split()
    else:
        quota = (folder / "cpu.cfs_quota_us").read_text().strip()
        period = (folder / "cpu.cfs_period_us").read_text().strip()
    assert int(period) == PERIOD
    return -1 if quota in ("max", "-1") else int(quota)


def cores_used(daemon: DaemonCli, bot: str, seconds: float = 1.5) -> float:
    """CPU time the bot's container used over ``seconds`` of wall time, in cores."""
    host = detect()
    cg = host.attach(f"{cgroup_scope(daemon.home)}{bot}.0")
    before, t0 = cg.stats().cpu_usage_ns, time.monotonic()
    time.sleep(seconds)
    after, t1 = cg.stats().cpu_usage_ns, time.monotonic()
    assert before is not None and after is not None
    return (after - before) / 1e9 / (t1 - t0)


def test_the_start_allowance_is_on_the_cgroup_around_the_container_and_holds(daemon: DaemonCli) -> None:
    daemon.write(
        f"[bots.hog]\n{CONTAINER}"
        'command = ["sh", "-c", "while :; do :; done"]\n'
        "resources = { cpus = 0.25, start_cpus = 2 }\n"
        'health = { cmd = ["test", "-e", "/tmp/ready"], interval = "1s", retries = 1, '
        'start_period = "60s", on_unhealthy = "none" }\n'
    )
    daemon.cli("up", "--detach")
    daemon.wait_state("hog", "running")
    boost = min(2, CORES) * PERIOD
    assert wait_for(lambda: quota_of(daemon, "hog") == boost, 5, interval=0.05), quota_of(daemon, "hog")
    # not the engine's limit: the container's own cgroup (under clawpen's) has none
    info = _inspect(f"clawpen-{cgroup_scope(daemon.home)}hog-0")
    host_config = info["HostConfig"]
    assert isinstance(host_config, dict)
    assert (host_config["CpuQuota"], host_config["NanoCpus"]) == (0, 0), host_config
    assert daemon.ps()["hog"]["health"] == "starting"
    # during the allowance the one-thread loop is never throttled (it cannot use two cores)
    stat = _cgroup_dir(daemon, "hog", "cpu") / "cpu.stat"
    before_boost = throttled_of(stat)
    during = cores_used(daemon, "hog")
    assert throttled_of(stat) == before_boost, (before_boost, throttled_of(stat), during)
    daemon.cli("exec", "hog", "--", "touch", "/tmp/ready")
    assert wait_for(lambda: quota_of(daemon, "hog") == 25_000, 10, interval=0.05), quota_of(daemon, "hog")
    assert daemon.ps()["hog"]["health"] == "healthy"
    assert wait_for(lambda: [e for e in daemon.events("hog") if e["kind"] == "start-cpus"], 5, interval=0.1)
    [ended] = [e["reason"] for e in daemon.events("hog") if e["kind"] == "start-cpus"]
    assert ended.startswith(f"start_cpus {min(2, CORES):g} ended, cpus 0.25 now: healthy after "), ended
    # after it: held to cpus = 0.25 by the quota on clawpen's cgroup (throttled, never above it)
    nr = throttled_of(stat)
    after = cores_used(daemon, "hog")
    assert 0.05 < after < 0.3, (during, after)
    assert throttled_of(stat) > nr + 5, (nr, throttled_of(stat))
    print(f"cpu-bound container: {during:.2f} cores during the allowance, {after:.2f} after (cpus 0.25)")
    daemon.cli("down")


def throttled_of(stat: Path) -> int:
    """How many periods the cgroup was throttled in (``nr_throttled`` of its cpu.stat)."""
    fields = dict(line.split() for line in stat.read_text().splitlines())
    return int(fields["nr_throttled"])
