"""The backup of one ``host harden apply``: ``STATE/harden/<id>/`` with ``manifest.json`` and the
saved files (``files/<n>``, 0600 in a 0700 folder: /etc/shadow is among them).

Before a step changes anything its files' bytes, mode, owner and existence are saved and the
manifest is written (atomically, fsync); so are the folders, users and firewall it is about to
create. :meth:`Backup.restore_files` puts them back byte for byte."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clawpen.errors import UsageError
from clawpen.fsutil import write_atomic

SUBDIR = "harden"
MANIFEST = "manifest.json"


def base_dir(state: Path) -> Path:
    return state / SUBDIR


@dataclass
class Backup:
    dir: Path
    manifest: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.manifest["id"])

    @classmethod
    def create(cls, state: Path, root: Path, who: str) -> Backup:
        base = base_dir(state)
        base.mkdir(parents=True, exist_ok=True, mode=0o700)
        backup_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
        folder = base / backup_id
        (folder / "files").mkdir(parents=True, mode=0o700)
        manifest = {
            "id": backup_id,
            "root": str(root.resolve()),
            "who": who,
            "created": time.time(),
            "state": "applying",
            "steps": [],
            "entries": [],
            "dirs": [],
            "users": [],
            "tokens": [],
            "firewall": False,
        }
        backup = cls(folder, manifest)
        backup.write()
        return backup

    def write(self) -> None:
        data = json.dumps(self.manifest, indent=1, sort_keys=True).encode()
        write_atomic(self.dir / MANIFEST, data, mode=0o600)

    def save(self, path: Path) -> None:
        """Save ``path``'s bytes, mode, owner and existence (once: the first state counts)."""
        if any(e["path"] == str(path) for e in self.manifest["entries"]):
            return
        entry: dict[str, Any] = {"path": str(path), "existed": False}
        try:
            st = path.lstat()
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISREG(st.st_mode):
                raise UsageError(
                    f"{path} is not a regular file",
                    where="host harden apply",
                    hint="move it away; clawpen backs up and changes regular files only",
                )
            data = path.read_bytes()
            blob = f"files/{len(self.manifest['entries'])}"
            write_atomic(self.dir / blob, data, mode=0o600)
            entry.update(
                existed=True,
                blob=blob,
                sha256=hashlib.sha256(data).hexdigest(),
                mode=stat.S_IMODE(st.st_mode),
                uid=st.st_uid,
                gid=st.st_gid,
            )
        self.manifest["entries"].append(entry)
        self.write()

    def add(self, key: str, value: Any) -> None:
        """Record ``value`` in the list ``key`` (dirs, users, tokens, steps) and write the manifest."""
        if value not in self.manifest[key]:
            self.manifest[key].append(value)
            self.write()

    def set(self, key: str, value: Any) -> None:
        self.manifest[key] = value
        self.write()

    def restore_files(self) -> list[str]:
        """Put every saved file back as it was (newest first), remove the ones that did not
        exist, then the folders that were created; the paths changed."""
        changed = []
        for entry in reversed(self.manifest["entries"]):
            path = Path(entry["path"])
            if not entry["existed"]:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    changed.append(str(path))
                continue
            data = (self.dir / entry["blob"]).read_bytes()
            try:
                st = path.lstat()
                same = (
                    stat.S_ISREG(st.st_mode)
                    and path.read_bytes() == data
                    and stat.S_IMODE(st.st_mode) == entry["mode"]
                    and (st.st_uid, st.st_gid) == (entry["uid"], entry["gid"])
                )
            except FileNotFoundError:
                same = False
            if same:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data, mode=0o600)
            os.chown(path, entry["uid"], entry["gid"])
            os.chmod(path, entry["mode"])
            changed.append(str(path))
        for folder in sorted(self.manifest["dirs"], key=lambda p: p.count("/"), reverse=True):
            with contextlib.suppress(FileNotFoundError, OSError):
                Path(folder).rmdir()
        return changed


def load(state: Path, backup_id: str) -> Backup:
    folder = base_dir(state) / backup_id
    if "/" in backup_id or backup_id.startswith(".") or not (folder / MANIFEST).is_file():
        raise UsageError(
            f"no harden backup {backup_id!r}",
            where="--id",
            hint=f"the backups are the folders of {base_dir(state)}",
        )
    return Backup(folder, json.loads((folder / MANIFEST).read_text()))


def latest(state: Path, root: Path) -> Backup | None:
    """The newest backup of an apply to ``root`` (rolled back or not), or None."""
    base = base_dir(state)
    if not base.is_dir():
        return None
    found = []
    for folder in base.iterdir():
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError):
            continue
        if manifest.get("root") == str(root.resolve()):
            found.append((float(manifest.get("created", 0)), folder.name, manifest))
    if not found:
        return None
    _, name, manifest = max(found)
    return Backup(base / name, manifest)


def missing_parents(path: Path) -> list[Path]:
    """The folders above ``path`` that do not exist yet, top first."""
    out = []
    for parent in path.parents:
        if parent.exists():
            break
        out.append(parent)
    return list(reversed(out))
