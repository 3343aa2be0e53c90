"""Build steps under the daemon: run once per release in the bot's sandbox, as its uid, into a
folder the bot then sees read-only; cached by the inputs; a failure changes nothing."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import DaemonCli, wait_for

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
