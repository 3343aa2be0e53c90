"""A second record of the daemon's bots, outside SQLite: one small JSON file per bot.

``<state>/run/bots/<bot>.json`` holds what the ``bots`` row holds (the bot's policy, i.e. its
spec section and base_dir, its desired state) and every instance of the bot (pids with their
start time, cgroup, restarts, last exit, the restart tracker's state). ``<state>/run/release.json``
holds the spec of the newest release. Each file is written atomically (a temporary file,
fsync, rename, fsync of the folder) whenever its content changes, so a daemon killed at any
moment leaves the old or the new file, never a torn one.

When the SQLite database is corrupt (or gone), :mod:`clawpen.daemon.store` rebuilds the bots
and instances from these files, and the running sandboxes are adopted as after any daemon
restart. The release history has no such record and is lost; the newest spec is kept.

Each file carries ``"format"``: a file of an unknown (newer) format is skipped with a warning.

The daemon writes them in the background (``background=True``): a change is queued (the newest
content of each file wins) and a writer thread writes what is queued, each file fsynced before
its rename and the folder fsynced once per batch. Bringing 500 bots up changes their records
about 1,500 times; written on the event loop, with two fsyncs each, that was half of the
daemon's time in ``up``. A record may then lag its bot by the time of one write; ``flush``
(``Store.close`` calls it) waits for the queue. Without it, every write is done at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from clawpen.fsutil import write_all, write_atomic
from clawpen.spec.rules import BOT_NAME

RECORD_FORMAT = 1


class Records:
    """The JSON records in ``<run_dir>``; every write error is the caller's to tolerate (OSError;
    in the background, the writer's last error is :attr:`error` until a write succeeds)."""

    def __init__(self, run_dir: Path, *, background: bool = False) -> None:
        self.dir = run_dir / "bots"
        self.release_path = run_dir / "release.json"
        self._written: dict[Path, bytes] = {}  # what each file holds now: skip unchanged writes
        self.error: OSError | None = None
        self._queue: dict[Path, bytes | None] = {}  # None: remove the file
        self._busy = False
        self._cond = threading.Condition()
        self._writer: threading.Thread | None = None
        if background:
            self._writer = threading.Thread(target=self._run, name="clawpen-records", daemon=True)
            self._writer.start()

    def path_for(self, bot: str) -> Path:
        if not BOT_NAME.match(bot):
            raise ValueError(f"not a bot name: {bot!r}")
        return self.dir / f"{bot}.json"

    def write_bot(self, bot: str, record: dict[str, Any]) -> None:
        self._write(self.path_for(bot), {"format": RECORD_FORMAT, "bot": bot, **record})

    def remove_bot(self, bot: str) -> None:
        path = self.path_for(bot)
        self._written.pop(path, None)
        if self._writer is not None:
            self._enqueue(path, None)
            return
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def write_release(self, release: dict[str, Any]) -> None:
        self._write(self.release_path, {"format": RECORD_FORMAT, **release})

    def _write(self, path: Path, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        if self._written.get(path) == data:
            return
        if self._writer is not None:
            self._written[path] = data
            self._enqueue(path, data)
            if self.error is not None:
                raise self.error  # the writer's last batch failed: the caller warns once
            return
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            write_atomic(path, data, mode=0o600)
        except OSError:
            with contextlib.suppress(OSError):
                path.with_name(f".{path.name}.{os.getpid()}.tmp").unlink()
            self._written.pop(path, None)
            raise
        self._written[path] = data

    # the background writer -----------------------------------------------------------------
    def _enqueue(self, path: Path, data: bytes | None) -> None:
        with self._cond:
            self._queue.pop(path, None)  # keep the order of the newest changes
            self._queue[path] = data
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._busy = False
                    self._cond.notify_all()
                    self._cond.wait()
                batch, self._queue, self._busy = self._queue, {}, True
            self._write_batch(batch)

    def _write_batch(self, batch: dict[Path, bytes | None]) -> None:
        folders: set[Path] = set()
        error: OSError | None = None
        for path, data in batch.items():
            try:
                if data is None:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                else:
                    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                    _replace(path, data)
                folders.add(path.parent)
            except OSError as err:
                error = err
                if self._written.get(path) == data:
                    self._written.pop(path, None)  # written again at its next change
        for folder in folders:  # the renames, once per folder and batch
            try:
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as err:
                error = err
        self.error = error

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued change is written; False if it took longer than ``timeout``."""
        if self._writer is None:
            return True
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def load(self) -> tuple[list[dict[str, Any]], dict[str, Any] | None, list[str]]:
        """(bot records, the release record or None, problems: one line per file skipped)."""
        bots: list[dict[str, Any]] = []
        problems: list[str] = []
        for path in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []:
            record = _read(path, problems)
            if record is None:
                continue
            if record.get("bot") != path.stem or not isinstance(record.get("policy"), dict):
                problems.append(f"{path}: not a bot record")
                continue
            bots.append(record)
        release = _read(self.release_path, problems) if self.release_path.exists() else None
        return bots, release, problems


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` beside ``path``, fsync it, rename it over ``path`` (the folder's fsync is
    the caller's, once for many files)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.bg.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _read(path: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        problems.append(f"{path}: {err}")
        return None
    if not isinstance(record, dict):
        problems.append(f"{path}: not a JSON object")
        return None
    if record.get("format") != RECORD_FORMAT:
        found = record.get("format")
        problems.append(f"{path}: format {found!r} unknown (this clawpen reads {RECORD_FORMAT})")
        return None
    return record
