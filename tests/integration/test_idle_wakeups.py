"""An idle daemon sleeps (issue 22): with three ``sleep infinity`` bots, no health checks and
``[monitoring] enabled = false``, the daemon's threads are woken at most :data:`ALLOWANCE` times
in :data:`WINDOW` seconds (counted as context switches of every thread, which is deterministic,
not as CPU time). The same daemon with monitoring every second is the positive control: the
count must then see the wake-ups.

The allowance, from the daemon's remaining timers (docs/benchmarks.md lists them): the log-space
watch looks at the state dir's free space every 30 s (at most one look in a window), and a
journalctl following the host's logins writes when sshd/sudo log something (a host's own
activity: one more)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers import DaemonCli

pytestmark = [pytest.mark.root, pytest.mark.bwrap, pytest.mark.slow]

WINDOW = 10.0
SETTLE = 7.0  # the start's last timers: the store's first reserve check (5 s), the first log-space look
ALLOWANCE = 4

BOTS = "".join(f'[bots.idle{i}]\ncommand = ["sleep", "infinity"]\n\n' for i in range(3))


def switches(pid: int) -> int:
    """Voluntary and involuntary context switches of every thread of ``pid`` so far."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue  # a thread that ended meanwhile
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


def woken(pid: int, window: float) -> int:
    before = switches(pid)
    time.sleep(window)
    return switches(pid) - before


def test_an_idle_daemon_is_not_woken_and_monitoring_is_seen(daemon: DaemonCli) -> None:
    d = daemon
    d.env["CLAWPEN_API_LISTEN"] = "127.0.0.1:0"  # the API listens (lazily), on a port of its own
    d.write(BOTS + "[monitoring]\nenabled = false\n")
    d.cli("up")
    for i in range(3):
        d.wait_state(f"idle{i}", "running")
    pid = d.pid()
    assert pid is not None
    time.sleep(SETTLE)
    idle = woken(pid, WINDOW)
    assert idle <= ALLOWANCE, f"the idle daemon was woken {idle} times in {WINDOW:g} s"

    # positive control: a collection pass every second wakes it at least once a second
    d.write(BOTS + '[monitoring]\nenabled = true\ninterval = "1s"\nprometheus_listen = "off"\n')
    d.cli("up")
    time.sleep(2.0)
    busy = woken(pid, WINDOW)
    assert busy >= WINDOW, f"monitoring every second woke the daemon only {busy} times"
    assert d.ps()["idle0"]["state"] == "running"
    print(f"context switches in {WINDOW:g} s: idle {idle}, monitoring every second {busy}")
