"""Snapshots and the bot's lifecycle, against a real daemon and a real restic (issue 15, items 3
and 5): a `start` while an in-place restore runs is refused and the bot starts afterwards on the
restored workspace; with `[snapshots] before_up = true` an `up` that changes a bot first
snapshots its workspace (tagged `before-release:N`), a failed snapshot applies nothing unless
`--no-snapshot`; with it off, no snapshot is taken.

restic is made slow (or failing) by a wrapper first on the daemon's PATH; it then runs the real
restic with the same arguments."""

from __future__ import annotations

import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from helpers import CLAWPEN, DaemonCli, wait_for

from clawpen.daemon.release_diff import bot_policy
from clawpen.daemon.store import policy_hash
from clawpen.spec.loader import parse_spec_text

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

RESTIC = shutil.which("restic") or "/usr/bin/restic"
WRAPPER = """#!/bin/sh
# test double: marks and slows a restore, fails a backup on demand, then runs the real restic
for a in "$@"; do
  case "$a" in
    restore) touch "{dir}/restoring"; sleep {slow} ;;
    backup) if [ -e "{dir}/fail" ]; then echo "Fatal: injected backup failure" >&2; exit 1; fi ;;
  esac
done
exec {restic} "$@"
"""


def slow_restic(d: DaemonCli, tmp: Path, slow: float = 3.0) -> Path:
    """Put the wrapper first on the PATH of ``d``'s daemon (before it starts); its folder."""
    folder = tmp / "bin"
    folder.mkdir()
    script = folder / "restic"
    script.write_text(WRAPPER.format(dir=folder, slow=slow, restic=RESTIC))
    script.chmod(0o755)
    d.env["PATH"] = f"{folder}:{d.env.get('PATH', '/usr/bin:/bin')}"
    return folder


def clawpen(d: DaemonCli, *args: str) -> subprocess.Popen[str]:
    """``clawpen ARGS`` started in the background."""
    return subprocess.Popen(
        [CLAWPEN, *args],
        cwd=d.spec.parent,
        env=d.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_start_during_a_restore_is_refused_and_the_bot_starts_on_the_restored_workspace(
    daemon: DaemonCli, tmp_path: Path
) -> None:
    bin_dir = slow_restic(daemon, tmp_path)
    ws = daemon.spec.parent / "ws"
    ws.mkdir()
    (ws / "data.txt").write_text("v1\n")
    daemon.write(
        """
        [bots.rs1]
        command = ["sh", "-c", "cat /workspace/data.txt > /workspace/seen.txt; sleep 1000"]
        workspace = "./ws"
        workspace_adopt = true
        """
    )
    daemon.cli("up")
    daemon.wait_state("rs1", "running")
    assert wait_for(lambda: (ws / "seen.txt").exists(), 10)
    daemon.cli("snapshot", "create", "rs1")
    daemon.cli("stop", "rs1")
    daemon.wait_state("rs1", "stopped")
    (ws / "data.txt").write_text("v2, damaged\n")
    (ws / "seen.txt").unlink()

    restore = clawpen(daemon, "snapshot", "restore", "rs1")
    assert wait_for(lambda: (bin_dir / "restoring").exists(), 20), "the restore never ran restic"
    started = time.monotonic()
    refused = daemon.cli("start", "rs1", check=False)
    assert refused.returncode == 2, refused
    assert "bot rs1 cannot start now: its workspace is being restored" in refused.stderr
    assert "Traceback" not in refused.stderr
    restart = daemon.cli("restart", "rs1", check=False)
    assert restart.returncode == 2 and "being restored" in restart.stderr
    assert time.monotonic() - started < 2.5  # refused at once, while restic still ran
    assert daemon.ps()["rs1"]["state"] == "stopped"
    assert not (ws / "seen.txt").exists()  # the bot did not run on the half-restored folder
    assert restore.poll() is None  # the restore was still under way meanwhile
    out, err = restore.communicate(timeout=60)
    assert restore.returncode == 0, (out, err)
    assert (ws / "data.txt").read_text() == "v1\n"

    # the positive control: once the restore is done, start works, on the restored workspace
    daemon.cli("start", "rs1")
    daemon.wait_state("rs1", "running")
    assert wait_for(lambda: (ws / "seen.txt").exists(), 10)
    assert (ws / "seen.txt").read_text() == "v1\n"


SPEC = """
    {snapshots}
    [bots.bu1]
    command = ["sleep", "{secs}"]
    workspace = "./ws"
    workspace_adopt = true
"""


def snapshots(d: DaemonCli, bot: str) -> list[dict]:
    rows = d.json("snapshot", "ls", bot)
    assert isinstance(rows, list)
    return rows


def test_before_up_snapshots_a_bot_changed_by_up_or_rollback_tagged_with_the_release(
    daemon: DaemonCli, tmp_path: Path
) -> None:
    bin_dir = slow_restic(daemon, tmp_path, slow=0)
    ws = daemon.spec.parent / "ws"
    ws.mkdir()
    (ws / "data.txt").write_text("one\n")
    on = "[snapshots]\nbefore_up = true"
    secs = [random.randrange(400_000, 900_000) * 10 + n for n in range(4)]
    daemon.write(SPEC.format(snapshots=on, secs=secs[0]))
    daemon.cli("up")  # release 1 creates the bot: nothing to snapshot yet
    assert snapshots(daemon, "bu1") == []
    (ws / "data.txt").write_text("two\n")  # what the workspace holds when release 2 comes
    daemon.write(SPEC.format(snapshots=on, secs=secs[1]))
    daemon.cli("up")
    made = snapshots(daemon, "bu1")
    assert [sorted(s["tags"]) for s in made] == [["before-release:2", "bot:bu1", "clawpen"]]
    out = tmp_path / "out"
    daemon.cli("snapshot", "restore", "bu1", made[0]["id"], "--to", str(out))
    assert (out / "data.txt").read_text() == "two\n"
    # a rollback that changes the bot is snapshotted first too
    (ws / "data.txt").write_text("two and a half\n")
    assert "release 3: rollback of release 1" in daemon.cli("rollback").stdout
    made = snapshots(daemon, "bu1")
    assert [t for s in made for t in s["tags"] if t.startswith("before-")] == [
        "before-release:2",
        "before-release:3",
    ]
    daemon.cli("snapshot", "restore", "bu1", made[1]["id"], "--to", str(tmp_path / "out3"))
    assert (tmp_path / "out3" / "data.txt").read_text() == "two and a half\n"
    # the bot's files never go where a workspace may not be (a system folder, a .ssh)
    for bad in ("/etc/clawpen-restore-test", str(tmp_path / "home" / ".ssh")):
        refused = daemon.cli("snapshot", "restore", "bu1", made[1]["id"], "--to", bad, check=False)
        assert refused.returncode == 2 and "restore --to" in refused.stderr, refused.stderr
        assert not Path(bad).exists()

    # a failed snapshot applies nothing: no release, the old command still runs
    (bin_dir / "fail").touch()
    daemon.write(SPEC.format(snapshots=on, secs=secs[2]))
    pid = daemon.ps()["bu1"]["pid"]
    failed = daemon.cli("up", check=False)
    assert failed.returncode == 1, failed
    assert "snapshot of bot bu1's workspace before release 4 failed, so nothing was applied" in failed.stderr
    assert "injected backup failure" in failed.stderr and "--no-snapshot" in failed.stderr
    assert len(daemon.json("releases")) == 3
    assert daemon.ps()["bu1"]["pid"] == pid
    # --no-snapshot applies it anyway (and takes none)
    daemon.cli("up", "--no-snapshot")
    assert daemon.json("releases")[0]["id"] == 4
    assert len(snapshots(daemon, "bu1")) == 2
    (bin_dir / "fail").unlink()

    # with it off, an `up` that changes the bot takes no snapshot
    daemon.write(SPEC.format(snapshots="[snapshots]\nbefore_up = false", secs=secs[3]))
    (ws / "data.txt").write_text("three\n")
    ok = daemon.cli("up", "--no-snapshot")  # the spec applied now opts in: skip it this time
    assert "release 5" in ok.stdout
    daemon.write(SPEC.format(snapshots="", secs=secs[0]))
    daemon.cli("up")  # neither the applied spec nor this one opts in
    assert len(snapshots(daemon, "bu1")) == 2
    assert daemon.json("releases")[0]["id"] == 6


def test_the_snapshots_table_does_not_change_any_bots_policy_hash(tmp_path: Path) -> None:
    bot = '[bots.x]\ncommand = ["true"]\n'
    plain = parse_spec_text(bot, tmp_path / "clawpen.toml")
    opted = parse_spec_text("[snapshots]\nbefore_up = true\n" + bot, tmp_path / "clawpen.toml")
    assert opted.spec.snapshots.before_up and not plain.spec.snapshots.before_up
    assert policy_hash(bot_policy(opted, "x")) == policy_hash(bot_policy(plain, "x"))
    other = parse_spec_text('[bots.x]\ncommand = ["false"]\n', tmp_path / "clawpen.toml")
    assert policy_hash(bot_policy(other, "x")) != policy_hash(bot_policy(plain, "x"))  # control
    with pytest.raises(Exception, match="before_upp"):
        parse_spec_text("[snapshots]\nbefore_upp = true\n" + bot, tmp_path / "clawpen.toml")
