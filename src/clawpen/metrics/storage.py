"""Metric storage in SQLite (WAL) with downsampling, so disk use stays bounded.

Samples of one target (``host`` or a bot) are kept in memory for the current minute, then
written in one transaction per minute for every target (batched writes) as compressed chunks:

=========  ==================  ===================================  =========
resolution  one row holds       a point is                           kept
=========  ==================  ===================================  =========
raw (0)     one minute          one sample                           24 hours
60          one hour            avg and max of a minute              30 days
3600        one day             avg and max of an hour               365 days
=========  ==================  ===================================  =========

A chunk is ``zlib(header JSON + float32 columns)``: the header has the point times (ms after
the row's start) and the series names, each column is one series (NaN where it had no value).
Alerts, silences and notification deliveries live in the same database
(:mod:`clawpen.metrics.alerttables`).
"""

from __future__ import annotations

import array
import json
import math
import sqlite3
import struct
import threading
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clawpen.metrics.alerttables import ALERT_SCHEMA, AlertTables

RAW, MINUTE, HOUR = 0, 60, 3600
ROW_SPAN = {RAW: 60, MINUTE: 3600, HOUR: 86400}
KEEP = {RAW: 86400, MINUTE: 30 * 86400, HOUR: 365 * 86400}
NAN = float("nan")

Points = dict[float, dict[str, float]]  # time -> series -> value

_SCHEMA = """
CREATE TABLE IF NOT EXISTS targets(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS chunks(
    target INTEGER NOT NULL, res INTEGER NOT NULL, ts INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (target, res, ts)) WITHOUT ROWID;
"""


def encode(points: Points, start: int) -> bytes:
    times = sorted(points)
    names = sorted({s for values in points.values() for s in values})
    head = json.dumps({"t": [round((t - start) * 1000) for t in times], "s": names}, separators=(",", ":"))
    cols = array.array("f", (points[t].get(n, NAN) for n in names for t in times))
    raw = head.encode()
    return zlib.compress(struct.pack("<I", len(raw)) + raw + cols.tobytes(), 6)


def decode(blob: bytes, start: int) -> Points:
    data = zlib.decompress(blob)
    (size,) = struct.unpack_from("<I", data)
    head = json.loads(data[4 : 4 + size])
    cols = array.array("f")
    cols.frombytes(data[4 + size :])
    times = [start + ms / 1000 for ms in head["t"]]
    out: Points = {t: {} for t in times}
    n = len(times)
    for i, name in enumerate(head["s"]):
        for j, t in enumerate(times):
            value = cols[i * n + j]
            if not math.isnan(value):
                out[t][name] = value
    return out


def aggregate(points: Points) -> dict[str, float]:
    """avg and max (``series|max``) of every series over ``points``; a ``|max`` input keeps its max."""
    sums: dict[str, list[float]] = {}
    for values in points.values():
        for name, value in values.items():
            sums.setdefault(name, []).append(value)
    out: dict[str, float] = {}
    for name, vals in sums.items():
        if name.endswith("|max"):
            out[name] = max(vals)
            continue
        out[name] = sum(vals) / len(vals)
        out.setdefault(f"{name}|max", max(vals))
        if f"{name}|max" in sums:
            out[f"{name}|max"] = max(sums[f"{name}|max"])
    return out


class Storage(AlertTables):
    """The metrics database. Thread-safe (one lock): flushes run in a worker thread."""

    def __init__(self, path: Path, clock: Any = time.time) -> None:
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA + ALERT_SCHEMA)
        path.chmod(0o600)
        self._targets: dict[str, int] = dict(self._db.execute("SELECT name, id FROM targets").fetchall())
        self._pending: dict[str, Points] = {}  # target -> samples not yet written
        self._pending_lock = threading.Lock()

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._db.close()

    # ---------------------------------------------------------------- samples
    def add(self, now: float, samples: Mapping[str, Mapping[str, float]]) -> None:
        """Keep one pass's samples (target -> series -> value) until the next :meth:`flush`."""
        with self._pending_lock:
            for target, values in samples.items():
                if values:
                    self._pending.setdefault(target, {})[now] = dict(values)

    def pending_since(self) -> float | None:
        with self._pending_lock:
            times = [t for pts in self._pending.values() for t in pts]
        return min(times) if times else None

    def flush(self) -> int:
        """Write every pending sample (and the 1-minute and 1-hour points they change) in one
        transaction; returns the number of rows written."""
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        rows = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for target, points in pending.items():
                    tid = self._target_id(target)
                    by_minute: dict[int, Points] = {}
                    for t, values in points.items():
                        by_minute.setdefault(int(t // 60 * 60), {})[t] = values
                    for minute, pts in by_minute.items():
                        merged = self._merge(tid, RAW, minute, pts)
                        rows += 1
                        self._merge(tid, MINUTE, minute // 3600 * 3600, {float(minute): aggregate(merged)})
                        hour = minute // 3600 * 3600
                        hour_pts = self._read_row(tid, MINUTE, hour)
                        self._merge(tid, HOUR, hour // 86400 * 86400, {float(hour): aggregate(hour_pts)})
                        rows += 2
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return rows

    def _target_id(self, name: str) -> int:
        tid = self._targets.get(name)
        if tid is None:
            cur = self._db.execute("INSERT INTO targets(name) VALUES (?)", (name,))
            tid = int(cur.lastrowid or 0)
            self._targets[name] = tid
        return tid

    def _read_row(self, tid: int, res: int, start: int) -> Points:
        row = self._db.execute(
            "SELECT data FROM chunks WHERE target=? AND res=? AND ts=?", (tid, res, start)
        ).fetchone()
        return decode(row[0], start) if row else {}

    def _merge(self, tid: int, res: int, start: int, points: Points) -> Points:
        merged = self._read_row(tid, res, start)
        merged.update(points)
        self._db.execute(
            "INSERT OR REPLACE INTO chunks(target, res, ts, data) VALUES (?,?,?,?)",
            (tid, res, start, encode(merged, start)),
        )
        return merged

    # ---------------------------------------------------------------- queries
    def targets(self) -> list[str]:
        with self._pending_lock:
            pending = set(self._pending)
        return sorted(set(self._targets) | pending)

    def query(self, target: str, since: float, until: float | None = None, res: int | None = None) -> Points:
        """Points of ``target`` in [since, until]; the resolution is picked from the span unless given."""
        now = self.clock()
        until = now if until is None else until
        if res is None:
            age = now - since
            res = RAW if age <= KEEP[RAW] else MINUTE if age <= KEEP[MINUTE] else HOUR
        span = ROW_SPAN[res]
        out: Points = {}
        with self._lock:
            tid = self._targets.get(target)
            if tid is not None:
                rows = self._db.execute(
                    "SELECT ts, data FROM chunks WHERE target=? AND res=? AND ts>=? AND ts<=? ORDER BY ts",
                    (tid, res, int(since // span * span), until),
                ).fetchall()
                for start, blob in rows:
                    out.update(decode(blob, start))
        if res == RAW:
            with self._pending_lock:
                out.update(self._pending.get(target, {}))
        return {t: v for t, v in sorted(out.items()) if since <= t <= until}

    def usage(self) -> dict[str, int]:
        """Bytes of chunk data per resolution (what the bench reports)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT res, SUM(LENGTH(data)), COUNT(*) FROM chunks GROUP BY res"
            ).fetchall()
        return {f"res{r}_bytes": int(b or 0) for r, b, _ in rows} | {
            f"res{r}_rows": int(n) for r, _, n in rows
        }

    def prune(self, now: float | None = None) -> int:
        """Drop rows older than each resolution keeps; returns how many went."""
        now = self.clock() if now is None else now
        gone = 0
        with self._lock:
            for res, keep in KEEP.items():
                cur = self._db.execute(
                    "DELETE FROM chunks WHERE res=? AND ts < ?", (res, now - keep - ROW_SPAN[res])
                )
                gone += cur.rowcount
            self._prune_alert_tables(now)
        return gone
