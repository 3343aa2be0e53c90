"""Snapshots of clawpen's own state (``clawpen snapshot create|ls|restore --state``).

What is kept: the database (``clawpen.db``), copied through SQLite's backup API (a consistent
copy, never the live file), the vault (``secrets.json``) and its master key (``master.key``), the
audit log (``audit.log``) and the bot records (``run/*.json``, from which a lost database is
rebuilt). They are gathered in a private staging folder, backed up as ``.`` with the tags
``clawpen`` and ``state``, and the folder is removed. A restore writes them into a new folder,
offline (the daemon stopped); docs/rollback.md says how to move them into place.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

from clawpen.audit import AUDIT_FILE
from clawpen.errors import UsageError
from clawpen.snapshots.restic import BackupResult, Keep, Repository, Snapshot, pick_one
from clawpen.vault.store import KEY_FILE, SECRETS_FILE

STATE_TAG = "state"
DB_FILE = "clawpen.db"
VAULT_FILE = SECRETS_FILE
RECORDS_DIR = "run"
FILES = (VAULT_FILE, KEY_FILE, AUDIT_FILE)


def _copy_db(source: Path, target: Path) -> None:
    """A consistent copy of the live database (SQLite's online backup API)."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


def stage(state_dir: Path, into: Path) -> list[str]:
    """Copy what a state snapshot keeps into the (empty) folder ``into``; the names copied."""
    copied: list[str] = []
    if (state_dir / DB_FILE).is_file():
        _copy_db(state_dir / DB_FILE, into / DB_FILE)
        copied.append(DB_FILE)
    for name in FILES:
        if (state_dir / name).is_file():
            shutil.copy2(state_dir / name, into / name, follow_symlinks=False)
            copied.append(name)
    records = state_dir / RECORDS_DIR
    if records.is_dir():
        (into / RECORDS_DIR).mkdir(mode=0o700)
        for path in sorted(records.glob("*.json")):
            if path.is_file() and not path.is_symlink():
                shutil.copy2(path, into / RECORDS_DIR / path.name)
                copied.append(f"{RECORDS_DIR}/{path.name}")
    return copied


def create(repo: Repository, *, tags: tuple[str, ...] = (), at: float | None = None) -> BackupResult:
    """Snapshot ``repo``'s state folder (tag ``state``, and ``tags``)."""
    repo.ensure()
    base = repo.state_dir / "snapshots"
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(prefix="state-", dir=base) as tmp:
        os.chmod(tmp, 0o700)
        stage(repo.state_dir, Path(tmp))
        return repo.backup(None, Path(tmp), (STATE_TAG, *tags), at=at)


def snapshots(repo: Repository, tag: str | None = None) -> list[Snapshot]:
    """The state snapshots (also tagged ``tag``, when given), oldest first."""
    return repo.snapshots(tag=STATE_TAG + (f",{tag}" if tag else ""))


def forget(repo: Repository, keep: Keep, tag: str) -> list[str]:
    """Apply ``keep`` to the state snapshots tagged ``tag`` too (then prune)."""
    return repo.forget(None, keep, tag=f"{STATE_TAG},{tag}")


def restore(repo: Repository, snapshot: str, target: Path) -> Snapshot:
    """Restore a state snapshot (an id prefix of 4+ characters, or ``latest``) into ``target``,
    a new or empty folder."""
    where = "clawpen snapshot restore --state"
    picked = pick_one(snapshots(repo), snapshot)
    if len(picked) != 1:
        raise UsageError(
            f"there is {'no' if not picked else 'more than one'} state snapshot {snapshot!r}",
            where=where,
            hint="see `clawpen snapshot ls --state` (an id prefix of at least 4 characters)",
        )
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(
            f"the restore target {target} exists and is not empty",
            where=where,
            hint="name a new folder with --to",
        )
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    repo.restore_snapshot(picked[0], target)
    return picked[0]
