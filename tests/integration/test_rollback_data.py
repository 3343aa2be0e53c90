"""``clawpen rollback N --with-data`` against a real daemon and a real restic (issue 15, item 3
"so a rollback can take the data back too"): the workspace comes back byte-identical to what it
held at release N, the bot runs release N's spec, and the data the rollback replaced is in a
snapshot tagged ``before-release:M`` (restorable); the dry run names the snapshot; a bot without
such a snapshot refuses the whole rollback with nothing changed."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from helpers import DaemonCli, wait_for

from clawpen.daemon.rollback_data import pick
from clawpen.snapshots.restic import Snapshot

pytestmark = [pytest.mark.root, pytest.mark.bwrap]

V1 = """
    {snapshots}
    [bots.rd1]
    command = ["sh", "-c", "cd /workspace; [ -e a.bin ] || head -c 4096 /dev/urandom > a.bin; sleep {secs}"]
    workspace = "./ws"
    workspace_adopt = true
"""
V2 = """
    {snapshots}
    [bots.rd1]
    command = ["sh", "-c", "cd /workspace; echo B > b.txt; head -c 100 /dev/urandom >> a.bin; sleep {secs}"]
    workspace = "./ws"
    workspace_adopt = true
"""
ON = "[snapshots]\nbefore_up = true"


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def tags(d: DaemonCli, bot: str) -> list[tuple[str, list[str]]]:
    rows = d.json("snapshot", "ls", bot)
    assert isinstance(rows, list)
    return [(r["id"], sorted(t for t in r["tags"] if t.startswith("before-"))) for r in rows]


def test_rollback_with_data_brings_back_the_workspace_of_that_release(
    daemon: DaemonCli, tmp_path: Path
) -> None:
    ws = daemon.spec.parent / "ws"
    ws.mkdir()
    secs = [random.randrange(400_000, 900_000) * 10 + n for n in range(2)]
    daemon.write(V1.format(snapshots=ON, secs=secs[0]))
    daemon.cli("up")  # release 1 writes data A
    assert wait_for(lambda: (ws / "a.bin").exists() and (ws / "a.bin").stat().st_size == 4096, 10)
    data_a = tree(ws)
    daemon.write(V2.format(snapshots=ON, secs=secs[1]))
    daemon.cli("up")  # release 2 (the bot changed: snapshot before-release:2), writes data B
    assert wait_for(lambda: (ws / "b.txt").exists() and (ws / "a.bin").stat().st_size == 4196, 10)
    data_b = tree(ws)
    assert data_b != data_a
    ((snap2, t2),) = tags(daemon, "rd1")
    assert t2 == ["before-release:2"]

    # the dry run names the snapshot and changes nothing
    dry = daemon.cli("rollback", "1", "--with-data", "--dry-run")
    assert f"rd1: would get snapshot {snap2[:8]} (before release 2)" in dry.stdout, dry.stdout
    assert daemon.json("rollback", "1", "--with-data", "--dry-run", "--json")["data"] == [  # type: ignore[index]
        {
            "bot": "rd1",
            "workspace": str(ws),
            "snapshot": snap2,
            "from_release": 2,
            "saved": None,
            "previous": None,
        }
    ]
    assert len(daemon.json("releases")) == 2 and tree(ws) == data_b  # type: ignore[arg-type]

    done = daemon.cli("rollback", "1", "--with-data")
    assert "release 3: rollback of release 1" in done.stdout, done.stdout
    assert f"rd1: got snapshot {snap2[:8]} (before release 2)" in done.stdout
    daemon.wait_state("rd1", "running")
    assert tree(ws) == data_a  # byte-identical, b.txt gone
    # the bot runs release 1's spec (and did not rewrite a.bin: it was there)
    shown = daemon.json("release", "show", "1")
    [row] = shown["bots"]  # type: ignore[index]
    assert (row["bot"], row["running"], row["build"]) == ("rd1", True, None), row
    assert daemon.json("release", "show", "3")["rollback_of"] == 1  # type: ignore[index]
    # the data B the rollback replaced: in a snapshot tagged before-release:3, and kept aside
    rows = tags(daemon, "rd1")
    assert [t for _, t in rows] == [["before-release:2"], ["before-release:3"]]
    out = tmp_path / "b-back"
    daemon.cli("snapshot", "restore", "rd1", rows[1][0], "--to", str(out))
    assert tree(out) == data_b
    aside = [p for p in ws.parent.iterdir() if p.name.startswith("ws.before-restore-")]
    assert len(aside) == 1 and tree(aside[0]) == data_b

    # and the rollback can itself be undone with its data: back to release 2 takes B again
    daemon.cli("rollback", "2", "--with-data")
    daemon.wait_state("rd1", "running")
    assert wait_for(lambda: (ws / "a.bin").stat().st_size == 4296, 10)  # v2 appended once more
    assert (ws / "b.txt").read_bytes() == b"B\n"
    assert (ws / "a.bin").read_bytes()[:4196] == data_b["a.bin"]


def test_a_bot_without_such_a_snapshot_refuses_the_whole_rollback(daemon: DaemonCli) -> None:
    ws = daemon.spec.parent / "ws"
    ws.mkdir()
    secs = [random.randrange(400_000, 900_000) * 10 + n for n in range(2)]
    daemon.write(V1.format(snapshots="", secs=secs[0]))
    daemon.cli("up")
    assert wait_for(lambda: (ws / "a.bin").exists(), 10)
    daemon.write(V2.format(snapshots="", secs=secs[1]))
    daemon.cli("up")  # no before_up: no snapshot before release 2
    assert wait_for(lambda: (ws / "b.txt").exists(), 10)
    daemon.wait_state("rd1", "running")
    daemon.cli("snapshot", "create", "rd1")  # a snapshot, but not one tagged before-release:K
    before, pid = tree(ws), daemon.ps()["rd1"]["pid"]

    for extra in ((), ("--dry-run",)):
        refused = daemon.cli("rollback", "1", "--with-data", *extra, check=False)
        assert refused.returncode == 2, refused
        assert "no snapshot holds the workspace of rd1 as it was at release 1" in refused.stderr
        assert "without --with-data" in refused.stderr and "clawpen snapshot restore" in refused.stderr
        assert "Traceback" not in refused.stderr
    # nothing changed: no release, the same process, the same files, no new snapshot
    assert len(daemon.json("releases")) == 2  # type: ignore[arg-type]
    assert daemon.ps()["rd1"]["pid"] == pid and tree(ws) == before
    assert len(tags(daemon, "rd1")) == 1
    assert not [p for p in ws.parent.iterdir() if ".before-restore-" in p.name]
    # the positive control: the same rollback without --with-data goes back to the spec only
    assert "release 3: rollback of release 1" in daemon.cli("rollback", "1").stdout
    daemon.wait_state("rd1", "running")
    assert daemon.ps()["rd1"]["pid"] != pid and tree(ws) == before  # the data stayed B


def snap(sid: str, when: str, *tags: str) -> Snapshot:
    return Snapshot(sid, sid[:8], when, "b", [], ["clawpen", "bot:b", *tags])


def test_pick_takes_the_newest_snapshot_of_the_smallest_later_release() -> None:
    rows = [
        snap("a1", "2026-01-01", "before-release:2"),  # not after release 3
        snap("b1", "2026-01-02", "before-release:5"),
        snap("c1", "2026-01-03", "before-release:4"),
        snap("c2", "2026-01-04", "before-release:4"),  # the newest of K = 4
        snap("d1", "2026-01-05"),  # by hand: no tag
        snap("e1", "2026-01-06", "before-release:x"),
    ]
    assert pick(rows, 3) == (rows[3], 4)
    assert pick(rows, 1) == (rows[0], 2)
    assert pick(rows, 5) is None


TWO = """
    [snapshots]
    before_up = true
    [bots.rd1]
    command = ["sh", "-c", "cd /workspace; echo {v} > data.txt; sleep {secs}"]
    workspace = "./ws1"
    workspace_adopt = true
    [bots.rd2]
    command = ["sh", "-c", "cd /workspace; echo {v} > data.txt; sleep {secs}"]
    workspace = "./ws2"
    workspace_adopt = true
"""
FAILING_RESTORE = """#!/bin/sh
# test double: the restore into bot rd2's workspace fails; anything else runs the real restic
for a in "$@"; do
  case "$a" in *ws2.restoring-*) echo "Fatal: injected restore failure" >&2; exit 1 ;; esac
done
exec {restic} "$@"
"""


def test_a_failed_restore_puts_back_the_workspaces_already_swapped_and_restarts_the_bots(
    daemon: DaemonCli, tmp_path: Path
) -> None:
    folder = tmp_path / "bin"
    folder.mkdir()
    wrapper = folder / "restic"
    wrapper.write_text(FAILING_RESTORE.format(restic=shutil.which("restic") or "/usr/bin/restic"))
    wrapper.chmod(0o755)
    daemon.env["PATH"] = f"{folder}:{daemon.env.get('PATH', '/usr/bin:/bin')}"
    spec = daemon.spec.parent
    for ws in ("ws1", "ws2"):
        (spec / ws).mkdir()
    secs = [random.randrange(400_000, 900_000) * 10 + n for n in range(2)]
    daemon.write(TWO.format(v="A", secs=secs[0]))
    daemon.cli("up")
    daemon.write(TWO.format(v="B", secs=secs[1]))
    daemon.cli("up")
    for ws in ("ws1", "ws2"):
        assert wait_for(lambda ws=ws: (spec / ws / "data.txt").read_text() == "B\n", 10)  # type: ignore[misc]
    pids = {b: daemon.ps()[b]["pid"] for b in ("rd1", "rd2")}

    failed = daemon.cli("rollback", "1", "--with-data", check=False)
    assert failed.returncode == 1, failed
    assert "workspaces were put back and the bots started again" in failed.stderr, failed.stderr
    assert "injected restore failure" in failed.stderr and "Traceback" not in failed.stderr
    # no release; both workspaces hold B (rd1's had been swapped to A, and was put back)
    assert len(daemon.json("releases")) == 2  # type: ignore[arg-type]
    for ws in ("ws1", "ws2"):
        assert (spec / ws / "data.txt").read_text() == "B\n"
    assert not [p for p in spec.iterdir() if ".before-restore-" in p.name]
    for bot in ("rd1", "rd2"):  # started again, on release 2's spec
        row = daemon.wait_state(bot, "running")
        assert row["pid"] != pids[bot]
    assert all(b["running"] for b in daemon.json("release", "show", "2")["bots"])  # type: ignore[index]
    # the positive control: without the failure the same rollback brings A back
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("restic") or "/usr/bin/restic"} "$@"\n')
    daemon.cli("rollback", "1", "--with-data")
    for ws in ("ws1", "ws2"):
        assert (spec / ws / "data.txt").read_text() == "A\n"


def test_a_snapshot_from_after_an_unsnapshotted_change_is_not_taken_for_older_data(daemon: DaemonCli) -> None:
    """Release 2 changed the bot without a snapshot (before_up off); release 3 snapshotted it
    (before_up on): that snapshot holds release 2's data, so `rollback 1 --with-data` is refused
    (naming release 2), and `rollback 2 --with-data` takes it (the positive control)."""
    ws = daemon.spec.parent / "ws"
    ws.mkdir()
    secs = [random.randrange(400_000, 900_000) * 10 + n for n in range(3)]
    daemon.write(V1.format(snapshots="", secs=secs[0]))
    daemon.cli("up")
    assert wait_for(lambda: (ws / "a.bin").exists(), 10)
    daemon.write(V2.format(snapshots="", secs=secs[1]))
    daemon.cli("up")  # release 2: changed, no snapshot
    assert wait_for(lambda: (ws / "b.txt").exists(), 10)
    daemon.wait_state("rd1", "running")
    daemon.write(V2.format(snapshots=ON, secs=secs[2]))
    daemon.cli("up")  # release 3: changed, snapshot before-release:3 (release 2's data)
    daemon.wait_state("rd1", "running")
    assert [t for _, t in tags(daemon, "rd1")] == [["before-release:3"]]
    pid = daemon.ps()["rd1"]["pid"]

    refused = daemon.cli("rollback", "1", "--with-data", check=False)
    assert refused.returncode == 2, refused
    assert "bot rd1 changed at release 2, which took no snapshot" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert len(daemon.json("releases")) == 3 and daemon.ps()["rd1"]["pid"] == pid  # type: ignore[arg-type]
    done = daemon.cli("rollback", "2", "--with-data", "--dry-run")
    assert "before release 3" in done.stdout, done.stdout
