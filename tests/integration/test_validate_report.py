"""`clawpen validate` on a deployed bot: functional checks, the failure scenarios for real (the
sandbox is SIGKILLed and must come back; the bot is frozen and its health check must get it
restarted), the baseline, the saved report; and a failing bot fails validation."""

from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import threading
import time
import urllib.request

import pytest
from helpers import CLAWPEN, DaemonCli, Proc, alive, of_uids, wait_for

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

SPEC = """
[bots.web]
command = ["python3", "-m", "http.server", "8000", "--bind", "127.0.0.1", "--directory", "/tmp"]
resources = { memory = "96M", pids = 32 }
health = { http = "http://127.0.0.1:8000/", interval = "1s", timeout = "1s", retries = 2 }
restart = { policy = "always", backoff_initial = "0.2s", stop_grace = "1s" }
"""


def test_validate_live_passes_with_failure_scenarios(daemon: DaemonCli) -> None:
    """`--live`: the scenarios kill and freeze the live bot itself (today's behaviour)."""
    daemon.write(SPEC)
    daemon.cli("up")
    first = daemon.wait_state("web", "running")
    assert wait_for(lambda: daemon.json("status", "web")["instances"][0]["health"] == "healthy", 15)
    proc = daemon.cli("validate", "web", "--live", "--json", check=False, timeout=120)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["ok"], json.dumps(report, indent=2)
    checks = {c["name"]: c for c in report["bots"]["web"]}
    assert set(checks) >= {
        "running",
        "healthy",
        "kill -> restart",
        "start latency",
        "failing health -> restart",
        "resource headroom",
    }
    assert checks["kill -> restart"]["seconds"] < 30
    assert checks["start latency"]["measure"] == "time to healthy", checks["start latency"]
    assert "time to healthy" in checks["start latency"]["detail"]
    assert "on the live bot" in checks["kill -> restart"]["detail"]
    assert 0 < checks["resource headroom"]["memory_bytes"] < 96 << 20
    assert "samples" in checks["resource headroom"]["detail"]
    # the scenarios really happened: two new starts, one of them for an unhealthy bot
    status = daemon.json("status", "web")["instances"][0]
    assert status["pid"] != first["pid"] and status["restarts"] >= 2, status
    reasons = " ".join(e["reason"] for e in daemon.events("web"))
    assert "killed by signal 9" in reasons and "health check failed" in reasons, reasons
    saved = daemon.home / "validate" / f"{report['release']}.json"
    assert json.loads(saved.read_text())["ok"] is True
    assert saved.stat().st_mode & 0o777 == 0o600
    assert report["compatibility"][0]["ok"]


def test_validate_fails_for_an_unhealthy_bot(daemon: DaemonCli) -> None:
    daemon.write(SPEC.replace("http://127.0.0.1:8000/", "http://127.0.0.1:8001/").replace("always", "no"))
    daemon.cli("up", "--detach")  # the bot never becomes healthy: a waiting `up` would fail
    daemon.wait_state("web", "running")
    proc = daemon.cli("validate", "web", "--quick", check=False, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL" in proc.stdout and "validation FAILED" in proc.stdout, proc.stdout
    bad = daemon.cli("validate", "ghost", check=False)
    assert bad.returncode == 2 and "no bot named 'ghost'" in bad.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cgroups_named(part: str) -> list[str]:
    found = []
    for root, dirs, _files in os.walk("/sys/fs/cgroup"):
        found += [os.path.join(root, d) for d in dirs if part in d]
    return found


def test_validate_runs_the_scenarios_on_a_throwaway_copy(daemon: DaemonCli) -> None:
    """By default the live bot keeps serving: same pid, it answers throughout; a copy was killed
    and frozen instead, and is gone afterwards (no process, no cgroup, no temporary workspace)."""
    port = _free_port()
    data = daemon.spec.parent / "data"
    data.mkdir()
    (data / "index.html").write_text("live workspace\n")
    daemon.write(
        SPEC.replace('--directory", "/tmp"', '--directory", "/workspace"')
        + 'workspace = "./data"\nworkspace_adopt = true\n'
        + f'network = {{ publish = ["127.0.0.1:{port}:8000"] }}\n'
    )
    daemon.cli("up")
    first = daemon.wait_state("web", "running")
    assert wait_for(lambda: daemon.json("status", "web")["instances"][0]["health"] == "healthy", 15)
    temps_before = set(glob.glob("/var/tmp/clawpen-validate-web-*"))
    answers: list[bool] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=2) as r:
                    answers.append(r.read() == b"live workspace\n")
            except OSError:
                answers.append(False)
            time.sleep(0.1)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        proc = daemon.cli("validate", "web", "--json", check=False, timeout=120)
    finally:
        done.set()
        poller.join()
    assert proc.stdout, proc.stderr
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["ok"], json.dumps(report, indent=2)
    checks = {c["name"]: c for c in report["bots"]["web"]}
    for name in ("kill -> restart", "failing health -> restart", "start latency"):
        assert checks[name]["ok"] and "throwaway copy web_validate" in checks[name]["detail"], checks[name]
    assert f"workspace copied from {data.resolve()}" in checks["kill -> restart"]["detail"]
    assert checks["start latency"]["measure"] == "time to healthy"
    # the live bot: never restarted, answered every poll during validate
    after = daemon.ps()["web"]
    assert after["pid"] == first["pid"] and after["restarts"] == 0, after
    assert first["started_at"] and after["started_at"] == first["started_at"], (first, after)
    assert len(answers) > 20 and all(answers), f"{answers.count(False)} of {len(answers)} polls failed"
    # the copy really ran the scenarios, and is gone
    copy_events = daemon.events("web_validate")
    reasons = " ".join(e["reason"] for e in copy_events)
    assert "killed by signal 9" in reasons and "health check failed" in reasons, reasons
    assert "removed the throwaway validate copy" in reasons
    uid = json.loads((daemon.home / "users.json").read_text())["web_validate"]
    assert uid != json.loads((daemon.home / "users.json").read_text())["web"]
    assert _live(uid) == []
    assert _cgroups_named("web_validate") == []
    assert set(glob.glob("/var/tmp/clawpen-validate-web-*")) == temps_before
    assert not list((daemon.home / "validate" / "copies").glob("*.json"))
    assert "web_validate" not in daemon.ps()
    assert (data / "index.html").read_text() == "live workspace\n"  # the copy wrote to its own


def _live(uid: int) -> list[Proc]:
    """The processes of ``uid`` that still run (a zombie waiting for its reaper does not)."""
    return [p for p in of_uids([uid]) if not p.zombie]


def test_a_daemon_start_removes_a_leftover_copy(daemon: DaemonCli) -> None:
    """An interrupted validate (the CLI killed) leaves its copy running; the next daemon removes it."""
    (daemon.spec.parent / "data").mkdir()
    daemon.write(SPEC + 'workspace = "./data"\n')
    temps_before = set(glob.glob("/var/tmp/clawpen-validate-web-*"))
    daemon.cli("up")
    daemon.wait_state("web", "running")
    proc = subprocess.Popen([CLAWPEN, "validate", "web"], env=daemon.env, cwd=daemon.spec.parent)
    users = daemon.home / "users.json"
    assert wait_for(lambda: users.exists() and "web_validate" in json.loads(users.read_text()), 20)
    uid = json.loads(users.read_text())["web_validate"]
    assert wait_for(lambda: _live(uid) != [], 20)
    proc.kill()  # no finally runs: the copy stays
    proc.wait()
    old = daemon.pid()
    assert old is not None
    os.kill(old, 9)  # a killed daemon leaves its bots (and the copy) running
    assert wait_for(lambda: not alive(old), 10)  # gone, or a zombie of a subreaper
    assert _live(uid) != []
    assert set(glob.glob("/var/tmp/clawpen-validate-web-*")) != temps_before  # the copy's workspace
    daemon.cli("ps")  # starts the daemon again
    assert wait_for(lambda: not list((daemon.home / "validate" / "copies").glob("*.json")), 20)
    assert wait_for(lambda: _live(uid) == [], 20), [e["reason"] for e in daemon.events("web_validate")]
    assert _cgroups_named("web_validate") == []
    assert set(glob.glob("/var/tmp/clawpen-validate-web-*")) == temps_before
    assert "removed a validate copy left by an interrupted validate" in " ".join(
        e["reason"] for e in daemon.events("web_validate")
    )
