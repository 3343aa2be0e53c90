"""A daemon holding more than 1,024 descriptors still supervises: select() cannot watch a
descriptor numbered 1,024 or above (it raised, a supervisor task died, the bot showed
``running`` with a dead pid), so clawpen waits with poll/epoll everywhere.

The daemon is started through a small wrapper that raises its RLIMIT_NOFILE, opens 1,100
inheritable descriptors on /dev/null and execs ``clawpen daemon``: every descriptor the daemon
opens afterwards (pidfds, pipes, log files) is numbered above 1,100. No test hook in clawpen.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import CLAWPEN, DaemonCli, alive, wait_for

pytestmark = [pytest.mark.root, pytest.mark.bwrap, pytest.mark.slow]

EXTRA_FDS = 1100
WRAPPER = r"""
import os, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
for _ in range(int(sys.argv[2])):
    os.set_inheritable(os.open("/dev/null", os.O_RDONLY), True)
os.execv(sys.argv[1], [sys.argv[1], "daemon"])
"""


@pytest.fixture
def crowded(daemon: DaemonCli) -> Iterator[tuple[DaemonCli, subprocess.Popen[bytes]]]:
    daemon.home.mkdir(parents=True, exist_ok=True)
    with open(daemon.home.parent / "daemon.err", "ab") as err:
        proc = subprocess.Popen(
            ["/usr/bin/python3", "-c", WRAPPER, CLAWPEN, str(EXTRA_FDS)],
            env=daemon.env,
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            start_new_session=True,
        )
    sock = daemon.home / "clawpen.sock"
    try:
        assert wait_for(lambda: sock.exists() or proc.poll() is not None, 20, interval=0.05)
        assert proc.poll() is None, (daemon.home.parent / "daemon.err").read_text()
        yield daemon, proc
    finally:
        daemon.shutdown()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _fds(pid: int) -> list[int]:
    return [int(n) for n in os.listdir(f"/proc/{pid}/fd")]


def test_a_daemon_with_1100_descriptors_supervises_restarts_and_stops(
    crowded: tuple[DaemonCli, subprocess.Popen[bytes]],
) -> None:
    daemon, proc = crowded
    assert daemon.pid() == proc.pid  # the wrapper exec'd the daemon itself
    held = _fds(proc.pid)
    assert len(held) > EXTRA_FDS and max(held) > 1024, (len(held), max(held))
    daemon.write("""
        [bots.steady]
        command = ["sh", "-c", "trap 'exit 0' TERM; touch /tmp/ready; while :; do sleep 0.1; done"]
        health = { cmd = ["test", "-f", "/tmp/ready"], interval = "0.3s", timeout = "2s" }
        [bots.crasher]
        command = ["sh", "-c", "echo up; sleep 0.3; exit 3"]
        restart = { policy = "always", backoff_initial = "0.1s", backoff_max = "0.2s", max_restarts = 50 }
    """)
    daemon.cli("up", "--detach")
    steady = daemon.wait_state("steady", "running")["pid"]
    # the crasher exits and is started again, more than once: its supervisor task lives on
    assert wait_for(lambda: daemon.ps()["crasher"]["restarts"] >= 2, 15, interval=0.1), daemon.ps()

    # (a restart is counted when it is decided, its `starting` event comes after the backoff)
    def starts() -> list[dict]:
        return [e for e in daemon.events("crasher") if e.get("to_state") == "starting"]

    assert wait_for(lambda: len(starts()) >= 3, 10, interval=0.1), starts()
    row = daemon.ps()["crasher"]
    assert row["state"] in ("running", "starting", "exited", "backoff"), row
    assert "supervisor error" not in daemon.cli("events", "crasher").stdout
    # a cmd health check enters the sandbox and reads the helper's report over a pipe
    assert wait_for(lambda: daemon.ps()["steady"].get("health") == "healthy", 10, interval=0.1)
    # the daemon's own new descriptors (pidfds, pipes) were numbered above 1,024 meanwhile
    assert max(_fds(proc.pid)) > EXTRA_FDS
    # stop works, and the bot's process is really gone
    daemon.cli("stop", "steady")
    assert daemon.ps()["steady"]["state"] == "stopped"
    assert wait_for(lambda: not alive(steady), 5)
    daemon.cli("down")
    assert daemon.ps() == {}
    assert Path(f"/proc/{proc.pid}").exists()  # the daemon itself kept running throughout
