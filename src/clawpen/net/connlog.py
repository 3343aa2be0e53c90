"""The gateway's connection log: every connection and DNS denial, in SQLite (WAL), batched.

One writer thread owns the database and writes whatever has queued up in one transaction, so a
connection costs the gateway a ``queue.put``. Rows older than the retention are swept hourly.
Per-bot counters (allowed, denied, bytes each way) live in memory for the metrics collector.
Denials also go to ``on_denied`` (the daemon turns them into ``egress-denied`` events), at most
one per bot per ``event_interval`` seconds; the next one says how many were folded into it.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

RETENTION_DAYS = 7.0
EVENT_INTERVAL = 10.0
SWEEP_INTERVAL = 3600.0
_BATCH = 1000
BATCH_DELAY = 0.2  # seconds the writer lets rows gather before a transaction

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
    duration REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS conn_bot_at ON conn (bot, at);
CREATE INDEX IF NOT EXISTS conn_at ON conn (at);
"""
_COLUMNS = ("at", "bot", "replica", "kind", "host", "port", "verdict", "reason", "up", "down", "duration")
_INSERT = f"INSERT INTO conn ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"  # noqa: S608
_SELECT = f"SELECT id, {', '.join(_COLUMNS)} FROM conn"  # noqa: S608 - constant column names


class ConnRecord(NamedTuple):
    """One connection (or DNS query) as the gateway saw it."""

    at: float  # when it started (epoch seconds)
    bot: str
    replica: int
    kind: str  # "proxy" (plain HTTP), "connect", "transparent", "dns"
    host: str
    port: int
    verdict: str  # "allowed" or "denied"
    reason: str  # why denied, or the rule / "open" that allowed it
    up: int = 0  # bytes from the bot
    down: int = 0  # bytes to the bot
    duration: float = 0.0


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)
    return db


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
    ) -> None:
        self.path = path
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
        with self._lock:
            s = self._stats.setdefault(rec.bot, {"allowed": 0, "denied": 0, "bytes_up": 0, "bytes_down": 0})
            s[rec.verdict if rec.verdict in ("allowed", "denied") else "denied"] += 1
            s["bytes_up"] += rec.up
            s["bytes_down"] += rec.down
            self._queued += 1
            event = rec.verdict == "denied" and self.on_denied is not None and self._due(rec.bot)
            folded = self._folded.pop(rec.bot, 0) if event else 0
        self._queue.put(rec)
        if event and self.on_denied is not None:
            self.on_denied(rec, folded)

    def _due(self, bot: str) -> bool:
        now = self.clock()
        if now - self._last_event.get(bot, float("-inf")) >= self.event_interval:
            self._last_event[bot] = now
            return True
        self._folded[bot] = self._folded.get(bot, 0) + 1
        return False

    def stats(self) -> dict[str, dict[str, int]]:
        """Per bot: allowed, denied, bytes_up, bytes_down since the gateway started."""
        with self._lock:
            return {bot: dict(s) for bot, s in self._stats.items()}

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything added so far is in the database (tests, ``net_log``)."""
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
        next_sweep = 0.0
        try:
            while True:
                first = self._queue.get()
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
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + SWEEP_INTERVAL
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("DELETE FROM conn WHERE at < ?", (self.clock() - self.retention,))
                if None in batch:
                    return
        finally:
            db.close()


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
        order = "ASC" if after_id else "DESC"
        # Only constant clauses are joined; every value is a parameter.
        sql = f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY id {order} LIMIT ?"
        rows = [dict(r) for r in db.execute(sql, [*params, limit])]
    finally:
        db.close()
    return rows if after_id else rows[::-1]
