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
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from clawpen.fsutil import write_atomic
from clawpen.spec.rules import BOT_NAME

RECORD_FORMAT = 1


class Records:
    """The JSON records in ``<run_dir>``; every write error is the caller's to tolerate (OSError)."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir / "bots"
        self.release_path = run_dir / "release.json"
        self._written: dict[Path, bytes] = {}  # what each file holds now: skip unchanged writes

    def path_for(self, bot: str) -> Path:
        if not BOT_NAME.match(bot):
            raise ValueError(f"not a bot name: {bot!r}")
        return self.dir / f"{bot}.json"

    def write_bot(self, bot: str, record: dict[str, Any]) -> None:
        self._write(self.path_for(bot), {"format": RECORD_FORMAT, "bot": bot, **record})

    def remove_bot(self, bot: str) -> None:
        path = self.path_for(bot)
        self._written.pop(path, None)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def write_release(self, release: dict[str, Any]) -> None:
        self._write(self.release_path, {"format": RECORD_FORMAT, **release})

    def _write(self, path: Path, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        if self._written.get(path) == data:
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
