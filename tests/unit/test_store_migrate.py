"""The daemon's state database: schema versions and migration, a corrupt file moved aside and
rebuilt from the bots' JSON records, writes that fail for want of space, and the restart
tracker's state surviving a daemon restart."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest

from clawpen.daemon.records import RECORD_FORMAT, Records
from clawpen.daemon.server import Daemon
from clawpen.daemon.statedb import SCHEMA_VERSION
from clawpen.daemon.store import RESERVE_BYTES, Instance, Store
from clawpen.errors import HostError
from clawpen.supervisor.backoff import RestartPolicy, RestartTracker, TrackerState
from clawpen.supervisor.states import BotState

FIXTURE = Path(__file__).parent.parent / "fixtures" / "state_v0.sql"
POLICY = {"base_dir": "/srv/bots", "spec": {"command": ["sleep", "300"]}}


def old_database(path: Path, *, rows: bool = True) -> None:
    """A database exactly as the commit before schema versions wrote it."""
    text = FIXTURE.read_text()
    if not rows:
        text = text.split("\n-- rows\n")[0]
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(text)
    db.close()


def user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def populated(tmp_path: Path) -> Store:
    store = Store(tmp_path / "clawpen.db", records=tmp_path / "run")
    release = store.add_release(
        "root", "/srv/bots/clawpen.toml", '[bots.web]\ncommand = ["true"]\n', "create web"
    )
    store.put_bot("web", POLICY, "running", release)
    store.put_bot("idle", POLICY, "running", release)
    store.set_desired("idle", "stopped", manual_stop=True)
    tracker = TrackerState(2, (1000.0, 1010.0), False, 1020.0, 1020.0).to_json()
    store.save_instance(
        Instance("web", 0, "running", 11, 12, 13, "web.0", 1020.0, 2, 3, "exited", None, tracker)
    )
    for i in range(300):  # enough pages that a cut file loses some
        store.add_event("state", f"event {i} " + "x" * 200, bot="web", replica=0)
    return store


# ------------------------------------------------------------------------- schema versions
def test_a_database_of_the_previous_release_opens_migrated_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "clawpen.db"
    old_database(path)
    assert user_version(path) == 0
    store = Store(path, records=tmp_path / "run")
    assert user_version(path) == SCHEMA_VERSION
    assert store.recovered is None  # nothing was wrong with it
    bot = store.bots()["web"]
    assert bot.policy == POLICY and bot.desired == "running" and bot.release_id == 1
    assert bot.spec_hash == "feedfacefeedface"  # kept as written: `up` sees no change
    (inst,) = store.instances()
    assert inst == Instance(
        "web", 0, "running", 4242, 4243, 987654, "web.0", 1700000100.0, 3, 1, "exited", None
    )
    assert inst.tracker is None
    assert [e.id for e in store.events()] == [1, 2, 7]
    assert store.latest_spec() == ("/srv/bots/clawpen.toml", '[bots.web]\ncommand = ["sleep", "300"]\n')
    # it writes the new column, and ids go on from the old ones
    store.save_instance(inst._replace(tracker=TrackerState(1).to_json()))
    assert store.add_event("note", "after the migration").id == 8
    store.close()
    again = Store(path)
    assert TrackerState.from_json(again.instances()[0].tracker) == TrackerState(1)
    assert [e.id for e in again.events()] == [1, 2, 7, 8]
    again.close()


def test_a_database_of_a_newer_clawpen_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "clawpen.db"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(HostError) as err:
        Store(path)
    assert "newer clawpen" in err.value.hint and str(path) == err.value.where
    assert path.exists() and not list(tmp_path.glob("clawpen.db.corrupt-*"))


# ------------------------------------------------------------------------- corruption
def _garble(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(b"this is no sqlite database!" * 40)


def _cut(path: Path) -> None:
    size = path.stat().st_size
    assert size > 40_000
    with open(path, "r+b") as f:
        f.truncate(size // 2)


@pytest.mark.parametrize("damage", [_garble, _cut], ids=["garbled", "truncated"])
def test_a_corrupt_database_is_moved_aside_and_rebuilt_from_the_records(tmp_path: Path, damage) -> None:
    store = populated(tmp_path)
    before_bots, before_insts = store.bots(), store.instances()
    store.close()
    path = tmp_path / "clawpen.db"
    damage(path)
    # control: SQLite itself now refuses the file
    with pytest.raises(sqlite3.DatabaseError):
        db = sqlite3.connect(path)
        try:
            rows = db.execute("PRAGMA quick_check").fetchall()
            assert rows == [("ok",)], rows
        finally:
            db.close()

    rebuilt = Store(path, records=tmp_path / "run")
    (moved,) = tmp_path.glob("clawpen.db.corrupt-*")
    assert rebuilt.recovered is not None
    assert rebuilt.recovered.startswith("state database was corrupt (")
    assert f"moved to {moved}" in rebuilt.recovered
    assert "rebuilt from running sandboxes" in rebuilt.recovered and "idle, web" in rebuilt.recovered
    assert "release history cannot be rebuilt" in rebuilt.recovered
    # the bots, their desired state and their instances (tracker included) are back
    assert {n: r._replace(release_id=None) for n, r in before_bots.items()} == rebuilt.bots()
    assert rebuilt.instances() == before_insts
    assert rebuilt.bots()["idle"].desired == "stopped" and rebuilt.bots()["idle"].manual_stop
    # the newest spec is kept (the gateway and `up` diffs need it); the history is not
    assert [r["id"] for r in rebuilt.releases()] == [1]
    assert rebuilt.latest_spec() == ("/srv/bots/clawpen.toml", '[bots.web]\ncommand = ["true"]\n')
    rebuilt.close()
    # the new file is sound and is not rebuilt again
    assert Store(path, records=tmp_path / "run").recovered is None


def test_a_corrupt_database_without_records_starts_empty_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "clawpen.db"
    path.write_bytes(b"garbage" * 1000)
    store = Store(path, records=tmp_path / "run")
    assert store.recovered is not None and "corrupt (file is not a database)" in store.recovered
    assert "starts empty" in store.recovered
    assert store.bots() == {} and (tmp_path / "clawpen.db").exists()
    assert len(list(tmp_path.glob("clawpen.db.corrupt-*"))) == 1


def test_a_deleted_database_is_rebuilt_from_the_records(tmp_path: Path) -> None:
    store = populated(tmp_path)
    store.close()
    for leftover in tmp_path.glob("clawpen.db*"):
        leftover.unlink()
    again = Store(tmp_path / "clawpen.db", records=tmp_path / "run")
    assert again.recovered is not None and again.recovered.startswith("state database was missing or empty")
    assert set(again.bots()) == {"web", "idle"}
    # a first start (no records) says nothing
    assert Store(tmp_path / "other.db", records=tmp_path / "none").recovered is None


def test_records_follow_every_change_and_skip_an_unknown_format(tmp_path: Path) -> None:
    store = populated(tmp_path)
    record = json.loads((tmp_path / "run" / "bots" / "web.json").read_text())
    assert record["format"] == RECORD_FORMAT and record["policy"] == POLICY
    assert record["instances"][0]["pid"] == 11 and record["instances"][0]["restarts"] == 2
    assert (tmp_path / "run" / "bots" / "web.json").stat().st_mode & 0o777 == 0o600
    store.remove_bot("idle")
    assert not (tmp_path / "run" / "bots" / "idle.json").exists()
    store.close()
    (tmp_path / "run" / "bots" / "web.json").write_text(json.dumps({**record, "format": 99}))
    bots, release, problems = Records(tmp_path / "run").load()
    assert bots == [] and release is not None
    assert len(problems) == 1 and "format 99 unknown" in problems[0]
    assert not list((tmp_path / "run" / "bots").glob(".*tmp"))  # no temporary file left


# ------------------------------------------------------------------------- a full disk
def _fill(store: Store) -> None:
    """Make every new page fail with SQLITE_FULL, as a full disk does."""
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count={pages}")


def test_writes_on_a_full_disk_are_kept_in_memory_and_written_later(tmp_path: Path) -> None:
    warnings: list[str] = []
    store = populated(tmp_path)
    store.warn = warnings.append
    _fill(store)
    assert store.reserve.stat().st_size == RESERVE_BYTES  # set aside while there was room
    first = store.add_event("state", "y" * 3000, bot="web")  # needs a new page: fails
    assert not store.reserve.exists()  # freed to make room, but the database is still full
    assert store.behind and len(warnings) == 2
    assert "used the state's reserve" in warnings[0] and "cannot be written" in warnings[1]
    # a stop and a removal still "work": what is read reflects them
    store.set_desired("web", "stopped", manual_stop=True)
    store.remove_bot("idle")
    last = store.add_event("remove", "removed by `clawpen down`", bot="idle")
    assert store.bots()["web"].desired == "stopped" and "idle" not in store.bots()
    assert [e.id for e in store.events(limit=2)] == [first.id, last.id]
    assert store.events(bot="idle")[-1].reason == "removed by `clawpen down`"
    # a release needs the disk: refused with a clear error, nothing written
    with pytest.raises(HostError) as err:
        store.add_release("root", "/x.toml", "[bots]\n", "nothing")
    assert "cannot record a release" in err.value.what and "free some space" in err.value.hint
    assert len(warnings) == 2  # warned once, not for every write
    # control: the database on disk does not have them yet
    db = sqlite3.connect(tmp_path / "clawpen.db")
    assert db.execute("SELECT desired FROM bots WHERE name='web'").fetchone() == ("running",)
    db.close()
    # space returns: the next flush writes everything, in order
    store.db.execute("PRAGMA max_page_count=1073741823")
    assert store.flush(force=True) and not store.behind
    assert "is writable again" in warnings[-1]
    store.keep_reserve()
    assert store.reserve.stat().st_size == RESERVE_BYTES  # set aside again
    store.close()
    again = Store(tmp_path / "clawpen.db")
    assert again.bots()["web"].desired == "stopped" and "idle" not in again.bots()
    assert again.instances("idle") == []
    assert [e.id for e in again.events(limit=2)] == [first.id, last.id]


def test_the_event_ring_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("clawpen.daemon.store.RETRY_AFTER", 3600.0)
    warnings: list[str] = []
    store = Store(tmp_path / "clawpen.db", warn=warnings.append)
    _fill(store)
    limit = store._unsaved.maxlen or 0
    for i in range(limit + 50):
        store.add_event("log", "z" * 5000 + str(i))  # more than a page: each needs a new one
    assert len(store.events(limit=limit * 2)) == limit
    assert store.events(limit=1)[0].reason.endswith(str(limit + 49))
    store.db.execute("PRAGMA max_page_count=1073741823")
    assert store.flush(force=True)
    assert "50 older events were dropped" in warnings[-1]


# ------------------------------------------------------------------------- restart tracker
def test_the_crashloop_window_survives_a_daemon_restart() -> None:
    policy = RestartPolicy("on-failure", 1.0, 8.0, max_restarts=3, window=300.0)
    tracker = RestartTracker(policy, jitter="none")
    now = 1000.0
    for _ in range(3):
        tracker.record_started(now)
        decision = tracker.record_exit(1, "exited", now + 1)
        assert decision.restart
        now += 2 + decision.delay
    tracker.record_started(now)
    saved = tracker.snapshot().to_json()
    restored = RestartTracker(policy, jitter="none", state=TrackerState.from_json(saved))
    assert restored.snapshot() == tracker.snapshot()
    assert restored.restarts_in_window(now) == 3 and restored.attempt == 3
    assert restored.record_exit(1, "exited", now + 1).next_state is BotState.CRASHLOOP
    # control: a tracker that forgot (what a daemon restart did before) restarts it
    assert RestartTracker(policy, jitter="none").record_exit(1, "exited", now + 1).restart


@pytest.mark.parametrize("text", [None, "", "not json", "[]", '{"v": 99, "attempt": 1}', '{"v": 1}'])
def test_unreadable_tracker_state_starts_afresh(text: str | None) -> None:
    assert TrackerState.from_json(text) is None


def test_an_action_is_not_failed_by_an_audit_log_that_cannot_be_written(tmp_path: Path) -> None:
    store = Store(tmp_path / "clawpen.db")
    daemon = Daemon(store, lambda _d: SimpleNamespace(state_dir=tmp_path))  # type: ignore[arg-type,return-value]
    assert asyncio.run(daemon.dispatch("token_ls", {}, "root")) == []
    assert (tmp_path / "audit.log").read_text().count("\n") == 1  # control: audited
    (tmp_path / "audit.log").unlink()
    (tmp_path / "audit.log").mkdir()  # appending now fails with an OSError, as on a full disk
    assert asyncio.run(daemon.dispatch("token_ls", {}, "root")) == []
    note = store.events()[-1]
    assert (
        note.kind == "audit" and "could not be written" in note.reason and "root did token_ls" in note.reason
    )
    store.close()


def test_events_of_two_stores_on_one_database_are_all_kept(tmp_path: Path) -> None:
    """The daemon's Store and a CLI command's (firewall) on the same database: the one whose
    highest id is stale moves its events past the other's instead of failing as duplicates."""
    path = tmp_path / "clawpen.db"
    daemon, cli = Store(path), Store(path)
    daemon.add_event("note", "from the daemon")
    cli.add_event("firewall", "from the CLI")  # the same next id as the daemon's first
    later = daemon.add_event("note", "the daemon again")
    reasons = [e.reason for e in Store(path).events(limit=10)]
    assert sorted(reasons) == ["from the CLI", "from the daemon", "the daemon again"]
    assert later.id == 2  # handed out before the save; the saved row moved past the CLI's
    ids = [e.id for e in Store(path).events(limit=10)]
    assert len(set(ids)) == 3
    daemon.close()
    cli.close()
