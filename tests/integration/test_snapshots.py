"""Workspace snapshots with a real restic repository in a temporary state folder.

Restores are byte-identical; a snapshot of a bot that writes while it is taken is consistent (the
bot's cgroup is frozen meanwhile); the repository password never shows in any process's argv or
environment, nor in a file of the state folder; a restore onto a running bot is refused.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clawpen.errors import UsageError
from clawpen.plan.model import CgroupLimits
from clawpen.sandbox.cgroups import detect
from clawpen.snapshots import consistent
from clawpen.snapshots.restic import Keep, Repository
from clawpen.snapshots.runner import PASSWORD_SECRET
from clawpen.vault.store import Vault

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` by relative path (and each folder, as 'dir')."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    (ws / "notes" / "deep").mkdir(parents=True)
    (ws / "a.txt").write_text("alpha\n")
    (ws / "notes" / "b.bin").write_bytes(os.urandom(200_000))
    (ws / "notes" / "deep" / "c.json").write_text('{"k": 1}\n')
    (ws / "empty").write_bytes(b"")
    return ws


def test_a_restore_after_the_bot_damaged_its_workspace_is_byte_identical(
    state: Path, workspace: Path
) -> None:
    repo = Repository(state, environ=ENV)
    before = tree_hashes(workspace)
    made = consistent.create(repo, "alice", workspace)
    assert not made.frozen and made.pause == 0.0  # no cgroup: nothing to freeze
    assert (repo.path / "config").exists()  # initialised on first use
    snaps = repo.snapshots("alice")
    assert [s.id[:8] for s in snaps] == [made.backup.snapshot_id[:8]]
    assert set(snaps[0].tags) == {"clawpen", "bot:alice"}
    # the bot damages its workspace: a changed file, a removed one, a new one
    (workspace / "a.txt").write_text("garbage\n")
    (workspace / "notes" / "b.bin").unlink()
    (workspace / "junk").write_text("x")
    assert tree_hashes(workspace) != before
    done = consistent.restore(repo, "alice", "latest", workspace, running=False)
    assert tree_hashes(workspace) == before
    assert done.previous is not None and (done.previous / "junk").read_text() == "x"  # the old one is kept
    # another bot's snapshots stay apart
    assert repo.snapshots("bob") == []
    with pytest.raises(UsageError):
        repo.find("bob")


def test_restore_onto_a_running_bot_is_refused_and_a_new_folder_works(
    state: Path, workspace: Path, tmp_path: Path
) -> None:
    repo = Repository(state, environ=ENV)
    before = tree_hashes(workspace)
    consistent.create(repo, "alice", workspace)
    (workspace / "a.txt").write_text("changed by the running bot\n")
    during = tree_hashes(workspace)
    for to in (None, workspace, workspace / "notes"):
        with pytest.raises(UsageError) as err:
            consistent.restore(repo, "alice", "latest", workspace, running=True, to=to)
        assert err.value.exit_code == 2 and "clawpen stop alice" in (err.value.hint or "")
    assert tree_hashes(workspace) == during  # nothing written
    # positive control: into a new folder, byte-identical
    target = tmp_path / "restored"
    done = consistent.restore(repo, "alice", "latest", workspace, running=True, to=target)
    assert done.target == target and tree_hashes(target) == before
    # a non-empty target is refused too
    with pytest.raises(UsageError):
        consistent.restore(repo, "alice", "latest", workspace, running=True, to=target)


def _scan_proc(secret: bytes) -> tuple[list[int], list[str]]:
    """Pids whose argv or environ holds ``secret``, and the argv of every restic seen."""
    leaks, restics = [], []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        for part in ("cmdline", "environ"):
            try:
                data = Path(f"/proc/{entry.name}/{part}").read_bytes()
            except OSError:
                continue
            if secret in data:
                leaks.append(int(entry.name))
            if part == "cmdline" and b"restic" in data.split(b"\0")[0]:
                restics.append(data.replace(b"\0", b" ").decode(errors="replace"))
    return leaks, restics


def test_the_password_is_never_in_argv_environ_or_files(state: Path, workspace: Path) -> None:
    (workspace / "big.bin").write_bytes(os.urandom(48 << 20))  # restic runs long enough to be seen
    repo = Repository(state, environ=ENV)
    repo.ensure()
    password = Vault(state, environ=ENV).get(PASSWORD_SECRET)
    assert len(password) >= 32
    leaks: list[int] = []
    restics: list[str] = []
    errors: list[BaseException] = []

    def backup() -> None:
        try:
            repo.backup("alice", workspace)
        except BaseException as err:
            errors.append(err)

    worker = threading.Thread(target=backup)
    worker.start()
    while worker.is_alive():
        found, seen = _scan_proc(password)
        leaks += found
        restics += seen
    worker.join()
    assert not errors
    assert restics, "restic was never seen running: the scan proved nothing"
    assert all("--password-file /dev/fd/" in argv for argv in restics)
    assert leaks == []
    # nor in any file of the state folder (secrets.json holds it encrypted), nor the repository
    for path in state.rglob("*"):
        if path.is_file():
            assert password not in path.read_bytes(), path
    # positive control: the password opens the repository, another one does not
    assert len(repo.snapshots("alice")) == 1
    wrong = Repository(state, environ=ENV, password=lambda: b"not-the-password")
    with pytest.raises(Exception, match="wrong password"):
        wrong.snapshots("alice")


def test_forget_keeps_what_it_is_told(state: Path, workspace: Path) -> None:
    repo = Repository(state, environ=ENV)
    for i in range(3):
        (workspace / "a.txt").write_text(f"v{i}\n")
        repo.backup("alice", workspace)
    repo.backup("bob", workspace)
    gone = repo.forget("alice", Keep(daily=1, weekly=0, monthly=0))
    assert len(gone) == 2
    left = repo.snapshots("alice")
    assert len(left) == 1 and len(repo.snapshots("bob")) == 1  # bob untouched
    target = workspace.parent / "out"
    repo.restore("alice", "latest", target)
    assert (target / "a.txt").read_text() == "v2\n"  # the newest stays


WRITER = r"""
import hashlib, os, sys
ws = sys.argv[1]
log = os.path.join(ws, "log.txt")
n = 0
print("ready", flush=True)
while True:
    with open(log, "ab") as f:
        f.write(b"line %d %s\n" % (n, b"x" * 200))
    size = os.path.getsize(log)
    with open(log, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with open(os.path.join(ws, "sum.tmp"), "w") as f:
        f.write("%d %s\n" % (size, digest))
    os.replace(os.path.join(ws, "sum.tmp"), os.path.join(ws, "sum.txt"))
    n += 1
"""


@pytest.fixture
def writer_cgroup(workspace: Path) -> Iterator[tuple[subprocess.Popen[str], object]]:
    host = detect()
    cg = host.create(f"test-{os.getpid()}-snap", CgroupLimits())
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", WRITER, str(workspace)], stdout=subprocess.PIPE, text=True
    )
    try:
        cg.add(proc.pid)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        time.sleep(0.2)
        yield proc, cg
    finally:
        cg.thaw()
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        cg.remove()


@pytest.mark.root
def test_a_snapshot_of_a_writing_bot_is_consistent_and_the_bot_was_frozen(
    state: Path, workspace: Path, tmp_path: Path, writer_cgroup: tuple[subprocess.Popen[str], object]
) -> None:
    proc, cg = writer_cgroup
    (workspace / "big.bin").write_bytes(os.urandom(8 << 20))  # a backup that takes a while
    repo = Repository(state, environ=ENV)
    made = consistent.create(repo, "writer", workspace, [cg])  # type: ignore[list-item]
    assert made.frozen and made.states == ["frozen"]
    assert 0 < made.pause < 30
    assert cg.freezer_state() == "thawed"  # type: ignore[attr-defined]
    target = tmp_path / "restored"
    repo.restore("writer", "latest", target)
    size, digest = (target / "sum.txt").read_text().split()
    log = (target / "log.txt").read_bytes()
    # the checksum file covers a prefix of the log as it was when frozen: it matches
    assert len(log) >= int(size) > 0
    assert hashlib.sha256(log[: int(size)]).hexdigest() == digest
    assert len(log) - int(size) <= 300  # at most the one line written after the last checksum
    # the bot runs again after the snapshot: its log keeps growing
    grown = (workspace / "log.txt").stat().st_size
    time.sleep(0.2)
    assert (workspace / "log.txt").stat().st_size > grown
    assert proc.poll() is None
