"""``clawpen snapshot create|ls|restore|forget BOT``: the daemon's workspace snapshots (restic,
see :mod:`clawpen.snapshots`). A running bot's cgroups are frozen while restic reads its
workspace; a restore never writes into the workspace of a bot that is running or meant to run.
restic runs in a worker thread, so the daemon keeps serving meanwhile."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol

from pydantic import Field

from clawpen.errors import UsageError
from clawpen.ops import Call, Contract, Operation, Reply, Request

if TYPE_CHECKING:
    from clawpen.daemon.runtime import Instance, Services
    from clawpen.daemon.store import Store

Name = Annotated[str, Field(max_length=200)]


class _Daemon(Protocol):
    services: Services
    store: Store

    def known_bot(self, name: str) -> str: ...

    def replicas(self, name: str) -> list[Instance]: ...


class SnapshotBot(Request):
    bot: Name


class RestoreRequest(Request):
    bot: Name
    snapshot: str = Field(default="latest", min_length=4, max_length=64, pattern=r"^[0-9a-f]+$|^latest$")
    to: str | None = Field(default=None, max_length=4096, description="a new folder (absolute path)")


class ForgetRequest(Request):
    bot: Name
    daily: int = Field(default=7, ge=0, le=10_000)
    weekly: int = Field(default=4, ge=0, le=10_000)
    monthly: int = Field(default=6, ge=0, le=10_000)


class SnapshotCreated(Reply):
    bot: str
    snapshot: str
    frozen: bool
    pause_s: float
    freezer_states: list[str]
    files_new: int
    files_changed: int
    data_added: int
    duration_s: float


class SnapshotRow(Reply):
    id: str
    short_id: str
    time: str
    bot: str | None
    tags: list[str]


class SnapshotRestored(Reply):
    bot: str
    snapshot: str
    target: str
    previous: str | None


class SnapshotForgotten(Reply):
    bot: str
    forgotten: list[str]


SNAPSHOT_CREATE = Contract(
    "snapshot_create", "operator", SnapshotBot, SnapshotCreated,
    "snapshot a bot's workspace (restic; a running bot is frozen meanwhile)",
)  # fmt: skip
SNAPSHOT_LS = Contract(
    "snapshot_ls", "viewer", SnapshotBot, list[SnapshotRow], "a bot's snapshots, oldest first"
)
SNAPSHOT_RESTORE = Contract(
    "snapshot_restore", "operator", RestoreRequest, SnapshotRestored,
    "restore a snapshot to a new folder, or in place of a stopped bot's workspace",
)  # fmt: skip
SNAPSHOT_FORGET = Contract(
    "snapshot_forget", "operator", ForgetRequest, SnapshotForgotten,
    "forget a bot's snapshots beyond --keep-daily/weekly/monthly, and prune",
)  # fmt: skip
CONTRACTS = (SNAPSHOT_CREATE, SNAPSHOT_LS, SNAPSHOT_RESTORE, SNAPSHOT_FORGET)


def _workspace(daemon: _Daemon, name: str) -> Path:
    insts = daemon.replicas(name)
    workspace = insts[0].plan().workspace if insts else None
    if not workspace:
        raise UsageError(f"bot {name} has no workspace", where=f"snapshot {name}", hint="nothing to snapshot")
    return Path(workspace)


def operations(daemon: _Daemon) -> list[Operation[Any]]:
    from clawpen.snapshots import consistent
    from clawpen.snapshots.restic import Keep, Repository

    def repo() -> Repository:
        return Repository(daemon.services.state_dir)

    async def create(req: SnapshotBot, _call: Call) -> dict[str, Any]:
        name = daemon.known_bot(req.bot)
        workspace = _workspace(daemon, name)
        host = daemon.services.cgroups()
        live = [i for i in daemon.replicas(name) if i.sandbox is not None]
        cgroups = [host.attach(i.cgroup_name) for i in live] if host is not None else []
        made = await asyncio.to_thread(consistent.create, repo(), name, workspace, cgroups)
        return {
            "bot": name,
            "snapshot": made.backup.snapshot_id,
            "frozen": made.frozen and bool(cgroups),
            "pause_s": round(made.pause, 6),
            "freezer_states": made.states,
            "files_new": made.backup.files_new,
            "files_changed": made.backup.files_changed,
            "data_added": made.backup.data_added,
            "duration_s": made.backup.duration,
        }

    async def ls(req: SnapshotBot, _call: Call) -> list[dict[str, Any]]:
        name = daemon.known_bot(req.bot)
        snaps = await asyncio.to_thread(repo().snapshots, name)
        return [
            {"id": s.id, "short_id": s.short_id, "time": s.time, "bot": s.bot, "tags": s.tags} for s in snaps
        ]

    async def restore(req: RestoreRequest, _call: Call) -> dict[str, Any]:
        name = daemon.known_bot(req.bot)
        workspace = _workspace(daemon, name)
        running = daemon.store.bots()[name].desired == "running" or any(
            i.sandbox is not None for i in daemon.replicas(name)
        )
        to = None
        if req.to is not None:
            to = Path(req.to)
            if not to.is_absolute():
                raise UsageError(
                    f"--to {req.to} is not an absolute path", where="clawpen snapshot restore --to"
                )
        done = await asyncio.to_thread(
            consistent.restore, repo(), name, req.snapshot, workspace, running=running, to=to
        )
        return {
            "bot": name,
            "snapshot": done.snapshot.id,
            "target": str(done.target),
            "previous": None if done.previous is None else str(done.previous),
        }

    async def forget(req: ForgetRequest, _call: Call) -> dict[str, Any]:
        name = daemon.known_bot(req.bot)
        keep = Keep(req.daily, req.weekly, req.monthly)
        gone = await asyncio.to_thread(repo().forget, name, keep)
        return {"bot": name, "forgotten": gone}

    return [SNAPSHOT_CREATE.bind(create), SNAPSHOT_LS.bind(ls), SNAPSHOT_RESTORE.bind(restore),
            SNAPSHOT_FORGET.bind(forget)]  # fmt: skip
