"""`clawpen validate` on a deployed bot: functional checks, the failure scenarios for real (the
sandbox is SIGKILLed and must come back; the bot is frozen and its health check must get it
restarted), the baseline, the saved report; and a failing bot fails validation."""

from __future__ import annotations

import json

import pytest
from helpers import DaemonCli, wait_for

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

SPEC = """
[bots.web]
command = ["python3", "-m", "http.server", "8000", "--bind", "127.0.0.1", "--directory", "/tmp"]
resources = { memory = "96M", pids = 32 }
health = { http = "http://127.0.0.1:8000/", interval = "1s", timeout = "1s", retries = 2 }
restart = { policy = "always", backoff_initial = "0.2s", stop_grace = "1s" }
"""


def test_validate_passes_with_failure_scenarios(daemon: DaemonCli) -> None:
    daemon.write(SPEC)
    daemon.cli("up")
    first = daemon.wait_state("web", "running")
    assert wait_for(lambda: daemon.json("status", "web")["instances"][0]["health"] == "healthy", 15)
    proc = daemon.cli("validate", "web", "--json", check=False, timeout=120)
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
    assert 0 < checks["resource headroom"]["memory_bytes"] < 96 << 20
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
