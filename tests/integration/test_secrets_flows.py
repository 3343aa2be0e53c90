"""Issue 21's token and provider-key flows against a real daemon: `secrets get` through the
daemon (admin only, audited by name), `secrets add-to` editing the spec the bot then runs with,
and `exec` getting the bot's secret_env without any argv holding it."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path

import pytest
from helpers import CLAWPEN, DaemonCli

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

VALUE = "sk-flow-93e1c07a5d2b48f6"


def host_cmdlines() -> bytes:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                out.append((entry / "cmdline").read_bytes())
    return b"\n".join(out)


def test_get_through_the_daemon_is_admin_only_and_audited_by_name(daemon: DaemonCli) -> None:
    daemon.cli("secrets", "set", "API_TOKEN", stdin=VALUE)
    admin = daemon.cli("token", "create", "--role", "admin").stdout.strip()
    operator = daemon.cli("token", "create", "--role", "operator").stdout.strip()
    piped = daemon.cli("secrets", "get", "API_TOKEN", token=admin, check=False)
    assert piped.returncode == 2 and "use --force" in piped.stderr and VALUE not in piped.stdout
    got = daemon.cli("secrets", "get", "API_TOKEN", "--force", token=admin)
    assert got.stdout == VALUE
    refused = daemon.cli("secrets", "get", "API_TOKEN", "--force", token=operator, check=False)
    assert refused.returncode != 0 and VALUE not in refused.stdout + refused.stderr
    records = [json.loads(line) for line in daemon.cli("audit-log", "--json").stdout.splitlines()]
    gets = [r for r in records if r["action"] == "secrets_get"]
    assert len(gets) == 1 and gets[0]["detail"] == {"name": "API_TOKEN"}
    assert VALUE not in json.dumps(records)
    # add-to with an admin token stores through the daemon (audited there) and edits the spec
    daemon.write('[bots.a]\ncommand = ["sleep", "300"]\n')
    daemon.cli("secrets", "add-to", "a", "KEY2", token=admin, stdin="v2")
    assert 'secrets = ["KEY2"]' in daemon.spec.read_text()
    assert daemon.cli("secrets", "get", "KEY2", "--force", token=admin).stdout == "v2"
    sets = [json.loads(line) for line in daemon.cli("audit-log", "--json").stdout.splitlines()]
    assert {"name": "KEY2"} in [r["detail"] for r in sets if r["action"] == "secrets_set"]


def test_add_to_edits_the_spec_and_the_bot_and_exec_get_the_env(daemon: DaemonCli) -> None:
    daemon.write("""
        # my bots
        [bots.a]
        command = ["sleep", "300"]   # keeps running

        [bots.plain]
        command = ["sleep", "300"]
    """)
    before = daemon.spec.read_text()
    # an unknown bot: exit 2 naming the bots there, nothing stored, file untouched
    bad = daemon.cli("secrets", "add-to", "nobot", "TOKEN", "--env", stdin=VALUE, check=False)
    assert bad.returncode == 2 and "a, plain" in bad.stderr
    assert "TOKEN" not in daemon.cli("secrets", "ls").stdout and daemon.spec.read_text() == before
    added = daemon.cli("secrets", "add-to", "a", "TOKEN", "--env", stdin=VALUE + "\n")
    assert "run `clawpen up` to apply" in added.stderr
    text = daemon.spec.read_text()
    assert "# my bots" in text and '["sleep", "300"]   # keeps running' in text
    assert 'secrets = ["TOKEN"]' in text and 'secret_env = ["TOKEN"]' in text
    daemon.cli("up")
    daemon.wait_state("a", "running")
    daemon.wait_state("plain", "running")
    # exec gets the bot's secret_env, and no process's argv holds the value
    proc = subprocess.Popen(
        [CLAWPEN, "exec", "a", "--", "sh", "-c", 'echo "t=$TOKEN"; cat /run/secrets/TOKEN; echo; sleep 2'],
        env=daemon.env,
        cwd=daemon.spec.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1)
    cmdlines = host_cmdlines()  # while the command runs
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.splitlines() == [f"t={VALUE}", VALUE]
    assert VALUE.encode() not in cmdlines and b'echo "t=$TOKEN"' in cmdlines  # (it was scanned live)
    # a bot without secret_env gets no extra variable; its env is the bot's own
    plain = daemon.cli("exec", "plain", "--", "sh", "-c", "env").stdout
    bot_env = daemon.cli("exec", "a", "--", "sh", "-c", "env").stdout
    assert "TOKEN" not in plain and f"TOKEN={VALUE}" in bot_env
    names = {line.split("=", 1)[0] for line in plain.splitlines()}
    assert names == {line.split("=", 1)[0] for line in bot_env.splitlines()} - {"TOKEN"}


def test_add_to_a_spec_that_does_not_parse_names_the_line(daemon: DaemonCli) -> None:
    daemon.write('[bots.a]\ncommand = ["sleep", "300"\nenv = {}\n')
    before = daemon.spec.read_text()
    bad = daemon.cli("secrets", "add-to", "a", "TOKEN", stdin=VALUE, check=False)
    assert bad.returncode == 2 and "clawpen.toml:3" in bad.stderr and "not valid TOML" in bad.stderr
    assert daemon.spec.read_text() == before and "TOKEN" not in daemon.cli("secrets", "ls").stdout
