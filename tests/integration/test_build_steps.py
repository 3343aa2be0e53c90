"""Build steps under the daemon: run once per release in the bot's sandbox, as its uid, into a
folder the bot then sees read-only; cached by the inputs; a failure changes nothing."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import CLAWPEN, DaemonCli, of_uids, wait_for, with_marker

from conftest import UID_BASE

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

SPEC = """
[bots.app]
command = ["sh", "-c", "cat /opt/bot/out.txt; id -u; touch /opt/bot/x 2>&1 || true; sleep 600"]
filesystem = {{ ro = ["./src:/src"] }}
restart = {{ policy = "always" }}
[bots.app.build]
steps = [
    ["sh", "-c", "echo step one; cat /src/input.txt > /opt/bot/out.txt; id -u > /opt/bot/uid"],
    ["sh", "-c", "echo step two >&2; {second}"],
]
inputs = ["./src/input.txt"]
timeout = "30s"
"""


@pytest.fixture
def bdaemon() -> Iterator[DaemonCli]:
    """A daemon whose state (and so ``<state>-build``) sits in a folder the bot uid can reach."""
    base = Path(tempfile.mkdtemp(prefix="clawpen-b-", dir="/tmp"))
    base.chmod(0o755)
    spec_dir = base / "spec"
    spec_dir.mkdir(mode=0o755)
    (spec_dir / "src").mkdir(mode=0o755)
    d = DaemonCli(base / "state", spec_dir, UID_BASE)
    try:
        yield d
    finally:
        d.shutdown()
        subprocess.run(["rm", "-rf", str(base)], check=False)


def _logs(d: DaemonCli) -> str:
    return d.cli("logs", "app").stdout


def test_build_runs_once_is_read_only_and_cached(bdaemon: DaemonCli) -> None:
    d = bdaemon
    (d.spec.parent / "src" / "input.txt").write_text("version-1\n")
    d.write(SPEC.format(second="ls /opt/bot"))
    up = d.cli("up", timeout=120)
    assert "start app" in up.stdout, up.stdout
    d.wait_state("app", "running")
    uid = json.loads((d.home / "users.json").read_text())["app"]
    assert wait_for(lambda: "version-1" in _logs(d), 10), _logs(d)
    logs = _logs(d)
    assert str(uid) in logs and "Read-only file system" in logs, logs
    build_dir = Path(f"{d.home}-build") / "app"
    builds = [
        p for p in build_dir.iterdir() if p.is_dir() and p.name != "cache" and not p.name.startswith(".")
    ]
    assert len(builds) == 1
    out = builds[0]
    assert (out / "uid").read_text().strip() == str(uid)  # the steps ran as the bot's uid
    assert out.stat().st_uid == uid
    log = (build_dir / f"{out.name}.log").read_text()
    assert "step one" in log and "step two" in log and "$ sh -c" in log
    events = [e["reason"] for e in d.events("app") if e["kind"] == "build"]
    assert any("built in" in r for r in events), events
    # again, unchanged: cached, the bot keeps running
    pid = d.ps()["app"]["pid"]
    assert "nothing changed" in d.cli("up").stdout
    assert d.ps()["app"]["pid"] == pid
    assert any("cached" in e["reason"] for e in d.events("app") if e["kind"] == "build")
    # an input changed: a new build, the bot restarted on it
    (d.spec.parent / "src" / "input.txt").write_text("version-2\n")
    assert "restart" in d.cli("up", timeout=120).stdout
    assert wait_for(lambda: "version-2" in _logs(d), 15), _logs(d)


def test_failed_build_changes_nothing(bdaemon: DaemonCli) -> None:
    d = bdaemon
    (d.spec.parent / "src" / "input.txt").write_text("good\n")
    d.write(SPEC.format(second="true"))
    d.cli("up", timeout=120)
    before = d.wait_state("app", "running")
    releases = d.json("releases")
    (d.spec.parent / "src" / "input.txt").write_text("bad\n")
    d.write(SPEC.format(second="echo about to fail; exit 3"))
    failed = d.cli("up", check=False, timeout=120)
    assert failed.returncode != 0
    assert "build step 2 of app failed" in failed.stderr and "about to fail" in failed.stderr, failed.stderr
    assert "Traceback" not in failed.stderr
    # nothing changed: same process, no new release, no staging folder left
    assert d.ps()["app"]["pid"] == before["pid"] and d.ps()["app"]["state"] == "running"
    assert d.json("releases") == releases
    build_dir = Path(f"{d.home}-build") / "app"
    assert not [p for p in build_dir.iterdir() if p.name.endswith(".tmp")]
    assert any("failed" in e["reason"] for e in d.events("app") if e["kind"] == "build")


def test_build_timeout(bdaemon: DaemonCli) -> None:
    d = bdaemon
    (d.spec.parent / "src" / "input.txt").write_text("x\n")
    d.write(SPEC.format(second="sleep 60").replace('timeout = "30s"', 'timeout = "2s"'))
    failed = d.cli("up", check=False, timeout=60)
    assert failed.returncode != 0 and "timed out" in failed.stderr, failed.stderr
    assert "app" not in d.ps()


WATCHED = """
[bots.app]
command = ["sleep", "600"]
[bots.app.build]
steps = [{steps}]
timeout = "120s"
stall = "10s"
"""


def test_silent_step_is_killed_by_the_stall_detector(bdaemon: DaemonCli) -> None:
    d = bdaemon
    # prints a URL, keeps what it "downloaded" in /build-cache, then goes silent in a process of its
    # own session (npm-like: it would ignore SIGTERM); a re-run finds the download and finishes
    step = (
        '["sh", "-c", "if test -f /build-cache/part; then echo resumed from cache; exit 0; fi; '
        "echo GET https://registry.example.test/pkg-w2; echo data > /build-cache/part; "
        'setsid sleep 617 & trap \\"\\" TERM; wait"]'
    )
    d.write(WATCHED.format(steps=step))
    t0 = time.monotonic()
    failed = d.cli("up", check=False, timeout=90)
    took = time.monotonic() - t0
    assert failed.returncode != 0, failed.stdout
    err = failed.stderr
    assert "build step 1 of app failed" in err and "stalled: no output and no network bytes for 1" in err, err
    assert "last URL: https://registry.example.test/pkg-w2" in err and "Traceback" not in err, err
    assert took < 60, took  # well under the 120 s timeout
    # the whole group is gone, the setsid'd sleep too; nothing was applied
    assert not with_marker("617", comm="sleep")
    uid = json.loads((d.home / "users.json").read_text())["app"]
    assert not of_uids([uid])
    assert "app" not in d.ps()
    reasons = [e["reason"] for e in d.events("app") if e["kind"] == "build"]
    assert any("step 1/1 started: sh -c" in r for r in reasons), reasons
    assert any("step 1/1 failed after" in r and "stalled" in r for r in reasons), reasons
    # the same steps again: the persistent /build-cache kept the partial download
    again = d.cli("up", timeout=60)
    assert "resumed from cache" in again.stderr and "start app" in again.stdout, again.stderr


def _up_streaming(d: DaemonCli) -> tuple[int, list[tuple[float, str]]]:
    """``clawpen up`` with its stderr read as it comes: (exit code, [(seconds since start, line)])."""
    t0 = time.monotonic()
    lines = []
    with subprocess.Popen(
        [CLAWPEN, "up"],
        cwd=d.spec.parent,
        env=d.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append((time.monotonic() - t0, line.rstrip("\n")))
        return proc.wait(120), lines


def test_steady_steps_are_not_killed_and_progress_arrives_while_they_run(bdaemon: DaemonCli) -> None:
    d = bdaemon
    steps = (
        '["sh", "-c", "for i in 1 2 3 4 5; do echo tick $i; sleep 3; done"], '  # every 3 s for 15 s
        '["sh", "-c", "for i in 1 2 3 4; do echo err $i >&2; sleep 3; done"]'  # stderr only, 12 s
    )
    d.write(WATCHED.format(steps=steps))
    code, lines = _up_streaming(d)
    text = "\n".join(line for _, line in lines)
    assert code == 0, text
    assert "stalled" not in text
    d.wait_state("app", "running")
    done = next(t for t, line in lines if "build app: done in" in line)
    ticks = [(t, line) for t, line in lines if "build app: step 2/2 sh -c: " in line and " s, " in line]
    assert ticks, text
    # a progress item of the 12 s step came while it ran (seconds before the build ended), plain lines
    assert done - ticks[0][0] > 2, lines
    assert not any("\r" in line for _, line in ticks) and "lines" in ticks[0][1] and "| err" in ticks[0][1], (
        ticks
    )
    reasons = [e["reason"] for e in d.events("app") if e["kind"] == "build"]
    assert sum(": step " in r and "started" in r for r in reasons) == 2, reasons
    assert sum(": step " in r and "done in" in r for r in reasons) == 2, reasons
