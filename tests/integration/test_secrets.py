"""Secrets reach only the bot that declares them, as 0400 files (and env when asked), and never
its logs, the host's `ps`, another bot or the state files in plaintext."""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import time
from pathlib import Path

import pytest
from helpers import CLAWPEN, DaemonCli, wait_for

from conftest import UID_BASE

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

VALUE = "sk-test-7f3a9c1e5b2d4f60a8e1c3b5"


def set_secret(env: dict[str, str], name: str, value: str) -> None:
    subprocess.run(
        [CLAWPEN, "secrets", "set", name], input=value + "\n", text=True, env=env, check=True, timeout=60
    )


def all_state_bytes(home: Path) -> bytes:
    blobs = []
    for path in home.rglob("*"):
        if path.is_file() and not path.is_symlink() and not path.is_fifo():
            blobs.append(path.read_bytes())
    return b"\n".join(blobs)


def host_cmdlines() -> bytes:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                out.append((entry / "cmdline").read_bytes())
    return b"\n".join(out)


def test_run_delivers_a_secret_file_and_env_only_to_the_declaring_bot(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAWPEN_")}
    env.update(CLAWPEN_HOME=str(tmp_path / "state"), CLAWPEN_UID_BASE=str(UID_BASE))
    set_secret(env, "API_TOKEN", VALUE)
    probe = (
        "stat -c '%a %u' /run/secrets/API_TOKEN; cat /run/secrets/API_TOKEN; echo; "
        "echo env=$API_TOKEN; sleep 1"
    )
    proc = subprocess.Popen(
        [CLAWPEN, "run", "--secret-env", "API_TOKEN", "--", "sh", "-c", probe],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    cmdlines = host_cmdlines()  # while the bot runs
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    mode, owner, file_value, env_line = out.split()[0], out.split()[1], out.split()[2], out.split()[3]
    assert mode == "400" and int(owner) >= UID_BASE
    assert file_value == VALUE and env_line == f"env={VALUE}"
    assert VALUE.encode() not in cmdlines, "the secret showed up in a process's argv"
    # another bot, without the declaration, sees nothing
    other = subprocess.run(
        [CLAWPEN, "run", "--name", "other", "--", "sh", "-c", "ls /run/secrets; echo env=$API_TOKEN"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert VALUE not in other.stdout and "env=\n" in other.stdout + "\n"
    # at rest: no plaintext or base64 of the value anywhere in the state directory
    blob = all_state_bytes(tmp_path / "state")
    assert VALUE.encode() not in blob and base64.b64encode(VALUE.encode()) not in blob


def test_missing_secret_is_a_clear_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLAWPEN_")}
    env.update(CLAWPEN_HOME=str(tmp_path / "state"), CLAWPEN_UID_BASE=str(UID_BASE))
    result = subprocess.run(
        [CLAWPEN, "run", "--secret", "NOPE", "--", "true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "NOPE" in result.stderr and "clawpen secrets set NOPE" in result.stderr


def test_daemon_logs_redact_a_secret_the_bot_prints(daemon: DaemonCli) -> None:
    set_secret(daemon.env, "API_TOKEN", VALUE)
    b64 = base64.b64encode(VALUE.encode()).decode()
    daemon.write("""
        [bots.leaky]
        command = [
            "sh", "-c", "f=/run/secrets/API_TOKEN; echo token=$(cat $f); echo b64=$(base64 -w0 $f); sleep 300"
        ]
        secrets = ["API_TOKEN"]
    """)
    daemon.cli("up")
    daemon.wait_state("leaky", "running")
    assert wait_for(lambda: "b64=" in daemon.cli("logs", "leaky").stdout, 10)
    logs = daemon.cli("logs", "leaky").stdout
    assert "token=[REDACTED:API_TOKEN]" in logs and "b64=[REDACTED:API_TOKEN]" in logs
    assert VALUE not in logs and b64 not in logs
    blob = all_state_bytes(daemon.home)
    assert VALUE.encode() not in blob and b64.encode() not in blob
