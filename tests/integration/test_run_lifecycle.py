"""What `clawpen run` leaves behind (nothing) and how it refuses what it cannot do (clearly,
before touching anything)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import CLAWPEN, Clawpen, of_uids, wait_for

pytestmark = [pytest.mark.root, pytest.mark.bwrap]


def cgroup_dirs(name_glob: str) -> list[Path]:
    root = Path("/sys/fs/cgroup")  # cgroup v2: clawpen/NAME at the root; v1: one per hierarchy
    return [*root.glob(f"clawpen/{name_glob}"), *root.glob(f"*/clawpen/{name_glob}")]


def test_no_zombie_and_no_cgroup_after_a_run(clawpen: Clawpen, pub: Path) -> None:
    uid = clawpen.uid("life")
    result = clawpen.run("--name", "life", "--", "sh", "-c", "sleep 0.1 & exit 0")
    assert result.rc == 0, result.err
    left = of_uids([uid])
    assert not left, f"left in the process table: {left}"
    # positive control: while a run is going on, its cgroup exists (and the bot runs: stopped
    # before that, clawpen would be SIGKILLed and its cgroup removed by the helper instead)
    proc = clawpen.popen("--name", "life", "--", "sleep", "30")
    assert wait_for(lambda: cgroup_dirs(f"life-{proc.pid}") and of_uids([uid]), 30)
    clawpen.stop(proc)
    assert not cgroup_dirs(f"life-{proc.pid}")


def test_sigkilled_clawpen_takes_its_bot_along_and_the_next_run_sweeps_up(clawpen: Clawpen) -> None:
    uid = clawpen.uid("orphan")
    proc = clawpen.popen("--name", "orphan", "--", "sleep", "300")
    # 60 s: generous for `clawpen run` starting under an emulated CPU (the cgroup v2 guest in CI)
    assert wait_for(lambda: [p for p in of_uids([uid]) if p.comm == "sleep"], 60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # bubblewrap's --die-with-parent ends the sandbox with its parent
    assert wait_for(lambda: not [p for p in of_uids([uid]) if not p.zombie], 10)
    stale = cgroup_dirs(f"orphan-{proc.pid}")
    assert stale, "the killed run should have left its (empty) cgroup"
    assert clawpen.run("--name", "orphan", "--", "true").rc == 0
    assert not cgroup_dirs(f"orphan-{proc.pid}")


def test_unreachable_workspace_is_refused_before_anything_is_made(clawpen: Clawpen, pub: Path) -> None:
    closed = pub / "closed"
    closed.mkdir(mode=0o700)
    result = clawpen.run("--workspace", str(closed / "ws"), "--", "true")
    assert result.rc == 125
    assert f"cannot reach {closed / 'ws'}" in result.err and "chmod o+x" in result.err
    assert not (closed / "ws").exists()
    # positive control: once the folder lets others through, the same run works
    closed.chmod(0o711)
    assert clawpen.run("--workspace", str(closed / "ws"), "--", "true").rc == 0
    assert (closed / "ws").stat().st_uid == clawpen.uid()


def test_bad_uid_base_is_refused(clawpen: Clawpen) -> None:
    env = {**clawpen.env, "CLAWPEN_UID_BASE": str(2**31)}
    result = subprocess.run(
        [CLAWPEN, "run", "--", "true"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 1
    assert "CLAWPEN_UID_BASE" in result.stderr and "hint:" in result.stderr


def test_a_sigint_while_the_sandbox_is_being_built_never_leaves_the_bot_running(clawpen: Clawpen) -> None:
    """SIGINT as soon as the bot's first process exists (clawpen may still be finishing the
    set-up), and at moments before: clawpen always ends, and no process of the bot's uid is left
    (a signal during the set-up cancels the run; one right after it is forwarded, and a bot that
    never got it is killed after the grace period)."""
    uid = clawpen.uid("early")
    for delay in (None, None, None, None, None, 0.15, 0.3):
        proc = clawpen.popen("--name", "early", "--", "sh", "-c", "echo ready; exec sleep 30")
        if delay is None:  # the moment the sandbox's first process of the bot's uid shows
            assert wait_for(lambda: of_uids([uid]), 10, interval=0.0005)
        else:
            time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=40)  # the kill grace (10 s) on a loaded host, at most
        except subprocess.TimeoutExpired:
            clawpen.stop(proc)
            raise AssertionError(f"clawpen run did not end after a SIGINT ({delay})") from None
        assert wait_for(lambda: not [p for p in of_uids([uid]) if not p.zombie], 10), delay


def test_sigint_reaches_the_bot_at_once(clawpen: Clawpen) -> None:
    proc = clawpen.popen(
        "--", "sh", "-c", 'trap "echo got-int; exit 5" INT; echo ready; while :; do sleep 0.05; done'
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 5 and "got-int" in out
    assert time.monotonic() - start < 2
