"""Snapshots of clawpen's own state against a real daemon and a real restic (issue 15, item 3):
the emergency restore of a wiped database and vault brings back releases, bots (adopted, running
as before) and secrets; `snapshot password` prints only to a terminal or with --force; a failed
scheduled snapshot reaches the notifiers as [SNAPSHOT FAILED]."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path

import pytest
from helpers import DaemonCli, Sink, alive, wait_for
from test_snapshot_lifecycle import slow_restic

from clawpen.vault.store import Vault

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

SLEEPER = """
    [bots.st1]
    command = ["sleep", "1000"]
"""


def kill_daemon(daemon: DaemonCli) -> None:
    old = daemon.pid()
    assert old and alive(old)
    os.kill(old, signal.SIGKILL)  # the worst case: no clean stop; the bots keep running
    assert wait_for(lambda: not alive(old), 5)


def test_a_wiped_database_and_vault_come_back_from_a_state_snapshot(
    daemon: DaemonCli, tmp_path: Path
) -> None:
    daemon.write(SLEEPER)
    daemon.cli("up")
    pid = daemon.wait_state("st1", "running")["pid"]
    daemon.cli("secrets", "set", "KEEPME", stdin="the secret value")
    # the password: refused to a pipe (no terminal), printed with --force
    refused = daemon.cli("snapshot", "password", check=False)
    assert refused.returncode == 2 and refused.stdout == "" and "terminal" in refused.stderr
    password = daemon.cli("snapshot", "password", "--force").stdout.strip()
    assert len(password) >= 32
    made = daemon.json("snapshot", "create", "--state")
    rows = daemon.json("snapshot", "ls", "--state")
    assert isinstance(made, dict) and isinstance(rows, list)
    assert [r["id"][:8] for r in rows] == [made["snapshot"][:8]] and "state" in rows[0]["tags"]
    assert password not in (daemon.home / "audit.log").read_text()  # never logged
    assert password not in (daemon.home / "daemon.log").read_text()
    releases = daemon.json("releases")

    kill_daemon(daemon)
    try:
        emergency(daemon, tmp_path, password, pid, releases)
    finally:  # no daemon to stop the bot when the steps fail half-way
        if not daemon.pid() or not alive(daemon.pid() or 0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def emergency(daemon: DaemonCli, tmp_path: Path, password: str, pid: int, releases: object) -> None:
    """The documented steps: wipe, restore into a new folder, move into place, start."""
    for name in ("clawpen.db", "clawpen.db-wal", "clawpen.db-shm", "secrets.json", "master.key"):
        (daemon.home / name).unlink(missing_ok=True)
    target = tmp_path / "restored"
    # the vault is gone: without the password the restore is refused, with nothing written
    lost = daemon.cli("snapshot", "restore", "--state", "--to", str(target), check=False)
    assert lost.returncode == 2 and "--password-file" in lost.stderr and not target.exists()
    assert not (daemon.home / "clawpen.db").exists()  # no daemon was started meanwhile
    daemon.cli(
        "snapshot", "restore", "--state", "--to", str(target), "--password-file", "-", stdin=password + "\n"
    )
    assert {"clawpen.db", "secrets.json", "master.key", "audit.log"} <= {p.name for p in target.iterdir()}
    # the documented emergency steps: move the files into place, start the daemon
    for path in target.iterdir():
        if path.is_dir():
            shutil.copytree(path, daemon.home / path.name, dirs_exist_ok=True)
        else:
            shutil.copy2(path, daemon.home / path.name)
    row = daemon.ps()["st1"]  # starts the daemon on the restored state
    assert row["state"] == "running" and row["pid"] == pid and alive(pid)  # adopted as it ran
    assert daemon.json("releases") == releases
    assert Vault(daemon.home).get("KEEPME") == b"the secret value"
    # and the repository opens with the restored vault's password again (no --password-file)
    again = daemon.json("snapshot", "ls", "--state")
    assert isinstance(again, list) and len(again) == 1


def test_a_failed_scheduled_snapshot_is_notified(daemon: DaemonCli, sink: Sink, tmp_path: Path) -> None:
    bin_dir = slow_restic(daemon, tmp_path, slow=0)
    monitoring = (
        '[monitoring]\ninterval = "1s"\nprometheus_listen = "off"\n'
        f'[monitoring.builtin]\nhost_defaults = false\n[monitoring.notify]\nurls = ["{sink.url}"]\n'
    )
    ws = daemon.spec.parent / "ws"
    ws.mkdir()
    (ws / "f.txt").write_text("x\n")
    bot = '[bots.nb1]\ncommand = ["sleep", "1000"]\nworkspace = "./ws"\nworkspace_adopt = true\n'
    daemon.write(bot + 'snapshots = { every = "5m" }\n' + monitoring)
    daemon.cli("up")
    # positive control: the schedule runs at once after `up`, and it works
    assert wait_for(lambda: any(e["kind"] == "snapshot" for e in daemon.events("nb1")), 20, 0.2)
    rows = daemon.json("snapshot", "ls", "nb1")
    assert isinstance(rows, list) and [sorted(r["tags"]) for r in rows] == [
        ["bot:nb1", "clawpen", "scheduled"]
    ]
    assert not [t for t in sink.titles() if t.startswith("[SNAPSHOT FAILED]")]
    (bin_dir / "fail").touch()  # every restic backup fails from now on
    daemon.write('[snapshots]\nstate_every = "1h"\n' + bot + 'snapshots = { every = "5m" }\n' + monitoring)
    daemon.cli("up")
    assert wait_for(lambda: any(t.startswith("[SNAPSHOT FAILED]") for t in sink.titles()), 20, 0.2), (
        sink.titles()
    )
    out = daemon.cli("events", "--json").stdout
    failed = [ln for ln in out.splitlines() if '"snapshot-failed"' in ln]
    assert failed and "scheduled snapshot of clawpen's state failed" in failed[0] and "injected" in failed[0]
    assert daemon.ps()["nb1"]["state"] == "running"  # the schedule change restarted nothing
