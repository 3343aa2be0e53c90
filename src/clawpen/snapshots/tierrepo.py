"""restic on one tier's repository (hot, warm or cold), any backend, for :mod:`.tiers`: run
by :mod:`clawpen.snapshots.runner` (the password, the same for every tier, through a pipe; a
backend's credentials from the vault into restic's environment only)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from clawpen.errors import HostError
from clawpen.snapshots.restic import TAG
from clawpen.snapshots.runner import ResticRepo, forgotten_ids, snapshot_time
from clawpen.spec.snapshots import KeepCounts


class TierSnapshot(NamedTuple):
    """One snapshot of a tier: ``key`` is the id it had when first taken (restic's ``original``)."""

    id: str
    key: str
    time: float  # seconds since the epoch
    tags: tuple[str, ...]


class TierRepo(ResticRepo):
    """One tier's restic repository (``location``: a local path or a backend string)."""

    def __init__(
        self,
        name: str,
        location: str,
        *,
        cache: Path,
        password: Callable[[], bytes],
        env_secrets: Mapping[str, bytes] | None = None,
        restic: str = "restic",
        environ: Mapping[str, str] = os.environ,
        argv_seen: list[list[str]] | None = None,
    ) -> None:
        self.name = name
        super().__init__(
            location, cache=cache, password=password, label=f"storage.{name}", env_secrets=env_secrets,
            restic=restic, environ=environ, argv_seen=argv_seen,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"TierRepo({self.name}={self.location!r})"

    def ensure_from(self, source: TierRepo) -> bool:
        """Initialise this repository with ``source``'s chunker parameters (so deduplication
        works across them) on first use; True when created now."""
        if self.exists():
            return False
        if self.is_local and not Path(self.location).parent.is_dir():
            # never mkdir -p: an unmounted disk would silently fill the root file system
            raise HostError(
                f"the {self.name} repository's folder {Path(self.location).parent} is missing",
                where=f"storage.{self.name}: {self.location}",
                hint="mount the disk (or create the folder); nothing was moved",
            )
        self.run(["init", "--copy-chunker-params"], "init", source=source)
        return True

    def snapshots(self) -> list[TierSnapshot]:
        """clawpen's snapshots here, oldest first (none in a repository not yet initialised)."""
        if self.is_local and not self.exists():
            return []
        rows = json.loads(self.run(["snapshots", "--json", "--tag", TAG], "snapshots") or "[]")
        return sorted((_row(r) for r in rows or []), key=lambda s: s.time)

    def copy_from(self, source: TierRepo, ids: Sequence[str]) -> None:
        """Copy snapshots ``ids`` of ``source`` here (restic skips what is here already)."""
        self.run(["copy", *ids], "copy", source=source)

    def forget(self, ids: Sequence[str]) -> None:
        """Forget snapshots ``ids`` here and prune their data."""
        self.run(["forget", "--prune", *ids], "forget")

    def forget_keep(self, series: str, keep: KeepCounts) -> list[str]:
        """Forget the snapshots of ``series`` (a tag: ``bot:NAME`` or ``state``) beyond ``keep``
        (restic's newest of each hour, day, week, month), then prune; the ids forgotten."""
        args = ["forget", "--json", "--tag", f"{TAG},{series}", "--group-by", "host", "--prune"]
        for unit in ("hourly", "daily", "weekly", "monthly"):
            args += [f"--keep-{unit}", str(getattr(keep, unit))]
        return forgotten_ids(self.run(args, "forget"))

    def size(self) -> int:
        """Bytes the repository's data takes (restic's raw-data size)."""
        if self.is_local and not self.exists():
            return 0
        out = self.run(["stats", "--json", "--mode", "raw-data"], "stats")
        return int(json.loads(out or "{}").get("total_size", 0))


def _row(row: dict[str, Any]) -> TierSnapshot:
    when = snapshot_time(str(row.get("time", "")), where="storage")
    sid = str(row["id"])
    return TierSnapshot(
        sid, str(row.get("original") or sid), when, tuple(str(t) for t in row.get("tags") or [])
    )
