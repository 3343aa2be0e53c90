"""``[deploy] auto_rollback`` against a real daemon (issue 15, item 2): an `up` whose changed bot
does not come up (its health check fails, or it exits at once) within ``health_window`` is rolled
back by the daemon itself (the old process's argv runs again, a new release says where it came
from, an ``auto-rollback`` event names the bot and the release); a good change is kept; with
``auto_rollback`` off nothing is rolled back; with ``--detach`` a daemon task watches the window."""

from __future__ import annotations

import json
import random
import time

import pytest
from helpers import DaemonCli, Sink, wait_for, with_marker

pytestmark = [pytest.mark.root, pytest.mark.bwrap]


def spec(secs: int, extra: str = "", *, auto: bool = True) -> str:
    deploy = f'[deploy]\nauto_rollback = {"true" if auto else "false"}\nhealth_window = "5s"\n'
    return f'{deploy}[bots.ar1]\ncommand = ["sleep", "{secs}"]\n{extra}'


def argvs() -> tuple[int, int, int]:
    base = random.randrange(400_000, 900_000) * 10  # argv nobody else runs
    return base + 1, base + 2, base + 3


def sleeping(secs: int) -> bool:
    return any(p.argv == ["sleep", str(secs)] for p in with_marker(str(secs), comm="sleep"))


def auto_events(daemon: DaemonCli) -> list[dict]:
    out = daemon.cli("events", "--json").stdout
    return [e for e in map(json.loads, out.splitlines()) if e.get("kind") == "auto-rollback"]


UNHEALTHY = (
    'health = { cmd = ["false"], interval = "0.2s", timeout = "1s", retries = 1, on_unhealthy = "none" }\n'
)
EXITS = 'restart = { policy = "no" }\n'


def test_a_failing_health_check_is_rolled_back_within_the_window(daemon: DaemonCli) -> None:
    old, new, _ = argvs()
    daemon.write(spec(old))
    daemon.cli("up")
    assert wait_for(lambda: sleeping(old), 10)
    # the new version runs but never passes its health check
    daemon.write(spec(new, UNHEALTHY))
    start = time.monotonic()
    done = daemon.cli("up", check=False)
    took = time.monotonic() - start
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "release 2: restart (changed) ar1" in done.stdout
    assert "rolled back: release 3 goes back to release 1 (ar1 not up)" in done.stderr, done.stderr
    assert 5 <= took < 20, took  # the window (5 s), not the default wait timeout (60 s)
    assert wait_for(lambda: sleeping(old) and not sleeping(new), 10), (sleeping(old), sleeping(new))
    assert daemon.ps()["ar1"]["state"] == "running"
    latest = daemon.json("releases")
    assert [(r["id"], r["rollback_of"]) for r in latest] == [(3, 1), (2, None), (1, None)]
    assert latest[0]["who"] == "auto-rollback" and latest[0]["summary"].startswith("rollback of release 1")
    [event] = auto_events(daemon)
    assert "release 2: ar1 not up" in event["reason"] and "rolled back to release 1" in event["reason"]
    assert "(as release 3)" in event["reason"]
    # the rollback is not rolled back itself, and a plain rollback of the broken release still works
    back = daemon.json("diff", "1", "3")
    assert back["spec_diff"] == ""


def test_detached_up_is_watched_by_the_daemon(daemon: DaemonCli) -> None:
    old, new, _ = argvs()
    daemon.write(spec(old))
    daemon.cli("up")
    daemon.write(spec(new, EXITS).replace(f'"sleep", "{new}"', '"false"'))  # exits 1 at once
    done = daemon.cli("up", "-d")
    assert done.returncode == 0 and "release 2" in done.stdout  # returns at once
    assert wait_for(lambda: auto_events(daemon), 15), daemon.cli("events", "--json").stdout
    assert wait_for(lambda: sleeping(old), 10)
    releases = daemon.json("releases")
    assert [(r["id"], r["rollback_of"]) for r in releases][:2] == [(3, 1), (2, None)]
    [event] = auto_events(daemon)
    assert "release 2: ar1 not up" in event["reason"] and "rolled back to release 1" in event["reason"]


def test_a_good_change_is_kept_and_off_means_no_rollback(daemon: DaemonCli) -> None:
    old, new, third = argvs()
    daemon.write(spec(old))
    daemon.cli("up")
    # positive control: a good change with auto_rollback on is kept
    daemon.write(spec(new))
    done = daemon.cli("up")
    assert done.returncode == 0 and "rolled back" not in done.stderr
    assert wait_for(lambda: sleeping(new) and not sleeping(old), 10)
    # auto_rollback off: a bot that exits at once stays as it is (exit 1, no rollback)
    daemon.write(spec(third, EXITS, auto=False).replace(f'"sleep", "{third}"', '"false"'))
    done = daemon.cli("up", check=False)
    assert done.returncode == 1 and "error: bot ar1 is not up" in done.stderr, done.stderr
    assert "rolled back" not in done.stderr
    assert wait_for(lambda: not sleeping(new) and daemon.ps()["ar1"]["state"] == "stopped", 10)
    assert [r["rollback_of"] for r in daemon.json("releases")] == [None, None, None]
    assert auto_events(daemon) == []


def test_an_automatic_rollback_is_notified(daemon: DaemonCli, sink: Sink) -> None:
    """The `auto-rollback` event reaches every notifier (a webhook on loopback here)."""
    old, new, _ = argvs()
    monitoring = (
        '[monitoring]\ninterval = "1s"\nprometheus_listen = "off"\n'
        f'[monitoring.builtin]\nhost_defaults = false\n[monitoring.notify]\nurls = ["{sink.url}"]\n'
    )
    daemon.write(spec(old) + monitoring)
    daemon.cli("up")
    assert wait_for(lambda: sleeping(old), 10)
    assert not [t for t in sink.titles() if t.startswith("[ROLLBACK]")]  # positive control: none yet
    daemon.write(spec(new, UNHEALTHY) + monitoring)
    assert daemon.cli("up", check=False).returncode == 1
    assert wait_for(lambda: any(t.startswith("[ROLLBACK]") for t in sink.titles()), 15, 0.2), sink.titles()
    [title] = [t for t in sink.titles() if t.startswith("[ROLLBACK]")]
    assert "release 2: ar1 not up" in title and "rolled back to release 1" in title
