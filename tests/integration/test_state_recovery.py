"""The daemon's own state under damage: a corrupt or lost database (bots still adopted), a
database of the previous release, restart counts and the crashloop window across a daemon
restart, and a full disk under the state folder (stop, down and ps still work; the daemon
starts)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import DaemonCli, alive, daemons_of, wait_for

from clawpen.daemon.store import Store
from conftest import UID_BASE

pytestmark = [pytest.mark.root, pytest.mark.bwrap, pytest.mark.slow]

FIXTURE = Path(__file__).parent.parent / "fixtures" / "state_v0.sql"
SLEEPER = """
    [bots.rec-keeper]
    command = ["sleep", "300"]
"""


def kill_daemon(daemon: DaemonCli) -> None:
    old = daemon.pid()
    assert old and alive(old)
    os.kill(old, signal.SIGKILL)
    assert wait_for(lambda: not alive(old), 5)


def all_events(daemon: DaemonCli) -> list[dict]:
    out = daemon.cli("events", "--json").stdout
    return [json.loads(line) for line in out.splitlines()]


def garble(db: Path) -> None:
    with open(db, "r+b") as f:
        f.write(b"\x00garbage, not SQLite\x00" * 20)


def cut(db: Path) -> None:
    os.truncate(db, db.stat().st_size // 2)


def empty(db: Path) -> None:
    os.truncate(db, 0)


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (garble, "state database was corrupt (file is not a database); moved to "),
        (cut, "state database was corrupt (database disk image is malformed); moved to "),
        (empty, "state database was missing or empty"),
    ],
    ids=["garbled", "truncated", "emptied"],
)
def test_a_damaged_state_db_is_set_aside_and_the_running_bot_adopted(daemon: DaemonCli, damage, said) -> None:
    daemon.write(SLEEPER)
    daemon.cli("up")
    pid = daemon.wait_state("rec-keeper", "running")["pid"]
    db = sqlite3.connect(daemon.home / "clawpen.db")  # move everything from the WAL into the file
    assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    db.close()
    kill_daemon(daemon)
    damage(daemon.home / "clawpen.db")

    row = daemon.ps()["rec-keeper"]  # starts a new daemon on the damaged file
    assert row["pid"] == pid and row["state"] == "running" and alive(pid)
    notes = [e["reason"] for e in daemon.events("rec-keeper") if e["kind"] in ("adopt",)]
    assert notes == [f"adopted the running sandbox (pid {pid})"]
    (message,) = [e["reason"] for e in all_events(daemon) if e["kind"] == "state-db"]
    assert said in message and "rebuilt from running sandboxes" in message and "rec-keeper" in message
    assert "release history cannot be rebuilt" in message
    assert message in (daemon.home / "daemon.log").read_text()
    moved = [p for p in daemon.home.glob("clawpen.db.corrupt-*") if not p.name.endswith(("-wal", "-shm"))]
    if damage is not empty:
        assert len(moved) == 1 and f"moved to {moved[0]}" in message
        assert moved[0].stat().st_size > 0
    # the adopted bot is really supervised again: a stop ends its process
    daemon.cli("stop", "rec-keeper")
    assert not alive(pid) and daemon.ps()["rec-keeper"]["state"] == "stopped"
    # and the newest spec was kept, so `up` sees nothing to change but the stopped bot
    plan = daemon.cli("up", "--dry-run").stdout
    assert "start rec-keeper" in plan and "restart" not in plan and "create" not in plan, plan


def test_a_state_db_of_the_previous_release_is_migrated_and_its_bots_adopted(daemon: DaemonCli) -> None:
    daemon.write(SLEEPER)
    daemon.cli("up")
    pid = daemon.wait_state("rec-keeper", "running")["pid"]
    kill_daemon(daemon)
    db = daemon.home / "clawpen.db"
    # rewrite the database as the previous release wrote it (no versions, no tracker column)
    now = sqlite3.connect(db)
    tables = {t: now.execute(f"SELECT * FROM {t}").fetchall() for t in ("bots", "events")}
    tables["releases"] = now.execute(  # without rollback_of (schema version 2)
        "SELECT id, created, who, spec_path, spec_hash, spec_text, summary FROM releases"
    ).fetchall()
    tables["instances"] = now.execute(
        "SELECT bot, replica, state, pid, sandbox_pid, pid_start, cgroup, started_at, restarts, "
        "last_exit, last_reason, health FROM instances"
    ).fetchall()
    now.close()
    for stale in daemon.home.glob("clawpen.db*"):
        stale.unlink()
    old = sqlite3.connect(db)
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript(FIXTURE.read_text().split("\n-- rows\n")[0])
    for table, rows in tables.items():
        if rows:
            marks = ",".join("?" * len(rows[0]))
            old.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
    old.commit()
    old.close()
    # and the records must not be what saves it: remove them
    subprocess.run(
        ["rm", "-rf", str(daemon.home / "run" / "bots"), str(daemon.home / "run" / "release.json")],
        check=True,
    )

    row = daemon.ps()["rec-keeper"]
    assert row["pid"] == pid and row["state"] == "running"
    assert any(e["kind"] == "adopt" for e in daemon.events("rec-keeper"))
    assert not [e for e in all_events(daemon) if e["kind"] == "state-db"]  # nothing was rebuilt
    check = sqlite3.connect(db)
    assert check.execute("PRAGMA user_version").fetchone()[0] >= 1
    check.close()
    assert "nothing changed" in daemon.cli("up").stdout  # the migrated bot is the spec's bot
    assert (daemon.home / "run" / "bots" / "rec-keeper.json").exists()  # written again


# exits 3 until /flags/go exists; then runs until /flags/crash exists and exits 4
SCRIPT = "if [ -e /flags/go ]; then until [ -e /flags/crash ]; do sleep 0.05; done; exit 4; fi; exit 3"
CRASHER = f"""
    [bots.rec-crasher]
    command = ["sh", "-c", "{SCRIPT}"]
    filesystem = {{ ro = ["./flags:/flags"] }}
    [bots.rec-crasher.restart]
    policy = "on-failure"
    backoff_initial = "3s"
    backoff_max = "3s"
    max_restarts = 2
    window = "300s"
"""


def test_restart_count_last_exit_and_crashloop_window_survive_a_daemon_restart(daemon: DaemonCli) -> None:
    flags = daemon.spec.parent / "flags"
    flags.mkdir()
    flags.chmod(0o755)
    daemon.write(CRASHER)
    daemon.cli("up", "--detach")
    # two crashes: an immediate restart, then a restart after 1.5-3 s of backoff
    row = daemon.wait_state("rec-crasher", "backoff", timeout=15)
    assert row["restarts"] == 2 and row["last_exit"] == 3
    (flags / "go").touch()  # the third run keeps running
    row = daemon.wait_state("rec-crasher", "running", timeout=10)
    pid = row["pid"]
    assert row["restarts"] == 2 and row["last_exit"] == 3 and row["last_reason"] == "exited"

    kill_daemon(daemon)
    row = daemon.ps()["rec-crasher"]  # a new daemon adopts it
    assert row["pid"] == pid and row["state"] == "running"
    assert row["restarts"] == 2, row
    assert (row["last_exit"], row["last_reason"]) == (3, "exited"), "LAST EXIT was forgotten"
    assert " 3 (exited)" in daemon.cli("ps").stdout

    # the crashloop window still holds the two restarts: the next crash gives up at once
    (flags / "crash").touch()
    row = daemon.wait_state("rec-crasher", "crashloop", timeout=10)
    assert row["restarts"] == 2 and row["last_exit"] == 4
    events = daemon.events("rec-crasher")
    adopted = max(e["id"] for e in events if e["kind"] == "adopt")
    starts = [e for e in events if e["id"] > adopted and e.get("to_state") == "starting"]
    assert starts == [], "restarted although max_restarts restarts happened within the window"

    # a daemon restart with the bot at rest keeps its count and last exit as well
    kill_daemon(daemon)
    row = daemon.ps()["rec-crasher"]
    assert (row["state"], row["restarts"], row["last_exit"]) == ("crashloop", 2, 4)


# ------------------------------------------------------------------------- a full disk
@pytest.fixture
def small_state() -> Iterator[DaemonCli]:
    """A daemon whose state folder is a 24 MiB tmpfs (unmounted at the end)."""
    top = Path(tempfile.mkdtemp(prefix="clawpen-full-", dir="/tmp"))
    top.chmod(0o755)
    home = top / "state"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(home)], check=True)
    spec_dir = top / "spec"
    spec_dir.mkdir()
    spec_dir.chmod(0o755)
    d = DaemonCli(home, spec_dir, UID_BASE)
    try:
        yield d
    finally:
        for filler in ("filler", "filler2"):
            with contextlib.suppress(OSError):
                (home / filler).unlink()
        d.shutdown()
        for pid in daemons_of(home):
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["umount", "-l", str(home)], check=False)
        subprocess.run(["rm", "-rf", str(top)], check=False)


def fill(path: Path) -> None:
    """Write ``path`` until the file system is full."""
    chunk = b"\xff" * (1 << 20)
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
        try:
            while True:
                f.write(b"\xff" * 512)
        except OSError:
            pass
    with pytest.raises(OSError):  # control: nothing more fits
        (path.parent / "probe").write_bytes(b"x" * 8192)


SPEC_AB = '[bots.rec-a]\ncommand = ["sleep", "300"]\n[bots.rec-b]\ncommand = ["sleep", "300"]\n'


def test_stop_down_and_ps_work_and_the_daemon_starts_on_a_full_state_disk(small_state: DaemonCli) -> None:
    daemon = small_state
    daemon.write(SPEC_AB)
    daemon.cli("up")
    pid_a = daemon.wait_state("rec-a", "running")["pid"]
    pid_b = daemon.wait_state("rec-b", "running")["pid"]
    fill(daemon.home / "filler")

    assert set(daemon.ps()) == {"rec-a", "rec-b"}
    daemon.cli("stop", "rec-a")
    assert not alive(pid_a) and daemon.ps()["rec-a"]["state"] == "stopped"
    # its events are shown (stored, or kept in memory while they cannot be)
    assert [e["to_state"] for e in daemon.events("rec-a") if e["kind"] == "state"][-1] == "stopped"
    store_notes = [e["reason"] for e in all_events(daemon) if e["kind"] == "store"]
    assert store_notes and "disk is full" in store_notes[0]

    # the daemon dies and starts again on the full disk; it adopts b
    kill_daemon(daemon)
    row = daemon.ps()
    assert row["rec-b"]["pid"] == pid_b and row["rec-b"]["state"] == "running"
    assert row["rec-a"]["state"] == "stopped"  # the stop was saved (in the space of the reserve)
    # the reserve is used up now: fill what it freed too, so nothing more can be written
    fill(daemon.home / "filler2")
    daemon.cli("down")
    assert daemon.ps() == {} and not alive(pid_b)
    reasons = [e["reason"] for e in all_events(daemon)]
    assert "removed by `clawpen down`" in reasons  # kept in memory, shown all the same
    assert any("cannot be written" in r for r in reasons)

    # space returns: what was kept in memory reaches the database, by itself
    for filler in ("filler", "filler2"):
        (daemon.home / filler).unlink()
    assert wait_for(lambda: any("is writable again" in e["reason"] for e in all_events(daemon)), 15, 0.5)
    pid = daemon.pid()
    assert pid
    os.kill(pid, signal.SIGKILL)  # no clean shutdown: it must already be on disk
    assert wait_for(lambda: not alive(pid), 5)
    assert daemon.ps() == {}  # a new daemon reads the removal from the database
    assert "removed by `clawpen down`" in [e["reason"] for e in all_events(daemon)]


def test_the_store_opens_on_a_full_disk_even_without_its_index_file(tmp_path: Path) -> None:
    """A cleanly closed database has no -shm file; on a full disk SQLite cannot create one,
    so the store keeps the WAL index in memory (exclusive locking) and still serves."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        store = Store(mnt / "clawpen.db", records=mnt / "run")
        store.put_bot("web", {"base_dir": "/srv", "spec": {}}, "running", None)
        store.close()
        assert not (mnt / "clawpen.db-shm").exists()
        fill(mnt / "filler")
        warnings: list[str] = []
        store = Store(mnt / "clawpen.db", records=mnt / "run", warn=warnings.append)
        assert store.exclusive and set(store.bots()) == {"web"}
        store.set_desired("web", "stopped", manual_stop=True)  # kept in memory
        assert store.behind and store.bots()["web"].desired == "stopped"
        (mnt / "filler").unlink()
        assert store.flush(force=True) and "is writable again" in warnings[-1]
        store.close()
        assert Store(mnt / "clawpen.db").bots()["web"].desired == "stopped"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
