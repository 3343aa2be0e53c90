"""Budgets of the connection log: denials folded per second, caps per bot per day, a total size
cap, and the forward migration of a database of the previous schema (no ``count`` column)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from clawpen.cli_net import render
from clawpen.net.connbudget import NAMES_PER_INTERVAL, OTHER_NAMES, OVER_BUDGET, Aggregator, DailyBudget
from clawpen.net.connlog import SCHEMA_VERSION, ConnLog, query
from clawpen.net.connrecord import ConnRecord

# The schema before version 2 (git history of src/clawpen/net/connlog.py), kept here verbatim.
_OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS conn (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    bot TEXT NOT NULL,
    replica INTEGER NOT NULL,
    kind TEXT NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    reason TEXT NOT NULL,
    up INTEGER NOT NULL,
    down INTEGER NOT NULL,
    duration REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS conn_bot_at ON conn (bot, at);
CREATE INDEX IF NOT EXISTS conn_at ON conn (at);
"""

DENY = "name not in the egress allowlist (NXDOMAIN, not forwarded)"


def denied(at: float, host: str = "example.com", bot: str = "attacker") -> ConnRecord:
    return ConnRecord(at, bot, 0, "dns", host, 53, "denied", DENY)


def allowed(at: float, host: str = "api.example.com", bot: str = "victim") -> ConnRecord:
    return ConnRecord(at, bot, 0, "connect", host, 443, "allowed", "*.example.com:443", 10, 20, 0.5)


def test_a_flood_of_one_name_is_one_row_per_second(tmp_path: Path) -> None:
    now = [1000.0]
    log = ConnLog(tmp_path / "c.db", clock=lambda: now[0])
    log.start()
    try:
        for i in range(7564):
            log.add(denied(1000.0 + i / 7564))  # one second of a flood
        log.add(allowed(1000.5))
        now[0] = 1001.0
        for i in range(3000):
            log.add(denied(1001.0 + i / 3000))  # the next second
        log.add(denied(1001.2, bot="other"))
        assert log.flush()
        rows = query(log.path, denied=True, limit=100)
        flood = [(r["host"], r["count"]) for r in rows if r["bot"] == "attacker"]
        assert flood == [("example.com", 7564), ("example.com", 3000)]
        assert [r["count"] for r in rows if r["bot"] == "other"] == [1]
        assert log.stats()["attacker"]["denied"] == 10564  # every denial counted in the metrics
        ok = query(log.path, bot="victim")
        assert len(ok) == 1 and ok[0]["count"] == 1  # allowed connections stay one row each
        line = render(rows[0])
        assert "DENY" in line and "example.com:53 x7564" in line
    finally:
        log.close()


def test_random_names_fold_into_a_bounded_number_of_rows(tmp_path: Path) -> None:
    log = ConnLog(tmp_path / "c.db", clock=lambda: 5000.0)
    log.start()
    try:
        for i in range(5000):
            log.add(denied(4000.0 + i / 10000, host=f"{i:08x}.exfil.example"))  # all in one second
        assert log.flush()
        rows = query(log.path, limit=1000)
        assert len(rows) == NAMES_PER_INTERVAL + 1
        assert sum(r["count"] for r in rows) == 5000
        other = [r for r in rows if r["host"] == OTHER_NAMES]
        assert len(other) == 1 and other[0]["count"] == 5000 - NAMES_PER_INTERVAL
        assert {r["host"] for r in rows if r["count"] == 1} == {
            f"{i:08x}.exfil.example" for i in range(NAMES_PER_INTERVAL)
        }  # the first names of the second stay visible by name
    finally:
        log.close()


def test_writer_writes_folded_rows_when_their_second_is_over(tmp_path: Path) -> None:
    """No flush: the writer thread itself drains an interval once the clock has passed it."""
    now = [100.0]
    log = ConnLog(tmp_path / "c.db", clock=lambda: now[0], aggregator=Aggregator(interval=0.2))
    log.start()
    try:
        for _ in range(50):
            log.add(denied(100.0))
        time.sleep(0.5)
        assert query(log.path) == []  # the interval is not over yet: folded, nothing written
        now[0] = 101.0
        deadline = time.monotonic() + 5
        while not query(log.path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [r["count"] for r in query(log.path)] == [50]
    finally:
        log.close()


def test_daily_row_budget_then_one_marker_per_interval(tmp_path: Path) -> None:
    day = 20_000 * 86400.0
    now = [day + 10.0]
    budget = DailyBudget(rows=10, size=1 << 20, marker_interval=60.0)
    log = ConnLog(tmp_path / "c.db", clock=lambda: now[0], budget=budget)
    log.start()
    try:
        for i in range(100):
            log.add(allowed(now[0] + i / 1000))
        log.add(allowed(now[0], bot="quiet"))  # another bot's budget is its own
        assert log.flush()
        rows = query(log.path, bot="victim", limit=1000)
        assert [r["verdict"] for r in rows] == ["allowed"] * 10 + ["budget"]
        marker = rows[-1]
        assert marker["host"] == OVER_BUDGET and marker["count"] == 90
        assert "SKIP" in render(marker) and "x90" in render(marker)
        assert len(query(log.path, bot="quiet")) == 1
        # Within the marker interval: folded into the next marker, no row.
        now[0] += 30
        for i in range(40):
            log.add(denied(now[0] + i, host=f"n{i}.example", bot="victim"))
        log._drain()  # what the writer does; flush would force the marker out
        time.sleep(0.4)
        assert len(query(log.path, bot="victim", limit=1000)) == 11
        now[0] += 61  # the marker started 61 s ago: its interval is over
        log.add(allowed(now[0]))
        assert log.flush()
        rows = query(log.path, bot="victim", limit=1000)
        assert len(rows) == 12 and rows[-1]["verdict"] == "budget" and rows[-1]["count"] == 41
        # The next day the bot has its budget again.
        now[0] = day + 86400 + 5
        log.add(allowed(now[0]))
        assert log.flush()
        assert query(log.path, bot="victim", limit=1)[0]["verdict"] == "allowed"
    finally:
        log.close()


def test_daily_byte_budget(tmp_path: Path) -> None:
    budget = DailyBudget(rows=1_000_000, size=10_000)
    log = ConnLog(tmp_path / "c.db", clock=lambda: 500.0, budget=budget)
    log.start()
    try:
        for i in range(200):
            log.add(allowed(400.0 + i, host=f"{i:04d}-" + "x" * 200 + ".example"))
        assert log.flush()
        rows = query(log.path, limit=1000)
        kept = [r for r in rows if r["verdict"] == "allowed"]
        assert 20 <= len(kept) < 50  # ~290 bytes a row against 10,000 bytes
        assert budget.used("victim")[1] <= 10_000
        assert rows[-1]["verdict"] == "budget" and rows[-1]["count"] == 200 - len(kept)
    finally:
        log.close()


def test_database_size_cap_deletes_the_oldest_rows(tmp_path: Path) -> None:
    cap = 256 << 10
    path = tmp_path / "c.db"
    log = ConnLog(
        path,
        clock=lambda: 2e6,
        budget=DailyBudget(rows=10**9, size=10**12),
        max_bytes=cap,
        size_check_interval=0.0,
    )
    log.start()
    try:
        for i in range(20_000):
            log.add(allowed(1e6 + i, host=f"host-{i}.example", bot=f"b{i % 7}"))
            if i % 2000 == 1999:
                assert log.flush()
        assert log.flush()
        log.add(allowed(1e6 + 20_000))  # one more batch: the writer checks the size after it
        assert log.flush()
    finally:
        log.close()
    db = sqlite3.connect(path)
    try:
        page = db.execute("PRAGMA page_size").fetchone()[0]
        used = page * (
            db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
        )
        low, high, n = db.execute("SELECT min(at), max(at), count(*) FROM conn").fetchone()
    finally:
        db.close()
    assert used <= cap + (64 << 10)
    assert path.stat().st_size <= 2 * cap  # freed pages are reused: the file does not grow on
    assert high == 1e6 + 20_000 and low > 1e6 + 1000 and 0 < n < 20_000  # the oldest went first


def test_old_database_is_migrated_forward(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    old = sqlite3.connect(path)
    old.executescript(_OLD_SCHEMA)
    old.execute(
        "INSERT INTO conn (at, bot, replica, kind, host, port, verdict, reason, up, down, duration)"
        " VALUES (1.0, 'a', 0, 'dns', 'old.example', 53, 'denied', 'no', 0, 0, 0.0)"
    )
    old.commit()
    old.close()
    before = query(path)  # the CLI may read a log no daemon has migrated yet
    assert [(r["host"], r["count"]) for r in before] == [("old.example", 1)]
    log = ConnLog(path, clock=lambda: 10.0)
    log.start()
    try:
        for _ in range(3):
            log.add(denied(5.0, host="new.example", bot="a"))
        assert log.flush()
    finally:
        log.close()
    assert [(r["host"], r["count"]) for r in query(path)] == [("old.example", 1), ("new.example", 3)]
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert "count" in {r[1] for r in db.execute("PRAGMA table_info(conn)")}
    finally:
        db.close()
    again = ConnLog(path, clock=lambda: 10.0)  # a migrated database opens as it is
    again.start()
    again.close()
    assert len(query(path)) == 2
