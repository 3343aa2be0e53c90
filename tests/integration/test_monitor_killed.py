"""`kill -9` of the pid `clawpen ps` shows (the sandbox's monitor, bubblewrap) while the bot lives
on in its sandbox: the daemon restarts the bot and keeps answering every command.

Regression: the bot's log pipes did not reach EOF (the bot still held them), the 2 s wait for
EOF timed out and cancelled the EOF futures, and the pipes were closed without leaving the
event loop's selector; the next client connection got one of their numbers and was never read
(every command then waited 30 s for its answer)."""

from __future__ import annotations

import os
import signal
import time

import pytest
from helpers import DaemonCli, wait_for

pytestmark = [pytest.mark.root, pytest.mark.bwrap]


def test_killing_the_monitor_restarts_the_bot_and_the_daemon_keeps_answering(daemon: DaemonCli) -> None:
    daemon.write('[bots.pen]\ncommand = ["sh", "-c", "while :; do sleep 0.05; done"]\n')
    daemon.cli("up")
    first = daemon.wait_state("pen", "running", timeout=30)
    daemon.env["CLAWPEN_TIMEOUT"] = "5"  # an unanswered command fails in 5 s, not 30
    os.kill(int(first["pid"]), signal.SIGKILL)
    killed = time.monotonic()
    assert wait_for(lambda: daemon.ps()["pen"]["pid"] not in (None, first["pid"]), 20)
    assert daemon.ps()["pen"]["state"] == "running"
    for _ in range(20):  # every command answers (within CLAWPEN_TIMEOUT), after the old pipes closed
        daemon.ps()
    assert time.monotonic() - killed < 30
    assert daemon.ps()["pen"]["restarts"] == 1
