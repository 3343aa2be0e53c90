"""The daemon's state in SQLite (WAL): releases, bots, instances and events.

One connection per daemon, used from the event loop's thread only. Every change is a short
transaction; the file lives at ``<state>/clawpen.db`` (mode 0600).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, NamedTuple

SCHEMA = """
CREATE TABLE IF NOT EXISTS releases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    who TEXT NOT NULL,
    spec_path TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    spec_text TEXT NOT NULL,
    summary TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS bots (
    name TEXT PRIMARY KEY,
    policy TEXT NOT NULL,          -- the bot's spec section as JSON, with base_dir
    spec_hash TEXT NOT NULL,       -- hash of that JSON: a change means a restart
    desired TEXT NOT NULL,         -- running | stopped
    manual_stop INTEGER NOT NULL DEFAULT 0,
    release_id INTEGER
);
CREATE TABLE IF NOT EXISTS instances (
    bot TEXT NOT NULL,
    replica INTEGER NOT NULL,
    state TEXT NOT NULL,
    pid INTEGER,                   -- bubblewrap (the sandbox's monitor)
    sandbox_pid INTEGER,           -- the sandbox's pid 1
    pid_start INTEGER,             -- /proc start time of pid, against pid reuse
    cgroup TEXT,
    started_at REAL,
    restarts INTEGER NOT NULL DEFAULT 0,
    last_exit INTEGER,
    last_reason TEXT,
    health TEXT,
    PRIMARY KEY (bot, replica)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    bot TEXT,
    replica INTEGER,
    kind TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_bot_at ON events (bot, at);
"""


class Instance(NamedTuple):
    bot: str
    replica: int
    state: str
    pid: int | None
    sandbox_pid: int | None
    pid_start: int | None
    cgroup: str | None
    started_at: float | None
    restarts: int
    last_exit: int | None
    last_reason: str | None
    health: str | None


class Event(NamedTuple):
    id: int
    at: float
    bot: str | None
    replica: int | None
    kind: str
    from_state: str | None
    to_state: str | None
    reason: str


class BotRow(NamedTuple):
    name: str
    policy: dict[str, Any]
    spec_hash: str
    desired: str
    manual_stop: bool
    release_id: int | None


def policy_hash(policy: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(policy, sort_keys=True).encode()).hexdigest()[:16]


class Store:
    """Typed access to the daemon's database."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # releases -------------------------------------------------------------------------------
    def add_release(self, who: str, spec_path: str, spec_text: str, summary: str) -> int:
        spec_hash = hashlib.sha256(spec_text.encode()).hexdigest()[:16]
        cur = self.db.execute(
            "INSERT INTO releases (created, who, spec_path, spec_hash, spec_text, summary) "
            "VALUES (?,?,?,?,?,?)",
            (time.time(), who, spec_path, spec_hash, spec_text, summary),
        )
        return int(cur.lastrowid or 0)

    def releases(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT id, created, who, spec_path, spec_hash, summary FROM releases ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        keys = ("id", "created", "who", "spec_path", "spec_hash", "summary")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def latest_spec(self) -> tuple[str, str] | None:
        """(path, text) of the spec of the newest release, if any."""
        row = self.db.execute("SELECT spec_path, spec_text FROM releases ORDER BY id DESC LIMIT 1").fetchone()
        return (str(row[0]), str(row[1])) if row else None

    # bots -----------------------------------------------------------------------------------
    def bots(self) -> dict[str, BotRow]:
        rows = self.db.execute("SELECT name, policy, spec_hash, desired, manual_stop, release_id FROM bots")
        return {r[0]: BotRow(r[0], json.loads(r[1]), r[2], r[3], bool(r[4]), r[5]) for r in rows}

    def put_bot(self, name: str, policy: dict[str, Any], desired: str, release_id: int | None) -> None:
        self.db.execute(
            "INSERT INTO bots (name, policy, spec_hash, desired, manual_stop, release_id) "
            "VALUES (?,?,?,?,0,?) "
            "ON CONFLICT(name) DO UPDATE SET policy=excluded.policy, spec_hash=excluded.spec_hash, "
            "desired=excluded.desired, manual_stop=0, release_id=excluded.release_id",
            (name, json.dumps(policy, sort_keys=True), policy_hash(policy), desired, release_id),
        )

    def set_desired(self, name: str, desired: str, manual_stop: bool) -> None:
        self.db.execute(
            "UPDATE bots SET desired=?, manual_stop=? WHERE name=?", (desired, int(manual_stop), name)
        )

    def remove_bot(self, name: str) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM bots WHERE name=?", (name,))
            self.db.execute("DELETE FROM instances WHERE bot=?", (name,))

    # instances ------------------------------------------------------------------------------
    def instances(self, bot: str | None = None) -> list[Instance]:
        if bot is None:
            rows = self.db.execute("SELECT * FROM instances ORDER BY bot, replica")
        else:
            rows = self.db.execute("SELECT * FROM instances WHERE bot=? ORDER BY replica", (bot,))
        return [Instance(*row) for row in rows]

    def save_instance(self, inst: Instance) -> None:
        self.db.execute("INSERT OR REPLACE INTO instances VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", tuple(inst))

    def drop_instance(self, bot: str, replica: int) -> None:
        self.db.execute("DELETE FROM instances WHERE bot=? AND replica=?", (bot, replica))

    # events ---------------------------------------------------------------------------------
    def add_event(
        self,
        kind: str,
        reason: str,
        *,
        bot: str | None = None,
        replica: int | None = None,
        from_state: str | None = None,
        to_state: str | None = None,
        at: float | None = None,
    ) -> Event:
        when = time.time() if at is None else at
        cur = self.db.execute(
            "INSERT INTO events (at, bot, replica, kind, from_state, to_state, reason) "
            "VALUES (?,?,?,?,?,?,?)",
            (when, bot, replica, kind, from_state, to_state, reason),
        )
        return Event(int(cur.lastrowid or 0), when, bot, replica, kind, from_state, to_state, reason)

    def events(self, *, bot: str | None = None, after_id: int = 0, limit: int = 200) -> list[Event]:
        if bot is None:
            rows = self.db.execute(
                "SELECT * FROM events WHERE id > ? ORDER BY id DESC LIMIT ?", (after_id, limit)
            )
        else:
            rows = self.db.execute(
                "SELECT * FROM events WHERE id > ? AND bot=? ORDER BY id DESC LIMIT ?", (after_id, bot, limit)
            )
        return [Event(*row) for row in reversed(list(rows))]

    # ----------------------------------------------------------------------------------------
    def transaction(self) -> _Tx:
        return _Tx(self.db)


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
