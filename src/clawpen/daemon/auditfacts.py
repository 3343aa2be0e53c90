"""What ``clawpen audit`` reads of the daemon's state: the newest release (and how the bots' code
folders now differ from it) and the audit log's heads, from the state database opened read-only
(the daemon may be running; nothing is written, and a missing or unreadable database is no
release)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from clawpen.assess.model import ReleaseFacts
from clawpen.daemon import auditheads
from clawpen.daemon.contents import bot_contents, content_changes
from clawpen.errors import ClawpenError

DB = "clawpen.db"


def open_readonly(state: Path) -> sqlite3.Connection | None:
    """The state database opened read-only, or None when it is missing or unreadable."""
    path = state / DB
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        db.execute("PRAGMA busy_timeout=2000")
        return db
    except sqlite3.Error:
        return None


def _changes(db: sqlite3.Connection, release: int, spec_path: str) -> dict[str, list[str]]:
    from clawpen.spec.loader import load_spec

    try:
        rows = db.execute("SELECT bot, contents FROM release_bots WHERE release = ?", (release,)).fetchall()
    except sqlite3.Error:
        return {}
    if not rows:
        return {}
    try:
        loaded = load_spec(spec_path)
    except ClawpenError:  # the release's spec file moved or broke: the spec group says so
        return {}
    out: dict[str, list[str]] = {}
    for bot, text in rows:
        spec_bot = loaded.spec.bots.get(str(bot))
        if spec_bot is None:
            continue
        recorded: dict[str, Any] | None = None
        with contextlib.suppress(ValueError):
            recorded = json.loads(text)
        now = bot_contents(spec_bot, str(loaded.base_dir), None, None)
        out[str(bot)] = content_changes(recorded, now)
    return out


def read(state: Path) -> tuple[ReleaseFacts | None, tuple[tuple[int, str], ...]]:
    """``(the newest release, the audit log's kept heads)``."""
    db = open_readonly(state)
    if db is None:
        return None, ()
    try:
        anchors = tuple((h["seq"], h["hash"]) for h in auditheads.heads(db))
        try:
            row = db.execute(
                "SELECT id, created, who, spec_path, spec_hash FROM releases ORDER BY id DESC LIMIT 1"
            ).fetchone()
        except sqlite3.Error:
            row = None
        if row is None:
            return None, anchors
        release = ReleaseFacts(
            id=int(row[0]),
            created=float(row[1]),
            who=str(row[2]),
            spec_path=str(row[3]),
            spec_hash=str(row[4]),
            code_changes=_changes(db, int(row[0]), str(row[3])),
        )
        return release, anchors
    finally:
        db.close()
