"""What the report reads, all of it read-only: the spec, the daemon's ``ps`` when it answers, the
releases in the state database (opened ``mode=ro``, as :mod:`clawpen.daemon.auditfacts` does),
the audit log and the last kept audit report. Nothing here writes or starts anything: a daemon
that is not running is said in the report, never started."""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

from clawpen.errors import ClawpenError
from clawpen.report.model import AuditSummary, Facts, LiveState, Release, from_spec
from clawpen.spec.loader import LoadedSpec

DB = "clawpen.db"
MAX_RELEASES = 500
MAX_AUDIT_RECORDS = 500
DAEMON_TIMEOUT = 10.0
READ_ACTIONS = (".get", ".ls", ".list", ".show", ".status", ".verify")  # audit records that change nothing


def live_state(state: Path, timeout: float = DAEMON_TIMEOUT) -> LiveState:
    """The daemon's ``ps``, or why there is none (never starts the daemon)."""
    from clawpen.daemon import rpc
    from clawpen.daemon.client import Client

    if not (state / "clawpen.sock").exists():
        return LiveState(None, "daemon not running (no socket in the state folder)")
    try:
        rows = Client(state, timeout=timeout).call("ps", autostart=False)
    except rpc.RemoteError as err:
        return LiveState(None, f"the daemon refused ps: {err}")
    except ClawpenError as err:  # DaemonNotAnswering and the like
        return LiveState(None, f"daemon not answering: {err.what}")
    except OSError:
        return LiveState(None, "daemon not running (nothing answers on its socket)")
    if not isinstance(rows, list):
        return LiveState(None, "the daemon's ps reply was not a list")
    return LiveState(tuple(r for r in rows if isinstance(r, dict)))


def _open(state: Path) -> sqlite3.Connection | None:
    path = state / DB
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        db.execute("PRAGMA busy_timeout=2000")
        return db
    except sqlite3.Error:
        return None


def _changes(before: dict[str, str], after: dict[str, str]) -> tuple[str, ...]:
    out = [f"added {b}" for b in sorted(after) if b not in before]
    out += [f"changed {b}" for b in sorted(after) if b in before and before[b] != after[b]]
    out += [f"removed {b}" for b in sorted(before) if b not in after]
    return tuple(out)


def releases(state: Path) -> tuple[tuple[Release, ...], str]:
    """The newest releases (oldest first) with the bots each changed, and a note when unreadable."""
    db = _open(state)
    if db is None:
        return (), ""
    try:
        rows = db.execute(
            "SELECT id, created, who, summary, rollback_of FROM releases ORDER BY id DESC LIMIT ?",
            (MAX_RELEASES,),
        ).fetchall()
        hashes: dict[int, dict[str, str]] = {}
        try:
            for rel, bot, digest in db.execute("SELECT release, bot, policy_hash FROM release_bots"):
                hashes.setdefault(int(rel), {})[str(bot)] = str(digest)
        except sqlite3.Error:  # a database of an older clawpen: no contents per release
            pass
    except sqlite3.Error as err:
        return (), f"the releases could not be read: {err}"
    finally:
        db.close()
    out: list[Release] = []
    previous: dict[str, str] | None = None
    for rid, created, who, summary, rollback_of in reversed(rows):
        now = hashes.get(int(rid))
        changed = _changes(previous, now) if previous is not None and now is not None else ()
        out.append(
            Release(
                int(rid),
                float(created),
                str(who),
                str(summary or ""),
                rollback_of and int(rollback_of),
                changed,
            )
        )
        previous = now if now is not None else previous
    return tuple(out), ""


def audit_changes(state: Path) -> tuple[dict[str, object], ...]:
    """The audit log's records that change something (reads such as ``secrets.get`` left out)."""
    from clawpen import audit

    records = [r for r in audit.read(state) if not str(r.get("action", "")).endswith(READ_ACTIONS)]
    return tuple(records[-MAX_AUDIT_RECORDS:])


def last_audit(state: Path) -> AuditSummary | None:
    from clawpen.assess import report

    kept = report.last(state)
    if kept is None:
        return None
    worst = sorted(kept.findings, key=lambda f: -int(f.severity))
    return AuditSummary(
        started=kept.started,
        score=kept.score,
        counts=tuple(kept.counts.items()),
        worst=tuple((f.severity.label, f.title) for f in worst[:10]),
    )


def uids(state: Path) -> dict[str, int]:
    """The bots' host uids from the state's registry (``users.json``), read only."""
    try:
        raw: Any = json.loads((state / "users.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {str(k): int(v) for k, v in raw.items() if isinstance(v, int)}


def gather(loaded: LoadedSpec, state: Path, *, clock: float | None = None) -> Facts:
    notes: list[str] = []
    rels, note = releases(state)
    if note:
        notes.append(note)
    try:
        audit_log = audit_changes(state)
    except OSError as err:
        audit_log = ()
        notes.append(f"the audit log could not be read: {err}")
    try:
        kept = last_audit(state)
    except (OSError, ValueError) as err:
        kept = None
        notes.append(f"the last audit report could not be read: {err}")
    return Facts(
        deployment=from_spec(loaded, socket.gethostname(), uids(state), str(state)),
        live=live_state(state),
        releases=rels,
        audit_log=audit_log,
        last_audit=kept,
        generated=time.time() if clock is None else clock,
        notes=tuple(notes),
    )
