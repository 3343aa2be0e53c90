"""``clawpen snapshot create|ls|restore|forget BOT``: the daemon's workspace snapshots (restic,
see :mod:`clawpen.snapshots`). A running bot's cgroups are frozen while restic reads its
workspace; a restore never writes into the workspace of a bot that is running or meant to run.
restic runs in a worker thread, so the daemon keeps serving meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

from pydantic import Field

from clawpen.errors import ClawpenError, HostError, PolicyError, UsageError
from clawpen.ops import Call, Contract, Empty, Operation, Reply, Request
from clawpen.spec.rules import RuleViolation, check_host_path

if TYPE_CHECKING:
    from clawpen.daemon.botlocks import BotLocks
    from clawpen.daemon.release import ReleasePlan
    from clawpen.daemon.runtime import Instance, Services
    from clawpen.daemon.store import Store
    from clawpen.snapshots.consistent import Created
    from clawpen.snapshots.restic import Repository
    from clawpen.spec.loader import LoadedSpec
    from clawpen.spec.models import Bot, Spec

Name = Annotated[str, Field(max_length=200)]


class _Bots(Protocol):
    """What the snapshots use of the daemon (``daemon/server.py``; ``up``'s daemon too)."""

    @property
    def services(self) -> Services: ...
    @property
    def store(self) -> Store: ...
    @property
    def snapshot_locks(self) -> BotLocks: ...
    def replicas(self, name: str) -> list[Instance]: ...
    def bot_from_row(self, policy: dict[str, Any], name: str = "") -> tuple[Bot, str]: ...
    def current_spec(self) -> Spec | None: ...


class _Daemon(_Bots, Protocol):
    @property
    def up_lock(self) -> asyncio.Lock: ...
    @property
    def bot_locks(self) -> BotLocks: ...
    def known_bot(self, name: str) -> str: ...


class SnapshotBot(Request):
    bot: Name


Tier = Literal["hot", "warm", "cold"]


class ListRequest(SnapshotBot):
    tier: Tier = Field(default="hot", description="the [storage] tier to list (default: the local one)")


class RestoreRequest(Request):
    bot: Name
    tier: Tier = Field(default="hot", description="the [storage] tier to restore from")
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
    "snapshot_ls", "viewer", ListRequest, list[SnapshotRow], "a bot's snapshots, oldest first"
)
SNAPSHOT_RESTORE = Contract(
    "snapshot_restore", "operator", RestoreRequest, SnapshotRestored,
    "restore a snapshot to a new folder, or in place of a stopped bot's workspace",
)  # fmt: skip
SNAPSHOT_FORGET = Contract(
    "snapshot_forget", "operator", ForgetRequest, SnapshotForgotten,
    "forget a bot's snapshots beyond --keep-daily/weekly/monthly, and prune",
)  # fmt: skip


class StateCreated(Reply):
    snapshot: str
    data_added: int
    duration_s: float


class SnapshotPassword(Reply):
    password: str


SNAPSHOT_STATE_CREATE = Contract(
    "snapshot_state_create", "admin", Empty, StateCreated,
    "snapshot clawpen's own state: database (SQLite backup), vault and key, audit log, bot records",
)  # fmt: skip
SNAPSHOT_STATE_LS = Contract("snapshot_state_ls", "admin", Empty, list[SnapshotRow], "the state snapshots")
SNAPSHOT_PASSWORD = Contract(
    "snapshot_password", "admin", Empty, SnapshotPassword,
    "the snapshot repository's password (keep a copy apart from the vault); never logged",
)  # fmt: skip
CONTRACTS = (SNAPSHOT_CREATE, SNAPSHOT_LS, SNAPSHOT_RESTORE, SNAPSHOT_FORGET, SNAPSHOT_STATE_CREATE,
             SNAPSHOT_STATE_LS, SNAPSHOT_PASSWORD)  # fmt: skip


def _workspace(daemon: _Bots, name: str) -> Path:
    workspace = stored_workspace(daemon, name)
    if workspace is None:
        raise UsageError(f"bot {name} has no workspace", where=f"snapshot {name}", hint="nothing to snapshot")
    return workspace


def stored_workspace(daemon: _Bots, name: str) -> Path | None:
    """Bot ``name``'s workspace as the daemon has it now (its instances', or its stored policy's
    when it has none, say a stopped bot after a daemon restart); None: it has none."""
    from clawpen.daemon.runtime import Instance

    insts = daemon.replicas(name)
    if not insts:
        row = daemon.store.bots().get(name)
        if row is None:
            return None
        bot, base = daemon.bot_from_row(row.policy, name)
        insts = [Instance(daemon.services, name, 0, bot, base)]
    workspace = insts[0].plan().workspace
    return Path(workspace) if workspace else None


async def take(
    daemon: _Bots,
    repo: Repository,
    name: str,
    workspace: Path,
    tags: Sequence[str] = (),
    *,
    at: float | None = None,
) -> Created:
    """Snapshot bot ``name``'s workspace the one way every snapshot is taken (by hand, before an
    ``up``, on schedule, before a rollback with data): the bot's ``snapshots.before`` command runs
    first inside its running replica (must exit 0), then restic reads the workspace with the
    running replicas frozen (unless ``snapshots.freeze = false``). The caller holds the bot's
    snapshot lock."""
    from clawpen.snapshots import consistent

    spec = daemon.current_spec()
    settings = spec.bots[name].snapshots if spec is not None and name in spec.bots else None
    live = [i for i in daemon.replicas(name) if i.sandbox is not None]  # as they are now
    if settings is not None and settings.before and live:
        await _before(daemon, live[0], settings.before, settings.before_timeout)
    host = daemon.services.cgroups()
    freeze = settings is None or settings.freeze
    cgroups = [host.attach(i.cgroup_name) for i in live] if host is not None and freeze else []
    return await asyncio.to_thread(consistent.create, repo, name, workspace, cgroups, tags, at=at)


async def _before(daemon: _Bots, inst: Instance, command: list[str], timeout: float) -> None:
    """Run a bot's pre-snapshot command in its sandbox, as the bot (a ``cmd`` health check's way)."""
    from clawpen.daemon.health import check
    from clawpen.spec.models import Health

    sandbox = inst.sandbox
    if sandbox is None:
        return
    spec = Health(cmd=command, timeout=timeout)
    result = await check(spec, sandbox, plan=inst.plan(), bpf=daemon.services.bpf())
    if not result.ok:
        raise HostError(
            f"the pre-snapshot command of bot {inst.name} failed: {result.detail}",
            where=f"bots.{inst.name}.snapshots.before",
            hint="fix the command (it runs inside the bot, as the bot) or remove it; no snapshot was taken",
        )


def tier_repository(daemon: _Bots, tier: Tier) -> Repository:
    """The bots' snapshots in ``tier``: hot is the local repository; warm and cold as the applied
    spec's ``[storage]`` names them (a UsageError, exit 2, when it names none)."""
    from clawpen.daemon.ops_storage import current_storage
    from clawpen.snapshots.restic import Repository

    state = daemon.services.state_dir
    if tier == "hot":
        return Repository(state)
    storage = current_storage(daemon.store)
    settings = None if storage is None else getattr(storage, tier)
    if storage is None or settings is None:
        raise UsageError(
            f"there is no {tier} tier",
            where=f"--tier {tier}",
            hint=f"name one in the spec's [storage] {tier}",
        )
    from clawpen.vault.store import Vault

    hot, vault = Repository(state), Vault(state)
    secrets = {n: vault.get(n) for n in settings.env_secrets}
    return Repository(
        state, password=hot.password, location=settings.repository, env_secrets=secrets,
        label=f"storage.{tier}",
    )  # fmt: skip


def operations(daemon: _Daemon) -> list[Operation[Any]]:
    from clawpen.snapshots import consistent
    from clawpen.snapshots.restic import Keep

    def repo(tier: Tier = "hot") -> Repository:
        return tier_repository(daemon, tier)

    async def create(req: SnapshotBot, _call: Call) -> dict[str, Any]:
        name = daemon.known_bot(req.bot)
        workspace = _workspace(daemon, name)
        async with daemon.snapshot_locks.hold(name, "a snapshot of it is being taken"):
            made = await take(daemon, repo(), name, workspace)
        return {
            "bot": name,
            "snapshot": made.backup.snapshot_id,
            "frozen": made.frozen,
            "pause_s": round(made.pause, 6),
            "freezer_states": made.states,
            "files_new": made.backup.files_new,
            "files_changed": made.backup.files_changed,
            "data_added": made.backup.data_added,
            "duration_s": made.backup.duration,
        }

    async def ls(req: ListRequest, _call: Call) -> list[dict[str, Any]]:
        name = daemon.known_bot(req.bot)
        snaps = await asyncio.to_thread(repo(req.tier).snapshots, name)
        return [
            {"id": s.id, "short_id": s.short_id, "time": s.time, "bot": s.bot, "tags": s.tags} for s in snaps
        ]

    async def restore(req: RestoreRequest, _call: Call) -> dict[str, Any]:
        name = daemon.known_bot(req.bot)
        to = None
        if req.to is not None:
            to = Path(req.to)
            if not to.is_absolute():
                raise UsageError(
                    f"--to {req.to} is not an absolute path", where="clawpen snapshot restore --to"
                )
            # the bot's files are written there (as root): refused wherever a bot could not have
            # a writable mount (system folders, .ssh and the like, clawpen's own state)
            try:
                check_host_path(
                    req.to, writable=True, base_dir="/", state_dir=str(daemon.services.state_dir),
                    base_is_spec=False,
                )  # fmt: skip
            except RuleViolation as err:
                raise PolicyError(
                    f"cannot restore to {req.to}: {err}", where="clawpen snapshot restore --to", hint=err.hint
                ) from None
        # The check "is the bot stopped?" and the swap of the folders happen under the bot's
        # lifecycle lock (start/restart are refused meanwhile) and the up lock (up, down and
        # rollback wait): nothing starts the bot on a half-restored workspace.
        async with daemon.up_lock, daemon.bot_locks.hold(name, "its workspace is being restored"):
            name = daemon.known_bot(req.bot)  # `down` may have removed it while we waited
            workspace = _workspace(daemon, name)
            running = daemon.store.bots()[name].desired == "running" or any(
                i.sandbox is not None for i in daemon.replicas(name)
            )
            done = await asyncio.to_thread(
                consistent.restore, repo(req.tier), name, req.snapshot, workspace, running=running, to=to
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

    async def state_create(_req: Empty, _call: Call) -> dict[str, Any]:
        from clawpen.snapshots import state

        made = await asyncio.to_thread(state.create, repo())
        return {"snapshot": made.snapshot_id, "data_added": made.data_added, "duration_s": made.duration}

    async def state_ls(_req: Empty, _call: Call) -> list[dict[str, Any]]:
        from clawpen.snapshots import state

        snaps = await asyncio.to_thread(state.snapshots, repo())
        return [
            {"id": s.id, "short_id": s.short_id, "time": s.time, "bot": s.bot, "tags": s.tags} for s in snaps
        ]

    async def password(_req: Empty, _call: Call) -> dict[str, Any]:
        # created on first use, like the first backup would (the audit log keeps no reply)
        value = await asyncio.to_thread(repo().password)
        return {"password": value.decode()}

    return [SNAPSHOT_CREATE.bind(create), SNAPSHOT_LS.bind(ls), SNAPSHOT_RESTORE.bind(restore),
            SNAPSHOT_FORGET.bind(forget), SNAPSHOT_STATE_CREATE.bind(state_create),
            SNAPSHOT_STATE_LS.bind(state_ls), SNAPSHOT_PASSWORD.bind(password)]  # fmt: skip


async def before_up(daemon: _Bots, loaded: LoadedSpec, plan: ReleasePlan, args: dict[str, Any]) -> None:
    """``[snapshots] before_up``: snapshot the workspace of every bot this ``up`` (or
    ``rollback``) changes or removes, tagged ``before-release:<N>`` (N: the release about to be
    recorded; ``up`` holds the up lock, so none comes in between). Called before anything is
    applied: a failed snapshot stops the ``up`` with nothing changed, unless ``no_snapshot``.
    Opted in by the new spec or by the one applied now."""
    from clawpen.snapshots.restic import Repository, before_release_tag

    wanted = loaded.spec.snapshots.before_up or _current_opts_in(daemon.store)
    if not wanted or args.get("no_snapshot"):
        return
    latest = daemon.store.releases(1)
    release = (int(latest[0]["id"]) if latest else 0) + 1
    repo = Repository(daemon.services.state_dir)
    for name in sorted({*plan.names("recreate"), *plan.names("remove")}):
        try:
            workspace = stored_workspace(daemon, name)
            if workspace is None or not workspace.is_dir():
                continue  # nothing to keep
            tags = [before_release_tag(release)]
            async with daemon.snapshot_locks.hold(name, "a snapshot of it is being taken"):
                await take(daemon, repo, name, workspace, tags)
        except ClawpenError as err:
            raise HostError(
                f"the snapshot of bot {name}'s workspace before release {release} failed, so nothing "
                f"was applied: {err.what}",
                where="[snapshots] before_up",
                hint=(err.hint + "; " if err.hint else "") + "or apply without it: --no-snapshot",
            ) from None


def _current_opts_in(store: Store) -> bool:
    """The spec applied now (the latest release's) has ``[snapshots] before_up = true``."""
    from clawpen.spec.loader import parse_spec_text

    latest = store.latest_spec()
    if latest is None:
        return False
    try:
        return parse_spec_text(latest[1], Path(latest[0])).spec.snapshots.before_up
    except ClawpenError:
        return False
