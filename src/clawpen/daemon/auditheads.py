"""The audit log's head kept outside the log: ``audit_heads`` in the state database (schema 4).

After every record the daemon appends, its ``(seq, line hash)`` is stored with the newest
release number, so a log whose end was cut off (or that was rewritten with a fresh chain) no
longer holds a head recorded here; :func:`clawpen.audit.check_anchors` tells. The table keeps
the last :data:`KEEP` heads and, beyond those, the last head of every release.
"""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any

KEEP = 1000


def record(db: sqlite3.Connection, seq: int, digest: str, at: float) -> None:
    """Store a head (a full disk or a busy file loses this one; the next record stores its own)."""
    with contextlib.suppress(sqlite3.Error):
        release = db.execute("SELECT MAX(id) FROM releases").fetchone()[0]
        db.execute(
            "INSERT INTO audit_heads (at, seq, hash, release) VALUES (?,?,?,?)", (at, seq, digest, release)
        )
        db.execute(
            "DELETE FROM audit_heads WHERE id <= (SELECT MAX(id) FROM audit_heads) - ? "
            "AND id NOT IN (SELECT MAX(id) FROM audit_heads GROUP BY release)",
            (KEEP,),
        )


def heads(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every kept head, newest first: ``{at, seq, hash, release}``."""
    try:
        rows = db.execute("SELECT at, seq, hash, release FROM audit_heads ORDER BY id DESC").fetchall()
    except sqlite3.Error:
        return []
    return [{"at": r[0], "seq": int(r[1]), "hash": str(r[2]), "release": r[3]} for r in rows]
