"""The gateway's connection log: every connection and DNS denial, in SQLite (WAL), batched.

One writer thread owns the database and writes whatever has queued up in one transaction, so a
connection costs the gateway a ``queue.put``. Rows older than the retention are swept hourly.
Per-bot counters (allowed, denied, bytes each way) live in memory for the metrics collector.
Denials also go to ``on_denied`` (the daemon turns them into ``egress-denied`` events), at most
one per bot per ``event_interval`` seconds; the next one says how many were folded into it.

Budgets (:mod:`clawpen.net.connbudget`): denials are folded per (bot, name, reason) and second
into one row with a ``count``; every bot has a row and byte budget per day (past it: one marker
row a minute, counted); the database as a whole is held under ``max_bytes`` by deleting the
oldest rows. Allowed connections stay one row each (under the bot's daily budget).

Schema versions (``PRAGMA user_version``): 0/1 had no ``count`` column; 2 adds it (existing rows
count 1). An older database is migrated forward when the log starts.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clawpen.net.connbudget import MAX_DB_BYTES, Aggregator, DailyBudget
from clawpen.net.connrecord import ConnRecord

RETENTION_DAYS = 7.0
EVENT_INTERVAL = 10.0
SWEEP_INTERVAL = 3600.0
_BATCH = 1000
BATCH_DELAY = 0.2  # seconds the writer lets rows gather before a transaction
SIZE_CHECK_INTERVAL = 10.0  # seconds between checks of the database size
SCHEMA_VERSION = 2

_SCHEMA = """
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
    duration REAL NOT NULL,
    count INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS conn_bot_at ON conn (bot, at);
CREATE INDEX IF NOT EXISTS conn_at ON conn (at);
"""
_COLUMNS = (
    "at", "bot", "replica", "kind", "host", "port", "verdict", "reason", "up", "down", "duration", "count"
)  # fmt: skip
_INSERT = f"INSERT INTO conn ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"  # noqa: S608
_SELECT = f"SELECT id, {', '.join(_COLUMNS)} FROM conn"  # noqa: S608 - constant column names
_SELECT_V1 = _SELECT.replace(", count FROM", ", 1 AS count FROM")  # a database not migrated yet


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)
    migrate(db)
    return db


def migrate(db: sqlite3.Connection) -> None:
    """Bring a database of an older schema forward (in one transaction)."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version >= SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        if "count" not in _columns(db):
            db.execute("ALTER TABLE conn ADD COLUMN count INTEGER NOT NULL DEFAULT 1")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _columns(db: sqlite3.Connection) -> set[str]:
    return {str(r[1]) for r in db.execute("PRAGMA table_info(conn)")}


class ConnLog:
    """Queue + writer thread + counters. ``add`` is safe from any thread."""

    def __init__(
        self,
        path: Path,
        *,
        retention_days: float = RETENTION_DAYS,
        on_denied: Callable[[ConnRecord, int], None] | None = None,
        event_interval: float = EVENT_INTERVAL,
        clock: Callable[[], float] = time.time,
        aggregator: Aggregator | None = None,
        budget: DailyBudget | None = None,
        max_bytes: int = MAX_DB_BYTES,
        size_check_interval: float = SIZE_CHECK_INTERVAL,
    ) -> None:
        self.path = path
        self.aggregator = aggregator if aggregator is not None else Aggregator()
        self.budget = budget if budget is not None else DailyBudget()
        self.max_bytes = max_bytes
        self.size_check_interval = size_check_interval
        self.retention = retention_days * 86400.0
        self.on_denied = on_denied
        self.event_interval = event_interval
        self.clock = clock
        self._queue: queue.Queue[ConnRecord | None] = queue.Queue()
        self._lock = threading.Lock()
        self._stats: dict[str, dict[str, int]] = {}
        self._last_event: dict[str, float] = {}
        self._folded: dict[str, int] = {}
        self._thread: threading.Thread | None = None
        self._flushed = threading.Condition()
        self._stop_wait = threading.Event()  # set to cut the gathering pause short
        self._written = 0
        self._queued = 0

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = connect(self.path)  # fail here, in the caller, if the path is unusable
        self._thread = threading.Thread(target=self._run, args=(db,), name="clawpen-connlog", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._stop_wait.set()
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    def add(self, rec: ConnRecord) -> None:
        """Count and log ``rec``: a denial is folded into its interval's row, an allowed
        connection is a row of its own; both within the bot's daily budget."""
        with self._lock:
            s = self._stats.setdefault(rec.bot, {"allowed": 0, "denied": 0, "bytes_up": 0, "bytes_down": 0})
            s[rec.verdict if rec.verdict in ("allowed", "denied") else "denied"] += rec.times
            s["bytes_up"] += rec.up
            s["bytes_down"] += rec.down
            event = rec.verdict == "denied" and self.on_denied is not None and self._due(rec.bot, rec.times)
            folded = self._folded.pop(rec.bot, 0) if event else 0
            now = self.clock()
            # The intervals that are over go first, so rows stay in order.
            rows = [r for r in self.aggregator.due(now) if self.budget.admit(r, now)]
            if rec.verdict == "denied":
                self.aggregator.add(rec, now)
            elif self.budget.admit(rec, now):
                rows.append(rec)
            self._put_locked(rows + self.budget.markers(now))
        if event and self.on_denied is not None:
            self.on_denied(rec, folded)

    def _drain(self, force: bool = False) -> None:
        """Queue the folded denials of intervals that are over, and due budget markers."""
        with self._lock:
            self._drain_locked(self.clock(), force)

    def _drain_locked(self, now: float, force: bool) -> None:
        rows = [r for r in self.aggregator.due(now, force) if self.budget.admit(r, now)]
        self._put_locked(rows + self.budget.markers(now, force))

    def _put_locked(self, rows: list[ConnRecord]) -> None:
        self._queued += len(rows)
        for r in rows:
            self._queue.put(r)

    def _due(self, bot: str, count: int = 1) -> bool:
        now = self.clock()
        if now - self._last_event.get(bot, float("-inf")) >= self.event_interval:
            self._last_event[bot] = now
            self._folded[bot] = self._folded.get(bot, 0) + count - 1
            return True
        self._folded[bot] = self._folded.get(bot, 0) + count
        return False

    def stats(self) -> dict[str, dict[str, int]]:
        """Per bot: allowed, denied, bytes_up, bytes_down since the gateway started."""
        with self._lock:
            return {bot: dict(s) for bot, s in self._stats.items()}

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything added so far is in the database (tests, ``net_log``); folded
        denials of the current interval are written now."""
        self._drain(force=True)
        with self._lock:
            target = self._queued
        self._stop_wait.set()
        deadline = time.monotonic() + timeout
        with self._flushed:
            while self._written < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._flushed.wait(left)
        return True

    def _run(self, db: sqlite3.Connection) -> None:
        next_sweep = next_size = 0.0
        try:
            while True:
                try:
                    first = self._queue.get(timeout=self.aggregator.interval)
                except queue.Empty:
                    self._drain()
                    continue
                if first is not None and self._queue.qsize() < _BATCH:
                    self._stop_wait.wait(BATCH_DELAY)  # gather: one transaction for many rows
                self._stop_wait.clear()
                batch = [first]
                while len(batch) < _BATCH:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                rows = [r for r in batch if r is not None]
                if rows:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("BEGIN")
                        db.executemany(_INSERT, rows)
                        db.execute("COMMIT")
                with self._flushed:
                    self._written += len(rows)
                    self._flushed.notify_all()
                self._drain()
                if time.monotonic() >= next_size:
                    next_size = time.monotonic() + self.size_check_interval
                    with contextlib.suppress(sqlite3.Error):
                        hold_size(db, self.max_bytes)
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + SWEEP_INTERVAL
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("DELETE FROM conn WHERE at < ?", (self.clock() - self.retention,))
                if None in batch:
                    return
        finally:
            db.close()


def hold_size(db: sqlite3.Connection, max_bytes: int) -> int:
    """Delete the oldest rows while the database's pages in use exceed ``max_bytes`` (down to
    three quarters of it, so this runs seldom); freed pages are reused. The rows deleted."""
    page = int(db.execute("PRAGMA page_size").fetchone()[0])
    used = page * (
        int(db.execute("PRAGMA page_count").fetchone()[0])
        - int(db.execute("PRAGMA freelist_count").fetchone()[0])
    )
    if used <= max_bytes:
        return 0
    low, high = db.execute("SELECT min(id), max(id) FROM conn").fetchone()
    if low is None:
        return 0
    share = 1.0 - 0.75 * max_bytes / used  # the share of rows to go
    cut = low + max(1, int((high - low + 1) * share))
    return db.execute("DELETE FROM conn WHERE id < ?", (cut,)).rowcount


def query(
    path: Path,
    *,
    bot: str | None = None,
    since: float | None = None,
    denied: bool = False,
    after_id: int = 0,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """Rows of the log, oldest first (the newest ``limit`` when ``after_id`` is 0)."""
    if not path.exists():
        return []
    where = ["id > ?"]
    params: list[Any] = [after_id]
    if bot:
        where.append("bot = ?")
        params.append(bot)
    if since is not None:
        where.append("at >= ?")
        params.append(since)
    if denied:
        where.append("verdict = 'denied'")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        db.row_factory = sqlite3.Row
        select = _SELECT if "count" in _columns(db) else _SELECT_V1
        order = "ASC" if after_id else "DESC"
        # Only constant clauses are joined; every value is a parameter.
        sql = f"{select} WHERE {' AND '.join(where)} ORDER BY id {order} LIMIT ?"
        rows = [dict(r) for r in db.execute(sql, [*params, limit])]
    finally:
        db.close()
    return rows if after_id else rows[::-1]


# Denials an allowlist entry would have let through (the rest, such as a refused address, would
# stay denied whatever the list says); DNS denials have port 0.
_WANTED = (
    "verdict = 'allowed' OR (verdict = 'denied' AND (reason LIKE '%not in the egress allowlist%' "
    "OR reason LIKE '%(not in the allowlist)%'))"
)


def reached(path: Path, bot: str, since: float | None = None) -> list[tuple[str, int, str, int]]:
    """(host, port, verdict, count) of every destination ``bot`` reached or was denied for want
    of an allowlist entry, summed over the log (since ``since``), for ``clawpen net suggest``."""
    if not path.exists():
        return []
    params: list[Any] = [bot, float("-inf") if since is None else since]
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        count = "count" if "count" in _columns(db) else "1"
        sql = (
            f"SELECT host, port, verdict, sum({count}) FROM conn WHERE bot = ? AND at >= ? "  # noqa: S608
            f"AND ({_WANTED}) GROUP BY host, port, verdict"
        )
        return [(str(h), int(p), str(v), int(n)) for h, p, v, n in db.execute(sql, params)]
    finally:
        db.close()
