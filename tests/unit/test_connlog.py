"""The connection log: batched SQLite writes, queries, counters, retention, event rate limit."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from clawpen.net.connlog import ConnLog, query
from clawpen.net.connrecord import ConnRecord


def rec(
    at: float, bot: str = "a", verdict: str = "allowed", host: str = "h.example", up: int = 1
) -> ConnRecord:
    return ConnRecord(at, bot, 0, "connect", host, 443, verdict, "why", up, 2 * up, 0.1)


def test_rows_counters_and_queries(tmp_path: Path) -> None:
    now = [0.0]
    log = ConnLog(tmp_path / "net" / "c.db", clock=lambda: now[0])  # rows within the retention
    log.start()
    try:
        for i in range(500):
            now[0] = 1000.0 + i  # one a second: denials are not folded
            log.add(
                rec(
                    1000.0 + i, bot="a" if i % 2 else "b", verdict="denied" if i % 5 == 0 else "allowed", up=i
                )
            )
        assert log.flush()
        assert len(query(log.path, limit=10_000)) == 500
        a_rows = query(log.path, bot="a", limit=10_000)
        assert len(a_rows) == 250 and {r["bot"] for r in a_rows} == {"a"}
        assert [r["at"] for r in a_rows] == sorted(r["at"] for r in a_rows)  # oldest first
        assert len(query(log.path, denied=True, limit=10_000)) == 100
        tail = query(log.path, limit=3)
        assert [r["at"] for r in tail] == [1497.0, 1498.0, 1499.0]
        assert len(query(log.path, since=1490.0)) == 10
        newer = query(log.path, after_id=tail[0]["id"])
        assert [r["at"] for r in newer] == [1498.0, 1499.0]
        stats = log.stats()
        assert stats["a"]["allowed"] + stats["a"]["denied"] == 250
        assert stats["a"]["denied"] == stats["b"]["denied"] == 50
        assert stats["a"]["bytes_up"] == sum(range(1, 500, 2))
        assert stats["a"]["bytes_down"] == 2 * stats["a"]["bytes_up"]
    finally:
        log.close()
    db = sqlite3.connect(log.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_retention_sweeps_old_rows(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    now = [100 * 86400.0]
    log = ConnLog(path, retention_days=7, clock=lambda: now[0])
    log.start()
    log.add(rec(now[0] - 8 * 86400))  # older than the retention
    log.add(rec(now[0] - 86400))
    log.flush()
    log.close()
    log = ConnLog(path, retention_days=7, clock=lambda: now[0])
    log.start()  # the sweep runs with the first batch
    log.add(rec(now[0]))
    log.flush()
    log.close()
    assert [r["at"] for r in query(path)] == [now[0] - 86400, now[0]]


def test_denial_events_are_rate_limited_per_bot(tmp_path: Path) -> None:
    now = [0.0]
    events: list[tuple[str, int]] = []
    log = ConnLog(
        tmp_path / "c.db", on_denied=lambda r, folded: events.append((r.bot, folded)), clock=lambda: now[0]
    )
    log.start()
    try:
        for _ in range(100):
            log.add(rec(now[0], verdict="denied"))  # a flood from bot a
        log.add(rec(now[0], bot="b", verdict="denied"))
        log.add(rec(now[0], verdict="allowed"))
        assert events == [("a", 0), ("b", 0)]
        now[0] = 11.0
        log.add(rec(now[0], verdict="denied"))
        assert events[-1] == ("a", 99)  # the next event says how many were folded into it
        assert log.stats()["a"]["denied"] == 101  # every denial still counted and logged
        log.flush()
        rows = query(log.path, bot="a", denied=True, limit=1000)
        assert sum(r["count"] for r in rows) == 101 and len(rows) == 2  # folded per second
    finally:
        log.close()


def test_query_of_missing_log_is_empty(tmp_path: Path) -> None:
    assert query(tmp_path / "none.db") == []
