"""The alerting's state in the metrics database: alerts, silences and notification deliveries.

:class:`AlertTables` is a part of :class:`clawpen.metrics.storage.Storage` (same connection,
same lock); it is kept apart from the samples' chunk encoding and downsampling.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable
from typing import Any

from clawpen.notify.base import Delivery

ALERT_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts(id INTEGER PRIMARY KEY, state TEXT NOT NULL, updated REAL NOT NULL,
    data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS silences(rule TEXT PRIMARY KEY, until REAL NOT NULL, by TEXT NOT NULL,
    at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries(id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,
    notifier TEXT NOT NULL, kind TEXT NOT NULL, alert_id INTEGER, ok INTEGER NOT NULL,
    attempts INTEGER NOT NULL, error TEXT NOT NULL);
"""
KEEP_RESOLVED = 30 * 86400  # resolved alerts and deliveries are kept this long (seconds)


class AlertTables:
    """Alerts, silences and deliveries (the owner gives ``_db``, ``_lock`` and ``clock``)."""

    _db: sqlite3.Connection
    _lock: threading.Lock
    clock: Callable[[], float]

    def _prune_alert_tables(self, now: float) -> None:
        """Drop old deliveries and resolved alerts, and silences that ended (lock held)."""
        self._db.execute("DELETE FROM deliveries WHERE at < ?", (now - KEEP_RESOLVED,))
        self._db.execute("DELETE FROM alerts WHERE state='resolved' AND updated < ?", (now - KEEP_RESOLVED,))
        self._db.execute("DELETE FROM silences WHERE until < ?", (now,))

    def save_alerts(self, alerts: Iterable[dict[str, Any]]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            for a in alerts:
                self._db.execute(
                    "INSERT OR REPLACE INTO alerts(id, state, updated, data) VALUES (?,?,?,?)",
                    (a["id"], a["state"], self.clock(), json.dumps(a)),
                )
            self._db.execute("COMMIT")

    def delete_alerts(self, ids: Iterable[int]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM alerts WHERE id=?", [(i,) for i in ids])

    def alerts(
        self, states: tuple[str, ...] = ("pending", "firing", "resolved"), limit: int = 200
    ) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT state, data FROM alerts ORDER BY id DESC").fetchall()
        return [json.loads(data) for state, data in rows if state in states][:limit]

    def max_alert_id(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT MAX(id) FROM alerts").fetchone()
        return int(row[0] or 0)

    def set_silence(self, rule: str, until: float, by: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO silences(rule, until, by, at) VALUES (?,?,?,?)",
                (rule, until, by, self.clock()),
            )

    def silences(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT rule, until, by, at FROM silences").fetchall()
        return {r: {"until": u, "by": b, "at": a} for r, u, b, a in rows}

    def add_delivery(self, d: Delivery) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO deliveries(at, notifier, kind, alert_id, ok, attempts, error) "
                "VALUES (?,?,?,?,?,?,?)",
                (d.at, d.notifier, d.kind, d.alert_id, int(d.ok), d.attempts, d.error),
            )

    def deliveries(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT at, notifier, kind, alert_id, ok, attempts, error FROM deliveries "
                "ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [Delivery(*r)._asdict() | {"ok": bool(r[4])} for r in rows]
