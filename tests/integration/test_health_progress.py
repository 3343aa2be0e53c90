"""Health checks from the start, `ps` health and memory, `up`'s way to ready (issue 21, items 3, 6).

The first check comes right after the bot starts and is retried quickly until one passes, so a
bot that answers 1 s after its start is healthy within seconds even with ``interval = "30s"``
(checks every interval from the start, as before, would take 30 s); in the start period a
failure leaves it ``starting`` and after it failures count; `ps` reads each bot's cgroup for
memory; `up` names each state on the way (starting, running, health starting with the last
check's result, healthy).
"""

from __future__ import annotations

import json
import time

import pytest
from helpers import DaemonCli, wait_for

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

Daemon = DaemonCli

LATE_WEB = """
    [bots.u4web]
    command = ["python3", "-c", "import time, http.server as h; time.sleep(1); h.test(HandlerClass=h.SimpleHTTPRequestHandler, port=8000, bind='127.0.0.1')"]
    health = {{ http = "http://127.0.0.1:8000/", interval = "30s", timeout = "1s"{extra} }}
"""  # noqa: E501


def test_a_bot_ready_after_1s_is_healthy_within_seconds_and_up_shows_the_way(daemon: Daemon) -> None:
    daemon.write(LATE_WEB.format(extra=""))
    start = time.monotonic()
    done = daemon.cli("up")
    took = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    row = daemon.ps()["u4web"]
    assert (row["state"], row["health"], row["health_detail"]) == ("running", "healthy", "HTTP 200"), row
    # the old schedule (first check after a full interval) would have made `up` wait 30 s
    assert took < 8, (took, done.stderr)
    err = done.stderr
    # the way to ready, one plain line per change (stderr is not a terminal)
    assert "u4web: running, health starting (last check: connection refused, " in err, err
    assert "u4web: running, healthy" in err, err
    assert err.index("health starting") < err.index("u4web: running, healthy"), err
    assert "\x1b[" not in err  # no cursor movement on a pipe


def test_in_the_start_period_a_failing_check_leaves_it_starting_and_after_it_counts(daemon: Daemon) -> None:
    daemon.write("""
        [bots.u4deaf]
        command = ["sleep", "300"]
        health = { tcp = "127.0.0.1:9", interval = "1s", timeout = "1s", retries = 1, start_period = "3s", on_unhealthy = "none" }
    """)  # noqa: E501
    daemon.cli("up", "--detach")
    started = time.monotonic()
    seen = []
    while time.monotonic() - started < 2.0:  # well inside the start period
        row = daemon.ps()["u4deaf"]
        seen.append((row["health"], row.get("health_detail")))
        time.sleep(0.2)
    assert {h for h, _ in seen} == {"starting"}, seen  # never None, never unhealthy yet
    assert ("starting", "connection refused") in seen, seen  # it was checked, and failed
    # after the period the failure counts (retries = 1): unhealthy
    assert wait_for(lambda: daemon.ps()["u4deaf"]["health"] == "unhealthy", 6, interval=0.2), daemon.ps()
    assert time.monotonic() - started >= 2.5
    assert daemon.ps()["u4deaf"]["state"] == "unhealthy"


def test_ps_shows_health_and_memory_from_the_cgroup(daemon: Daemon) -> None:
    daemon.write("""
        [bots.u4mem]
        command = ["python3", "-c", "import time; b = bytearray(24 << 20); b[::4096] = b'x' * len(b[::4096]); time.sleep(300)"]
        resources = { memory = "64M" }
        [bots.u4plain]
        command = ["sleep", "300"]
        health = { cmd = ["true"], interval = "30s" }
    """)  # noqa: E501
    daemon.cli("up")
    assert wait_for(lambda: (daemon.ps()["u4mem"].get("memory_bytes") or 0) > 20 << 20, 10, interval=0.2)
    rows = daemon.ps()
    mem = rows["u4mem"]
    assert 20 << 20 < mem["memory_bytes"] < 64 << 20 and mem["memory_limit"] == 64 << 20, mem
    assert mem["health"] is None and rows["u4plain"]["health"] == "healthy", rows
    assert 0 < rows["u4plain"]["memory_bytes"] < rows["u4plain"]["memory_limit"]
    lines = daemon.cli("ps").stdout.splitlines()
    head = lines[0].split()
    assert head[:4] == ["BOT", "STATE", "HEALTH", "MEM"], lines
    cells = {line.split()[0]: line.split() for line in lines[1:]}
    assert cells["u4mem"][2] == "-" and cells["u4mem"][3].endswith("M/64M"), lines
    assert 20 <= int(cells["u4mem"][3].split("M/")[0]) < 64, lines
    assert cells["u4plain"][2] == "healthy", lines
    # a stopped bot: no health, no memory
    daemon.cli("stop", "u4plain")
    daemon.wait_state("u4plain", "stopped")
    stopped = [line.split() for line in daemon.cli("ps").stdout.splitlines() if line.startswith("u4plain")]
    assert stopped[0][1:4] == ["stopped", "-", "-"], stopped
    assert json.loads(daemon.cli("ps", "--json").stdout)[1]["memory_bytes"] is None
