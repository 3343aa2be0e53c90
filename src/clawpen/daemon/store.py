"""The daemon's state in SQLite (WAL): releases, bots, instances and events.

One connection per daemon, used from the event loop's thread only. The file lives at
``<state>/clawpen.db`` (mode 0600); :mod:`clawpen.daemon.statedb` checks it at start (a corrupt
file is moved aside) and migrates its schema. Every bot and instance change is also written to
the bot's JSON record (:mod:`clawpen.daemon.records`), from which a lost database is rebuilt.

The bots and instances are kept in memory too (they are few): reads come from there, and
every change is written through to SQLite. When a write fails because the disk is full (or the
file cannot be written), the store first deletes its reserve (``clawpen.db.reserve``, 2 MiB
set aside while there is room) and writes again, so a ``stop`` or ``down`` on a full disk is
still saved. When even that fails, nothing is lost and nothing fails: the change stays queued
(the newest state of each bot and instance), events wait in a bounded ring (and are still
returned and published), and everything is written in order by the next write or
:meth:`Store.flush` once space returns. Only a new release (``up``) needs the disk and is
refused until then.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from clawpen.daemon.records import Records
from clawpen.daemon.statedb import SCHEMA, SCHEMA_VERSION, is_no_space, open_checked
from clawpen.errors import HostError
from clawpen.host import Event as Event  # noqa: PLC0414 (the record lives below the daemon)

__all__ = ["SCHEMA", "SCHEMA_VERSION", "BotRow", "Event", "Instance", "Store", "policy_hash"]

UNSAVED_EVENTS = 2000  # events kept in memory while the database cannot be written
RETRY_AFTER = 2.0  # seconds between write attempts while the database cannot be written
RESERVE_BYTES = 2 << 20  # space set aside for the state: freed when the disk is full

Statement = tuple[str, tuple[Any, ...]]


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
    tracker: str | None = None  # RestartTracker state (supervisor/backoff.py TrackerState.to_json)


INSTANCE_SELECT = (
    "SELECT bot, replica, state, pid, sandbox_pid, pid_start, cgroup, started_at, restarts, "
    "last_exit, last_reason, health, tracker FROM instances ORDER BY bot, replica"
)
INSTANCE_UPSERT = (
    "INSERT OR REPLACE INTO instances (bot, replica, state, pid, sandbox_pid, pid_start, cgroup, "
    "started_at, restarts, last_exit, last_reason, health, tracker) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


class BotRow(NamedTuple):
    name: str
    policy: dict[str, Any]
    spec_hash: str
    desired: str
    manual_stop: bool
    release_id: int | None


RELEASE_KEYS = ("id", "created", "who", "spec_path", "spec_hash", "summary", "rollback_of")


def policy_hash(policy: dict[str, Any]) -> str:
    """The hash of a bot's policy; a build's ``keep`` is left out (changing how many outputs are
    kept restarts nothing, and a policy stored before ``keep`` existed hashes the same)."""
    spec = policy.get("spec")
    build = spec.get("build") if isinstance(spec, dict) else None
    if isinstance(spec, dict) and isinstance(build, dict) and "keep" in build:
        trimmed = {k: v for k, v in build.items() if k != "keep"}
        policy = {**policy, "spec": {**spec, "build": trimmed}}
    return hashlib.sha256(json.dumps(policy, sort_keys=True).encode()).hexdigest()[:16]


def _stderr(text: str) -> None:
    print(f"clawpen daemon: {text}", file=sys.stderr, flush=True)


class Store:
    """Typed access to the daemon's database (and the bots' JSON records, with ``records``)."""

    def __init__(
        self,
        path: Path,
        *,
        records: Path | None = None,
        background_records: bool = False,
        warn: Callable[[str], None] = _stderr,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.warn = warn  # the daemon points it at its event log (app.py)
        self._clock = clock
        opened = open_checked(path, clock=clock())
        self.db = opened.db
        self.exclusive = opened.exclusive
        self.records = Records(records, background=background_records) if records is not None else None
        self._bots: dict[str, BotRow] = {
            r[0]: BotRow(r[0], json.loads(r[1]), r[2], r[3], bool(r[4]), r[5])
            for r in self.db.execute(
                "SELECT name, policy, spec_hash, desired, manual_stop, release_id FROM bots"
            )
        }
        self._insts: dict[tuple[str, int], Instance] = {
            (row[0], row[1]): Instance(*row) for row in self.db.execute(INSTANCE_SELECT)
        }
        self._next_event = int(self.db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]) + 1
        self._pending: dict[tuple[Any, ...], list[Statement]] = {}  # newest change of each row
        self._unsaved: deque[Event] = deque(maxlen=UNSAVED_EVENTS)
        self._lost_events = 0
        self._failing: str | None = None  # why the last write failed
        self._last_try = 0.0
        self._records_failing = False
        self.recovered: str | None = None
        self.reserve = path.with_name(f"{path.name}.reserve")
        if opened.corrupt is not None or opened.fresh:
            self.recovered = self._rebuild(opened.corrupt, opened.moved_to)
        self.keep_reserve()

    def close(self) -> None:
        self.flush(force=True)
        if self.records is not None:
            self.records.flush()
        with contextlib.suppress(sqlite3.Error):
            self.db.close()

    # writes ---------------------------------------------------------------------------------
    @property
    def behind(self) -> bool:
        """Whether changes wait in memory for the database (it could not be written)."""
        return bool(self._pending or self._unsaved)

    def _apply(self, key: tuple[Any, ...], statements: list[Statement]) -> None:
        self._pending.pop(key, None)  # an older change of the same row is superseded
        self._pending[key] = statements
        self.flush()

    def flush(self, *, force: bool = False) -> bool:
        """Write the queued changes and events; False if the database still cannot be written."""
        if not self.behind:
            return True
        now = time.monotonic()
        if self._failing is not None and not force and now - self._last_try < RETRY_AFTER:
            return False
        self._last_try = now
        changes, events = len(self._pending), list(self._unsaved)
        try:
            try:
                self._write(events)
            except sqlite3.Error as err:
                if not (is_no_space(err) and self._use_reserve()):
                    raise
                self.warn(f"the disk is full ({err}): used the state's reserve ({self.reserve}) to save it")
                self._write(events)
        except sqlite3.Error as err:
            if not is_no_space(err):
                self._pending.clear()  # a bug, not the disk: do not retry it for ever
                self._unsaved.clear()
                raise
            if self._failing is None:
                self._failing = str(err)
                self.warn(
                    f"the state database cannot be written ({err}): changes are kept in memory "
                    f"(events: the last {UNSAVED_EVENTS}) and saved when space returns"
                )
            return False
        self._pending.clear()
        for _ in events:
            self._unsaved.popleft()
        if self._failing is not None:
            self._failing = None
            lost = f"; {self._lost_events} older events were dropped" if self._lost_events else ""
            self._lost_events = 0
            self.warn(
                f"the state database is writable again: saved {changes} kept changes and "
                f"{len(events)} events{lost}"
            )
        return True

    def _renumber(self, events: list[Event]) -> list[Event]:
        """Another process's Store on the same database (the CLI's firewall commands) may have
        written events since this one read the highest id: under the write lock, move this one's
        unsaved events past it, so they are saved, not refused as duplicates."""
        if not events:
            return events
        top = int(self.db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0])
        if top < events[0].id:
            return events
        moved = [e._replace(id=top + 1 + i) for i, e in enumerate(events)]
        self._next_event = max(self._next_event, moved[-1].id + 1)
        return moved

    def _write(self, events: list[Event]) -> None:
        try:
            self.db.execute("BEGIN IMMEDIATE")
            for statements in self._pending.values():
                for sql, params in statements:
                    self.db.execute(sql, params)
            events = self._renumber(events)
            self.db.executemany(
                "INSERT INTO events (id, at, bot, replica, kind, from_state, to_state, reason) "
                "VALUES (?,?,?,?,?,?,?,?)",
                events,
            )
            self.db.execute("COMMIT")
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
            raise

    def _use_reserve(self) -> bool:
        try:
            self.reserve.unlink()
        except FileNotFoundError:
            return False
        return True

    def keep_reserve(self) -> None:
        """Set the reserve aside again when there is room (more than 4 times its size free)."""
        try:
            if self.reserve.stat().st_size >= RESERVE_BYTES:
                return
        except FileNotFoundError:
            pass
        tmp = self.reserve.with_name(f"{self.reserve.name}.tmp")
        try:
            fs = os.statvfs(self.reserve.parent)
            if fs.f_bavail * fs.f_frsize < 4 * RESERVE_BYTES:
                return
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
            os.replace(tmp, self.reserve)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _record(self, name: str) -> None:
        """Write bot ``name``'s JSON record from memory (or remove it if the bot is gone)."""
        if self.records is None or name.endswith("_validate"):  # a validate copy: no record
            return
        try:
            row = self._bots.get(name)
            if row is None:
                self.records.remove_bot(name)
            else:
                insts = [i._asdict() for k, i in sorted(self._insts.items()) if k[0] == name]
                self.records.write_bot(name, {**row._asdict(), "instances": insts})
        except OSError as err:
            if not self._records_failing:
                self._records_failing = True
                self.warn(f"the bot records in {self.records.dir} cannot be written: {err}")
            return
        if self._records_failing:
            self._records_failing = False
            self.warn(f"the bot records in {self.records.dir} are writable again")

    # releases -------------------------------------------------------------------------------
    def add_release(
        self, who: str, spec_path: str, spec_text: str, summary: str, rollback_of: int | None = None
    ) -> int:
        """Record a release (``rollback_of``: the release a rollback re-applied). Needs the disk:
        raises HostError when the database cannot be written."""
        spec_hash = hashlib.sha256(spec_text.encode()).hexdigest()[:16]
        created = self._clock()
        if not self.flush(force=True):
            raise self._full("record a release")
        try:
            cur = self.db.execute(
                "INSERT INTO releases (created, who, spec_path, spec_hash, spec_text, summary, rollback_of) "
                "VALUES (?,?,?,?,?,?,?)",
                (created, who, spec_path, spec_hash, spec_text, summary, rollback_of),
            )
        except sqlite3.Error as err:
            with contextlib.suppress(sqlite3.Error):
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
            if not is_no_space(err):
                raise
            raise self._full("record a release", err) from None
        release = int(cur.lastrowid or 0)
        if self.records is not None:
            with contextlib.suppress(OSError):
                self.records.write_release(
                    {"id": release, "created": created, "who": who, "spec_path": spec_path}
                    | {"spec_text": spec_text}
                )
        return release

    def _full(self, what: str, err: object = None) -> HostError:
        return HostError(
            f"cannot {what}: the state database cannot be written ({err or self._failing})",
            where=str(self.path),
            hint=f"free some space on the file system of {self.path.parent}; stop, down and ps still work",
        )

    def releases(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT id, created, who, spec_path, spec_hash, summary, rollback_of FROM releases "
            "ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [dict(zip(RELEASE_KEYS, row, strict=True)) for row in rows]

    def release(self, number: int) -> dict[str, Any] | None:
        """Release ``number`` with its spec text, or None if there is no such release."""
        keys = (*RELEASE_KEYS, "spec_text")
        row = self.db.execute(
            "SELECT id, created, who, spec_path, spec_hash, summary, rollback_of, spec_text "
            "FROM releases WHERE id = ?",
            (number,),
        ).fetchone()
        return dict(zip(keys, row, strict=True)) if row else None

    def add_release_bots(self, release: int, bots: dict[str, tuple[str, dict[str, Any]]]) -> None:
        """Record what each bot of ``release`` ran: ``{bot: (policy hash, contents)}``."""
        with contextlib.suppress(sqlite3.Error):  # the release stands without its contents
            self.db.executemany(
                "INSERT OR REPLACE INTO release_bots (release, bot, policy_hash, contents) VALUES (?,?,?,?)",
                [(release, n, h, json.dumps(c, sort_keys=True)) for n, (h, c) in sorted(bots.items())],
            )

    def policy_hashes(self, first: int, last: int) -> dict[int, dict[str, str]]:
        """``{release: {bot: policy hash}}`` recorded for the releases ``first`` to ``last``
        (a release of an older clawpen, which recorded none, is missing)."""
        rows = self.db.execute(
            "SELECT release, bot, policy_hash FROM release_bots WHERE release BETWEEN ? AND ?", (first, last)
        )
        out: dict[int, dict[str, str]] = {}
        for release, bot, digest in rows:
            out.setdefault(int(release), {})[str(bot)] = str(digest)
        return out

    def release_bots(self, release: int) -> dict[str, dict[str, Any]]:
        """``{bot: contents}`` recorded with ``release`` (empty for a release of an older clawpen)."""
        rows = self.db.execute("SELECT bot, contents FROM release_bots WHERE release = ?", (release,))
        out: dict[str, dict[str, Any]] = {}
        for bot, text in rows:
            with contextlib.suppress(ValueError):
                value = json.loads(text)
                if isinstance(value, dict):
                    out[str(bot)] = value
        return out

    def latest_spec(self) -> tuple[str, str] | None:
        """(path, text) of the spec of the newest release, if any."""
        row = self.db.execute("SELECT spec_path, spec_text FROM releases ORDER BY id DESC LIMIT 1").fetchone()
        return (str(row[0]), str(row[1])) if row else None

    # bots -----------------------------------------------------------------------------------
    def bots(self) -> dict[str, BotRow]:
        return dict(self._bots)

    def _save_bot(self, row: BotRow) -> None:
        self._bots[row.name] = row
        self._apply(
            ("bot", row.name),
            [
                (
                    "INSERT OR REPLACE INTO bots (name, policy, spec_hash, desired, manual_stop, release_id) "
                    "VALUES (?,?,?,?,?,?)",
                    (
                        row.name,
                        json.dumps(row.policy, sort_keys=True),
                        row.spec_hash,
                        row.desired,
                        int(row.manual_stop),
                        row.release_id,
                    ),
                )
            ],
        )
        self._record(row.name)

    def put_bot(self, name: str, policy: dict[str, Any], desired: str, release_id: int | None) -> None:
        self._save_bot(BotRow(name, policy, policy_hash(policy), desired, False, release_id))

    def set_desired(self, name: str, desired: str, manual_stop: bool) -> None:
        row = self._bots.get(name)
        if row is not None:
            self._save_bot(row._replace(desired=desired, manual_stop=manual_stop))

    def remove_bot(self, name: str) -> None:
        self._bots.pop(name, None)
        for key in [k for k in self._insts if k[0] == name]:
            del self._insts[key]
        for key in [k for k in self._pending if k[0] == "inst" and k[1] == name]:
            del self._pending[key]
        self._apply(
            ("bot", name),
            [("DELETE FROM bots WHERE name=?", (name,)), ("DELETE FROM instances WHERE bot=?", (name,))],
        )
        self._record(name)

    # instances ------------------------------------------------------------------------------
    def instances(self, bot: str | None = None) -> list[Instance]:
        return [i for k, i in sorted(self._insts.items()) if bot is None or k[0] == bot]

    def save_instance(self, inst: Instance) -> None:
        self._insts[(inst.bot, inst.replica)] = inst
        self._apply(("inst", inst.bot, inst.replica), [(INSTANCE_UPSERT, tuple(inst))])
        self._record(inst.bot)

    def drop_instance(self, bot: str, replica: int) -> None:
        self._insts.pop((bot, replica), None)
        self._apply(
            ("inst", bot, replica), [("DELETE FROM instances WHERE bot=? AND replica=?", (bot, replica))]
        )
        self._record(bot)

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
        """Store an event (or keep it in memory while the database cannot be written)."""
        when = self._clock() if at is None else at
        event = Event(self._next_event, when, bot, replica, kind, from_state, to_state, reason)
        self._next_event += 1
        if len(self._unsaved) == self._unsaved.maxlen:
            self._lost_events += 1  # the oldest unsaved event drops out of the ring
        self._unsaved.append(event)
        self.flush()
        return event

    def events(self, *, bot: str | None = None, after_id: int = 0, limit: int = 200) -> list[Event]:
        if bot is None:
            rows = self.db.execute(
                "SELECT * FROM events WHERE id > ? ORDER BY id DESC LIMIT ?", (after_id, limit)
            )
        else:
            rows = self.db.execute(
                "SELECT * FROM events WHERE id > ? AND bot=? ORDER BY id DESC LIMIT ?", (after_id, bot, limit)
            )
        found = [Event(*row) for row in rows]
        found += [e for e in self._unsaved if e.id > after_id and (bot is None or e.bot == bot)]
        found.sort(key=lambda e: e.id)
        return found[-limit:] if limit > 0 else []

    # rebuilding -----------------------------------------------------------------------------
    def _rebuild(self, corrupt: str | None, moved_to: Path | None) -> str | None:
        """Fill a new database from the bots' JSON records; the message to show, if any."""
        bots, release, problems = self.records.load() if self.records is not None else ([], None, [])
        if corrupt is None and not bots:
            return None  # a first start
        kept = ""
        if release is not None:
            with contextlib.suppress(HostError, KeyError, TypeError, ValueError):
                number = self.add_release(
                    str(release["who"]),
                    str(release["spec_path"]),
                    str(release["spec_text"]),
                    f"the spec of release {release.get('id')}, kept when the state database was rebuilt",
                )
                kept = f"; its newest spec was kept as release {number}"
        names = []
        for record in bots:
            try:
                name = str(record["bot"])
                policy = record["policy"]
                self._save_bot(
                    BotRow(
                        name,
                        policy,
                        policy_hash(policy),
                        str(record["desired"]),
                        bool(record.get("manual_stop")),
                        None,
                    )
                )
                for inst in record.get("instances") or []:
                    fields = {f: inst.get(f) for f in Instance._fields}
                    fields["restarts"] = int(fields["restarts"] or 0)
                    self.save_instance(Instance(**fields))
                names.append(name)
            except (KeyError, TypeError, ValueError) as err:
                problems.append(f"the record of {record.get('bot')!r} is incomplete: {err}")
        where = "no bot records" if self.records is None else f"the bot records in {self.records.dir}"
        rebuilt = (
            f"rebuilt from running sandboxes and {where}: {', '.join(names)}"
            if names
            else f"a new one starts empty ({where} held no bot)"
        )
        what = (
            f"state database was corrupt ({corrupt}); moved to {moved_to}"
            if corrupt is not None
            else "state database was missing or empty"
        )
        skipped = "".join(f"; skipped {p}" for p in problems)
        return f"{what}; {rebuilt}. The release history cannot be rebuilt{kept}{skipped}"
