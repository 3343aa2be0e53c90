"""A bot's pre-snapshot command (`snapshots.before`), against a real daemon, sandbox and restic:
it runs inside the running bot, as the bot, before restic reads the workspace (so what it writes
is in the snapshot); a failing one fails the snapshot with its output and takes none; with
`freeze = false` the bot is not frozen; a stopped bot's snapshot runs no command."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers import DaemonCli

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

SPEC = """
[bots.sb1]
command = ["sh", "-c", "echo live > /workspace/db; sleep 1000"]
workspace = "./ws"
workspace_adopt = true
snapshots = {{ every = "24h", before = {before}, freeze = {freeze} }}
"""


def by_hand(d: DaemonCli) -> list[dict]:
    """The bot's snapshots but the scheduled one (the daemon takes it at once after `up`)."""
    rows = json.loads(d.cli("snapshot", "ls", "sb1", "--json").stdout)
    return [r for r in rows if "scheduled" not in r["tags"]]


def restored(d: DaemonCli, tmp: Path, name: str) -> Path:
    target = tmp / name
    d.cli("snapshot", "restore", "sb1", "latest", "--to", str(target))
    return target


def test_the_before_command_runs_inside_the_bot_and_its_output_is_in_the_snapshot(
    daemon: DaemonCli, tmp_path: Path
) -> None:
    ws = daemon.spec.parent / "ws"
    ws.mkdir()
    # as the bot: `id -u` inside is the bot's uid, not root's; the copy is what .backup would make
    before = '["sh", "-c", "cp /workspace/db /workspace/db.bak && id -u > /workspace/who"]'
    daemon.write(SPEC.format(before=before, freeze="false"))
    daemon.cli("up")
    daemon.wait_state("sb1", "running")
    made = json.loads(daemon.cli("snapshot", "create", "sb1", "--json").stdout)
    assert made["frozen"] is False and made["pause_s"] == 0  # freeze = false
    got = restored(daemon, tmp_path, "r1")
    assert (got / "db.bak").read_text() == "live\n"
    uid = int((got / "who").read_text())
    assert uid != 0 and uid == (ws / "db").stat().st_uid  # ran as the bot
    # the positive control of the freeze: with freeze = true (the default) the bot is frozen
    daemon.write(SPEC.format(before=before, freeze="true"))
    daemon.cli("up")
    made = json.loads(daemon.cli("snapshot", "create", "sb1", "--json").stdout)
    assert made["frozen"] is True


def test_a_failing_before_command_fails_the_snapshot_and_takes_none(daemon: DaemonCli) -> None:
    ws = daemon.spec.parent / "ws"
    ws.mkdir()
    daemon.write(SPEC.format(before='["sh", "-c", "echo database is locked >&2; exit 3"]', freeze="true"))
    daemon.cli("up")
    daemon.wait_state("sb1", "running")
    failed = daemon.cli("snapshot", "create", "sb1", check=False)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    assert "pre-snapshot command of bot sb1 failed" in failed.stderr, failed.stderr
    assert "database is locked" in failed.stderr, failed.stderr
    assert by_hand(daemon) == []
    # a stopped bot writes nothing: its snapshot runs no command and succeeds
    daemon.cli("stop", "sb1")
    daemon.wait_state("sb1", "stopped")
    daemon.cli("snapshot", "create", "sb1")
    assert len(by_hand(daemon)) == 1
    leftover = subprocess.run(["pgrep", "-f", "database is locked"], capture_output=True, check=False)
    assert leftover.returncode == 1  # the command left nothing running
