"""Roles through the daemon: an operator may restart but not change the spec or the secrets;
a viewer may only look; every operator and admin action lands in the audit log."""

from __future__ import annotations

import json
import subprocess

import pytest
from helpers import DaemonCli

pytestmark = [pytest.mark.root, pytest.mark.bwrap]


def as_token(
    daemon: DaemonCli, token: str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return daemon.cli(*args, check=False, token=token, stdin=stdin)


def test_operator_restarts_but_may_not_change_spec_or_secrets(daemon: DaemonCli) -> None:
    daemon.write("""
        [bots.a]
        command = ["sleep", "300"]
    """)
    daemon.cli("up")
    first = daemon.wait_state("a", "running")["pid"]
    operator = daemon.cli("token", "create", "--role", "operator", "--name", "oncall").stdout.strip()
    viewer = daemon.cli("token", "create", "--role", "viewer").stdout.strip()

    assert as_token(daemon, operator, "restart", "a").returncode == 0
    assert daemon.wait_state("a", "running")["pid"] != first
    refused = as_token(daemon, operator, "up")
    assert (
        refused.returncode == 1
        and "operator token may not up" in refused.stderr
        and "admin" in refused.stderr
    )
    secret = as_token(daemon, operator, "secrets", "set", "API_KEY", stdin="value\n")
    assert secret.returncode == 1 and "may not secrets set" in secret.stderr
    assert "API_KEY" not in daemon.cli("secrets", "ls").stdout

    assert as_token(daemon, viewer, "ps").returncode == 0
    assert as_token(daemon, viewer, "stop", "a").returncode == 1
    pid = daemon.pid()
    assert as_token(daemon, "cpt_00000000_forged", "ps").returncode == 1
    assert daemon.pid() == pid, "a refused token must not make the CLI start a second daemon"

    records = [json.loads(line) for line in daemon.cli("audit-log", "--json").stdout.splitlines()]
    actions = [(r["who"], r["action"]) for r in records]
    assert ("root", "up") in actions and any(w.startswith("token") and a == "restart" for w, a in actions)
    assert not any(
        a == "up" and w.startswith("token") for w, a in actions
    )  # refused: not applied, not logged
    up = next(r for r in records if r["action"] == "up")
    assert up["detail"]["after"]
    assert operator not in json.dumps(records)
    assert daemon.cli("audit-log", "--verify").returncode == 0
