"""Opening the daemon's SQLite file: check it, move a corrupt one aside, migrate the schema.

``PRAGMA user_version`` holds the schema version. Version 0 is the schema before versions
existed (identical to version 1 without the columns added since); each step in
:data:`MIGRATIONS` moves a database one version forward inside one transaction, so a database
written by an older clawpen opens and keeps its rows. A database newer than this clawpen is
refused (never downgraded).

A database that SQLite cannot read ("file is not a database", "database disk image is
malformed") or whose ``PRAGMA quick_check`` reports a problem is renamed, with its ``-wal`` and
``-shm`` files, to ``clawpen.db.corrupt-<UTC time>`` and a new one is created; the caller
rebuilds it (see :mod:`clawpen.daemon.records`).

A full disk: opening an existing database needs no space unless SQLite must create the
shared-memory index (``-shm``) of a WAL database; when that fails, the database is opened again
in exclusive locking mode, where SQLite keeps the index in memory (the daemon is the file's only
user).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import NamedTuple

from clawpen.errors import HostError

SCHEMA_VERSION = 4

SCHEMA = """
CREATE TABLE IF NOT EXISTS releases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    who TEXT NOT NULL,
    spec_path TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    spec_text TEXT NOT NULL,
    summary TEXT NOT NULL,
    rollback_of INTEGER            -- the release a `clawpen rollback` re-applied (version 2)
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
    tracker TEXT,                  -- RestartTracker state as JSON (version 1)
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
CREATE TABLE IF NOT EXISTS release_bots (
    release INTEGER NOT NULL,
    bot TEXT NOT NULL,
    policy_hash TEXT NOT NULL,
    contents TEXT NOT NULL,        -- JSON: code folders' and build output's hashes (version 3)
    PRIMARY KEY (release, bot)
);
CREATE TABLE IF NOT EXISTS audit_heads (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    seq INTEGER NOT NULL,          -- the audit log's last record then (version 4)
    hash TEXT NOT NULL,            -- sha256 of that record's line: the next record's prev
    release INTEGER                -- the newest release then
);
"""
INDEX = "CREATE INDEX IF NOT EXISTS events_bot_at ON events (bot, at)"

# MIGRATIONS[n]: the statements that take a database from version n to n + 1.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    0: ("ALTER TABLE instances ADD COLUMN tracker TEXT",),
    1: ("ALTER TABLE releases ADD COLUMN rollback_of INTEGER",),
    2: (
        "CREATE TABLE IF NOT EXISTS release_bots (release INTEGER NOT NULL, bot TEXT NOT NULL, "
        "policy_hash TEXT NOT NULL, contents TEXT NOT NULL, PRIMARY KEY (release, bot))",
    ),
    3: (
        "CREATE TABLE IF NOT EXISTS audit_heads (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, "
        "seq INTEGER NOT NULL, hash TEXT NOT NULL, release INTEGER)",
    ),
}

# SQLite's primary result codes (the low byte of sqlite_errorcode)
SQLITE_IOERR = 10
SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_CANTOPEN = 14
SQLITE_NOTADB = 26
SQLITE_READONLY = 8
NO_SPACE = {SQLITE_FULL, SQLITE_IOERR, SQLITE_CANTOPEN, SQLITE_READONLY}
CORRUPT = {SQLITE_CORRUPT, SQLITE_NOTADB}


def error_code(err: sqlite3.Error) -> int:
    return int(getattr(err, "sqlite_errorcode", 0) or 0) & 0xFF


def is_no_space(err: sqlite3.Error) -> bool:
    """A write failed for want of space or a writable file (database or disk full, I/O error)."""
    text = str(err).lower()
    return error_code(err) in NO_SPACE or "full" in text or "disk i/o" in text


def is_corrupt(err: sqlite3.Error) -> bool:
    text = str(err).lower()
    return error_code(err) in CORRUPT or "not a database" in text or "malformed" in text


class Opened(NamedTuple):
    db: sqlite3.Connection
    fresh: bool
    """The file had no tables: a new database (first start, or after moving a corrupt one aside)."""
    corrupt: str | None
    """What was wrong with the database that was moved aside, if one was."""
    moved_to: Path | None
    exclusive: bool
    """Opened in exclusive locking mode (the disk was too full for the shared-memory index)."""


def open_checked(path: Path, *, clock: float | None = None) -> Opened:
    """Open ``path`` (creating it), check it, move it aside if corrupt, migrate it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    corrupt: str | None = None
    moved: Path | None = None
    if path.exists() and path.stat().st_size > 0:
        corrupt = _problem(path)
        if corrupt is not None:
            moved = move_aside(path, time.time() if clock is None else clock)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    try:
        db, exclusive = _connect(path, exclusive=False), False
    except sqlite3.OperationalError as err:
        if not is_no_space(err):
            raise _unreadable(path, err) from None
        try:  # too full for the -shm file: keep the WAL index in memory instead
            db, exclusive = _connect(path, exclusive=True), True
        except sqlite3.Error as again:
            raise _unreadable(path, again) from None
    except sqlite3.DatabaseError as err:
        raise _unreadable(path, err) from None
    fresh = not _tables(db)
    try:
        migrate(db, path, fresh=fresh)
    except BaseException:
        db.close()
        raise
    return Opened(db, fresh, corrupt, moved, exclusive)


def _connect(path: Path, *, exclusive: bool) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        if exclusive:
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("PRAGMA busy_timeout=5000")
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except BaseException:
        db.close()
        raise
    return db


def _tables(db: sqlite3.Connection) -> set[str]:
    return {str(r[0]) for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _problem(path: Path) -> str | None:
    """Why the database at ``path`` is corrupt, or None if SQLite reads it and quick_check passes
    (or if it cannot tell for want of space: a full disk is not a corrupt file)."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=rw", uri=True, isolation_level=None)
    except sqlite3.Error as err:
        return str(err) if is_corrupt(err) else None
    try:
        db.execute("PRAGMA busy_timeout=5000")
        rows = [str(r[0]) for r in db.execute("PRAGMA quick_check(5)")]
        if rows != ["ok"]:
            return "quick_check: " + "; ".join(rows)
        return None
    except sqlite3.Error as err:
        return str(err) if is_corrupt(err) else None
    finally:
        db.close()


def move_aside(path: Path, now: float) -> Path:
    """Rename ``path`` and its -wal and -shm files to ``<name>.corrupt-<UTC time>[-wal|-shm]``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}.{n}")
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.rename(f"{path}{suffix}", f"{target}{suffix}")
    os.rename(path, target)
    return target


def migrate(db: sqlite3.Connection, path: Path, *, fresh: bool) -> None:
    """Create the schema (a new file) or move it forward to :data:`SCHEMA_VERSION`."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise HostError(
            f"the state database has schema version {version}; this clawpen knows up to {SCHEMA_VERSION}",
            where=str(path),
            hint="it was written by a newer clawpen: run that version (never downgrade the state)",
        )
    if not fresh and version == SCHEMA_VERSION:
        return
    try:
        db.execute("BEGIN IMMEDIATE")
        if fresh:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
        else:
            for step in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step]:
                    db.execute(statement)
        db.execute(INDEX)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
    except sqlite3.Error as err:
        if db.in_transaction:
            db.execute("ROLLBACK")
        what = "created" if fresh else f"migrated from schema version {version}"
        hint = "free some space on its file system" if is_no_space(err) else "see the error above"
        raise HostError(
            f"the state database could not be {what}: {err}", where=str(path), hint=hint
        ) from None


def _unreadable(path: Path, err: sqlite3.Error) -> HostError:
    hint = "free some space on its file system" if is_no_space(err) else "check the file and its folder"
    return HostError(f"the state database cannot be opened: {err}", where=str(path), hint=hint)
