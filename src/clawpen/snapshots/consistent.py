"""A consistent snapshot of a running bot, and a restore that never writes under one.

While restic reads the workspace of a running bot, every cgroup of the bot (one per replica) is
frozen (cgroup freezer), then thawed in a ``finally``: the bot cannot be half-way through a write
in the snapshot. The freeze starts when restic first opens the workspace (not during restic's
start-up; see :mod:`clawpen.snapshots.freezeonread`). The pause (freeze to thaw) is measured
and reported.

A restore goes into a new folder (``to``), or, when the bot is stopped, into a fresh folder next
to the workspace that then takes its place (the old one is kept as
``<workspace>.before-restore-<time>``): never into a running bot's workspace.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

from clawpen.errors import UsageError
from clawpen.snapshots import freezeonread
from clawpen.snapshots.restic import BackupResult, Repository, Snapshot


class Freezable(Protocol):
    """What a bot's cgroup offers here (:class:`clawpen.sandbox.cgroups.Cgroup`)."""

    def freeze(self, timeout: float = ...) -> bool: ...

    def thaw(self) -> None: ...

    def freezer_state(self) -> str | None: ...


class Created(NamedTuple):
    """A snapshot taken: restic's summary, whether the bot was frozen, and for how long."""

    backup: BackupResult
    frozen: bool
    pause: float
    states: list[str]  # each cgroup's freezer state seen just before restic started


def create(
    repo: Repository,
    bot: str,
    workspace: Path,
    cgroups: Sequence[Freezable] = (),
    tags: Sequence[str] = (),
    *,
    at: float | None = None,
) -> Created:
    """Back up ``bot``'s workspace; ``cgroups`` (of its running replicas) are frozen meanwhile:
    from the moment restic opens the workspace (:mod:`clawpen.snapshots.freezeonread`) where
    fanotify allows it, else from before restic starts; thawed when restic is done."""
    repo.ensure()  # the first-use init does not belong to the pause
    frozen: list[Freezable] = []
    states: list[str] = []

    def freeze() -> None:
        for cg in cgroups:
            if cg.freeze():
                frozen.append(cg)
        states.extend(cg.freezer_state() or "none" for cg in cgroups)

    started: float | None = None
    try:
        if cgroups and freezeonread.available():
            with freezeonread.FreezeOnRead(workspace, freeze) as watch:
                result = repo.backup(bot, workspace, tags, at=at)
            started = watch.freeze_started
            if watch.error is not None:
                raise watch.error
        else:
            started = time.monotonic()
            freeze()
            result = repo.backup(bot, workspace, tags, at=at)
    finally:
        for cg in frozen:
            cg.thaw()
        pause = time.monotonic() - started if frozen and started is not None else 0.0
    return Created(result, bool(frozen) and len(frozen) == len(cgroups), pause, states)


def _inside(path: Path, folder: Path) -> bool:
    path, folder = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return path == folder or folder in path.parents or path in folder.parents


class Restored(NamedTuple):
    snapshot: Snapshot
    target: Path
    previous: Path | None  # where the replaced workspace went (in-place restore)


def restore(
    repo: Repository, bot: str, snapshot: str, workspace: Path, *, running: bool, to: Path | None = None
) -> Restored:
    """Restore ``bot``'s ``snapshot``: into ``to`` if given, else in place of ``workspace``
    (refused while the bot runs, exit 2)."""
    where = f"clawpen snapshot restore {bot}"
    if to is not None:
        if _inside(to, workspace):
            if running:
                raise _running(bot, where)
            raise UsageError(
                f"--to {to} is the workspace of {bot} or overlaps it",
                where=where,
                hint=f"leave out --to to restore in place, or name a folder outside {workspace}",
            )
        return Restored(repo.restore(bot, snapshot, to), to, None)
    if running:
        raise _running(bot, where)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    fresh = workspace.with_name(f"{workspace.name}.restoring-{stamp}")
    snap = repo.restore(bot, snapshot, fresh)
    previous = workspace.with_name(f"{workspace.name}.before-restore-{stamp}")
    if workspace.exists():
        os.rename(workspace, previous)
    os.rename(fresh, workspace)
    return Restored(snap, workspace, previous if previous.exists() else None)


def _running(bot: str, where: str) -> UsageError:
    return UsageError(
        f"bot {bot} is running: a restore never overwrites a running bot's workspace",
        where=where,
        hint=f"stop it first (clawpen stop {bot}), or restore to a new folder (--to DIR)",
    )
