"""The bots' snapshots in a restic repository (run by :mod:`clawpen.snapshots.runner`).

The local repository lives at ``<state>/snapshots/repo`` and is created (``restic init``) on first
use; a storage tier's (warm, cold) can be read the same way. The password is a random secret in
the clawpen vault (``CLAWPEN_SNAPSHOT_PASSWORD``, created on first use), handed to restic through
a pipe; restic's cache is ``<state>/snapshots/cache``.

Snapshots of a bot carry the tags ``clawpen`` and ``bot:<name>``; the workspace is backed up as
``.`` from inside it, so a restore writes its files straight into the target folder.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from clawpen.errors import ConfigError, HostError, UsageError
from clawpen.snapshots.runner import HINT_INSTALL, PASSWORD_SECRET, ResticRepo, forgotten_ids

TAG = "clawpen"


class Snapshot(NamedTuple):
    """One snapshot as ``restic snapshots --json`` lists it."""

    id: str
    short_id: str
    time: str
    bot: str | None
    paths: list[str]
    tags: list[str]


class BackupResult(NamedTuple):
    """restic's summary of one backup."""

    snapshot_id: str
    files_new: int
    files_changed: int
    files_unmodified: int
    data_added: int
    total_bytes: int
    duration: float


class Keep(NamedTuple):
    """``forget`` retention, per bot: how many daily, weekly and monthly snapshots stay."""

    daily: int = 7
    weekly: int = 4
    monthly: int = 6
    hourly: int = 0


def tag_for(bot: str) -> str:
    return f"bot:{bot}"


def before_release_tag(release: int) -> str:
    """The tag of the snapshots taken just before release ``release`` was applied."""
    return f"before-release:{release}"


def pick_one(snapshots: list[Snapshot], wanted: str) -> list[Snapshot]:
    """The snapshots (oldest first) that ``wanted`` names: ``latest``, or an id prefix of at
    least 4 characters; the caller refuses anything but exactly one."""
    if wanted == "latest":
        return snapshots[-1:]
    return [s for s in snapshots if s.id.startswith(wanted)] if len(wanted) >= 4 else []


class Repository(ResticRepo):
    """A bot's snapshots in one restic repository: by default the local one of a state directory,
    ``<state>/snapshots/repo``; ``location``: another (a storage tier's, any backend), with
    ``env_secrets`` for its backend.

    ``password``: returns the repository password (bytes); by default the vault's
    ``CLAWPEN_SNAPSHOT_PASSWORD``, created with 32 random bytes on first use.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        password: Callable[[], bytes] | None = None,
        restic: str = "restic",
        environ: Mapping[str, str] = os.environ,
        location: str | None = None,
        env_secrets: Mapping[str, bytes] | None = None,
        label: str = "snapshots",
    ) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / "snapshots" / "repo" if location is None else Path(location)
        super().__init__(
            str(self.path) if location is None else location,
            cache=self.state_dir / "snapshots" / "cache",
            password=password or self._vault_password,
            label=label,
            env_secrets=env_secrets,
            restic=restic,
            environ=environ,
        )

    def _vault_password(self) -> bytes:
        from clawpen.vault.store import Vault

        vault = Vault(self.state_dir, environ=self._environ)
        if PASSWORD_SECRET not in vault.names():
            if self.exists():
                raise ConfigError(
                    f"the snapshot repository {self.location} exists but its password is gone from the vault",
                    where=f"vault secret {PASSWORD_SECRET}",
                    hint=f"restore {self.state_dir}/secrets.json and master.key from a backup, or "
                    "restore the state from a state snapshot with the password you kept "
                    '(docs/rollback.md, "Emergency: restoring the state")',
                )
            vault.set(PASSWORD_SECRET, secrets.token_urlsafe(32).encode())
        return vault.get(PASSWORD_SECRET)

    def _run(self, args: Sequence[str], what: str, *, cwd: Path | None = None) -> str:
        return self.run(args, what, cwd=cwd)

    def ensure(self) -> bool:
        """Create the repository on first use; ``True`` when it was created now."""
        if self.exists():
            return False
        if not self.is_local:
            raise HostError(
                f"the repository {self.location} is not initialised",
                where=self.label,
                hint="clawpen initialises a tier's repository when it first copies snapshots to it",
            )
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._run(["init"], "init")
        return True

    # -- operations -------------------------------------------------------------------------

    def backup(
        self, bot: str | None, workspace: Path, tags: Sequence[str] = (), *, at: float | None = None
    ) -> BackupResult:
        """Back up ``workspace`` (its content, as ``.``) with the tags ``clawpen``, ``bot:<bot>``
        (none for ``bot=None``: clawpen's own state) and ``tags`` (say ``before-release:<N>``);
        ``at``: the snapshot's time (default: now)."""
        if not workspace.is_dir():
            raise UsageError(
                f"the workspace {workspace} of bot {bot} does not exist",
                where=f"snapshot {bot}",
                hint="a bot without a workspace has nothing to snapshot",
            )
        self.ensure()
        extra = [a for t in tags for a in ("--tag", t)]
        extra += ["--tag", tag_for(bot)] if bot is not None else []
        if at is not None:
            extra += ["--time", time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))]
        args = ["backup", "--json", "--tag", TAG, *extra, "--host", "clawpen", "."]
        out = self._run(args, "backup", cwd=workspace)
        summary = next((m for m in _json_lines(out) if m.get("message_type") == "summary"), None)
        if summary is None:
            raise HostError(
                "restic backup gave no summary", where=f"snapshots: {self.path}", hint=HINT_INSTALL
            )
        return BackupResult(
            snapshot_id=str(summary["snapshot_id"]),
            files_new=int(summary.get("files_new", 0)),
            files_changed=int(summary.get("files_changed", 0)),
            files_unmodified=int(summary.get("files_unmodified", 0)),
            data_added=int(summary.get("data_added", 0)),
            total_bytes=int(summary.get("total_bytes_processed", 0)),
            duration=float(summary.get("total_duration", 0.0)),
        )

    def snapshots(self, bot: str | None = None, *, tag: str | None = None) -> list[Snapshot]:
        """Snapshots (of ``bot``, or every clawpen one; ``tag``: only those with this tag too, or
        these tags: ``a,b``), oldest first; none before the first backup."""
        if not self.exists():
            return []
        wanted = tag_for(bot) if bot else TAG
        out = self._run(["snapshots", "--json", "--tag", wanted + (f",{tag}" if tag else "")], "snapshots")
        try:
            rows = json.loads(out or "[]")
        except ValueError:
            raise HostError("restic snapshots gave no JSON", where=f"snapshots: {self.path}") from None
        found = []
        for row in rows or []:
            tags = [str(t) for t in row.get("tags") or []]
            owner = next((t.removeprefix("bot:") for t in tags if t.startswith("bot:")), None)
            found.append(
                Snapshot(
                    str(row["id"]), str(row.get("short_id", row["id"][:8])), str(row.get("time", "")),
                    owner, [str(p) for p in row.get("paths") or []], tags,
                )
            )  # fmt: skip
        return sorted(found, key=lambda s: s.time)

    def find(self, bot: str, snapshot: str = "latest") -> Snapshot:
        """``bot``'s snapshot whose id starts with ``snapshot`` (or its newest for ``latest``)."""
        picked = pick_one(self.snapshots(bot), snapshot)
        if len(picked) != 1:
            raise UsageError(
                f"bot {bot} has {'no' if not picked else 'more than one'} snapshot {snapshot!r}",
                where=f"clawpen snapshot restore {bot}",
                hint=f"see `clawpen snapshot ls {bot}` (an id prefix of at least 4 characters)",
            )
        return picked[0]

    def restore(self, bot: str, snapshot: str, target: Path) -> Snapshot:
        """Restore ``bot``'s snapshot into ``target``, which must not exist or be empty."""
        snap = self.find(bot, snapshot)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise UsageError(
                f"the restore target {target} exists and is not empty",
                where=f"clawpen snapshot restore {bot}",
                hint="name a new folder with --to",
            )
        self.restore_snapshot(snap, target)
        return snap

    def restore_snapshot(self, snap: Snapshot, target: Path) -> None:
        """restic restore of ``snap`` into ``target`` (the caller checks the target)."""
        self._run(["restore", snap.id, "--target", str(target)], "restore")

    def forget(self, bot: str | None, keep: Keep, *, prune: bool = True, tag: str | None = None) -> list[str]:
        """Apply ``keep`` to ``bot``'s snapshots (only those also tagged ``tag``, when given;
        ``bot=None``: every clawpen snapshot tagged ``tag``), then prune; the ids forgotten."""
        if not self.exists():
            return []
        tags = ",".join([tag_for(bot) if bot is not None else TAG, *([tag] if tag else [])])
        args = ["forget", "--json", "--tag", tags, "--group-by", "host", "--keep-hourly", str(keep.hourly)]
        args += ["--keep-daily", str(keep.daily), "--keep-weekly", str(keep.weekly)]
        args += ["--keep-monthly", str(keep.monthly), *(["--prune"] if prune else [])]
        out = self._run(args, "forget")
        return forgotten_ids(out)


def _json_lines(out: str) -> Iterator[dict[str, Any]]:
    for line in out.splitlines():
        if line.startswith("{"):
            try:
                yield json.loads(line)
            except ValueError:
                continue
