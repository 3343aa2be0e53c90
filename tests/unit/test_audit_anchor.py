"""The audit log's head anchored in the state database (schema 4): a version 3 database (as the
previous commit on main wrote it) migrates with its rows, and the kept heads stay bounded while
every release keeps its last one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from clawpen import audit
from clawpen.daemon import auditfacts, auditheads
from clawpen.daemon.statedb import SCHEMA_VERSION
from clawpen.daemon.store import Store

FIXTURE_V3 = Path(__file__).parent.parent / "fixtures" / "state_v3.sql"


def test_a_version_3_database_migrates_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "clawpen.db"
    db = sqlite3.connect(path)
    db.executescript(FIXTURE_V3.read_text())
    db.close()
    store = Store(path, records=tmp_path / "run")
    try:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        assert store.recovered is None
        assert [r["summary"] for r in store.releases()] == ["create web"]
        assert store.release_bots(1) == {"web": {"folders": []}}
        assert auditheads.heads(store.db) == []
        auditheads.record(store.db, 7, "ab" * 32, 1000.0)
        assert auditheads.heads(store.db) == [{"at": 1000.0, "seq": 7, "hash": "ab" * 32, "release": 1}]
    finally:
        store.close()
    release, anchors = auditfacts.read(tmp_path)  # read-only, as `clawpen audit` reads it
    assert release is not None and release.id == 1 and release.who == "root"
    assert anchors == ((7, "ab" * 32),)


def test_heads_are_bounded_and_each_release_keeps_its_last(tmp_path: Path) -> None:
    store = Store(tmp_path / "clawpen.db", records=tmp_path / "run")
    try:
        import clawpen.daemon.auditheads as mod

        mod_keep = mod.KEEP
        mod.KEEP = 5
        try:
            store.add_release("root", "/x/clawpen.toml", "", "one")
            auditheads.record(store.db, 1, "a", 1.0)  # release 1's last head
            store.add_release("root", "/x/clawpen.toml", "", "two")
            for seq in range(2, 20):
                auditheads.record(store.db, seq, str(seq), float(seq))
        finally:
            mod.KEEP = mod_keep
        kept = [h["seq"] for h in auditheads.heads(store.db)]
        assert kept == [19, 18, 17, 16, 15, 1]  # the newest KEEP, and release 1's last
    finally:
        store.close()


def test_head_of_is_the_next_records_prev(tmp_path: Path) -> None:
    first = audit.append(tmp_path, "root", "up", {})
    second = audit.append(tmp_path, "root", "stop", {})
    assert audit.head_of(first) == (1, second["prev"])
    assert audit.check_anchors(tmp_path, [audit.head_of(first), audit.head_of(second)]) == []
