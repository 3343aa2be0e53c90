"""What the report reads, all of it read-only: the spec, the daemon's ``ps`` when it answers, the
releases in the state database (opened ``mode=ro``, as :mod:`clawpen.daemon.auditfacts` does),
the audit log and the last kept audit report. Nothing here writes or starts anything: a daemon
that is not running is said in the report, never started."""

from __future__ import annotations

import itertools
import json
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

from clawpen.daemon.auditfacts import open_readonly
from clawpen.errors import ClawpenError
from clawpen.report.model import AuditSummary, Facts, LiveState, Release, from_spec
from clawpen.spec.loader import LoadedSpec

MAX_RELEASES = 500
FIELD_DIFFS = 50  # the newest releases compared field by field (each spec text parsed again)
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


def _changes(before: dict[str, str], after: dict[str, str]) -> tuple[str, ...]:
    out = [f"added {b}" for b in sorted(after) if b not in before]
    out += [f"changed {b}" for b in sorted(after) if b in before and before[b] != after[b]]
    out += [f"removed {b}" for b in sorted(before) if b not in after]
    return tuple(out)


def _field_changes(state: Path, ids: list[int]) -> dict[int, tuple[str, ...]]:
    """``{release: ("changed a: command, env.K", "added b", ...)}`` for ``ids`` (the newest), each
    against the release before it, as ``clawpen release diff`` compares them (the stored spec
    texts parsed again; field names only, never values). A release whose spec no longer parses,
    or the oldest one, is left out (the caller falls back to the recorded policy hashes)."""
    from clawpen.daemon.release_diff import bot_diff, try_policies

    if not ids:
        return {}
    db = open_readonly(state)
    if db is None:
        return {}
    try:
        low = min(ids) - 1
        rows = db.execute(
            "SELECT id, spec_path, spec_text FROM releases WHERE id >= ? ORDER BY id", (low,)
        ).fetchall()
    except sqlite3.Error:
        return {}
    finally:
        db.close()
    parsed = {int(r[0]): try_policies({"spec_path": r[1], "spec_text": r[2]})[0] for r in rows}
    out: dict[int, tuple[str, ...]] = {}
    ordered = sorted(parsed)
    for before, after in itertools.pairwise(ordered):
        old, new = parsed[before], parsed[after]
        if old is None or new is None or after not in ids:
            continue
        lines = []
        for d in bot_diff(old, new):
            if d.change == "changed":
                lines.append(f"changed {d.bot}: {', '.join(d.fields)}" if d.fields else f"changed {d.bot}")
            elif d.change != "unchanged":
                lines.append(f"{d.change} {d.bot}")
        out[after] = tuple(lines)
    return out


def releases(state: Path) -> tuple[tuple[Release, ...], str]:
    """The newest releases (oldest first) with the bots each changed, and a note when unreadable."""
    db = open_readonly(state)
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
    detailed = _field_changes(state, [int(r[0]) for r in rows[:FIELD_DIFFS]])
    out: list[Release] = []
    previous: dict[str, str] | None = None
    for rid, created, who, summary, rollback_of in reversed(rows):
        now = hashes.get(int(rid))
        changed = _changes(previous, now) if previous is not None and now is not None else ()
        changed = detailed.get(int(rid), changed)
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
