"""``clawpen rollback N --with-data``: the workspaces go back too.

For each bot the rollback creates (again) or recreates and whose spec (release N's) gives it a
workspace, the data to return to is its workspace as it was while release N was the latest: the
``[snapshots] before_up`` snapshot taken just before the first later release that changed it,
i.e. among the bot's snapshots tagged ``before-release:K`` with K > N, the smallest K (the newest
snapshot of that K). A bot without one refuses the whole rollback before anything changes.

Under the up lock (``apply_spec`` holds it) and the bots' lifecycle locks
(:mod:`clawpen.daemon.botlocks`), after the pre-check and the builds:

1. each affected bot's current workspace is snapshotted, tagged ``before-release:M`` (M: the
   release this rollback records), so the rollback itself can be undone with its data (a
   ``[snapshots] before_up`` snapshot just taken with that tag is reused);
2. the affected bots are stopped;
3. each workspace is restored in place (:func:`clawpen.snapshots.consistent.restore`: into a new
   folder that then takes the workspace's place; the old one is kept as
   ``<workspace>.before-restore-<time>``);
4. the old spec is applied (``_apply``, in the caller's ``async with``).

A failure before the apply (a snapshot, a restore, building the new instances) puts back the
workspaces already swapped and starts again the bots it stopped, and says so.
Automatic rollback (``[deploy] auto_rollback``) stays spec-only.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from clawpen.errors import ClawpenError, HostError, UsageError
from clawpen.ops import Reply

if TYPE_CHECKING:
    from clawpen.daemon.botlocks import BotLocks
    from clawpen.daemon.release import ReleasePlan
    from clawpen.daemon.runtime import Instance, Services
    from clawpen.daemon.store import Store
    from clawpen.snapshots.consistent import Restored
    from clawpen.snapshots.restic import Repository, Snapshot
    from clawpen.spec.loader import LoadedSpec
    from clawpen.spec.models import Bot, Spec

PREFIX = "before-release:"
WHY = "its workspace is being restored by a rollback"


class Daemon(Protocol):
    """What this module uses of the daemon (``daemon/server.py`` ``Daemon``)."""

    @property
    def store(self) -> Store: ...
    @property
    def services(self) -> Services: ...
    @property
    def instances(self) -> dict[str, list[Instance]]: ...
    @property
    def bot_locks(self) -> BotLocks: ...
    @property
    def snapshot_locks(self) -> BotLocks: ...
    def replicas(self, name: str) -> list[Instance]: ...
    def bot_from_row(self, policy: dict[str, Any], name: str = "") -> tuple[Bot, str]: ...
    def current_spec(self) -> Spec | None: ...
    async def halt(self, name: str) -> None: ...


class DataRestored(Reply):
    """One bot's workspace in a ``rollback --with-data`` (with ``dry_run``: what it would get)."""

    bot: str
    workspace: str
    snapshot: str  # the snapshot restored (or, dry run, to be restored)
    from_release: int  # its tag's K: taken just before release K
    saved: str | None = None  # the snapshot of the data it had (tagged before-release:M)
    previous: str | None = None  # where the replaced workspace folder went


class Choice(NamedTuple):
    bot: str
    workspace: Path
    snapshot: Snapshot
    from_release: int


class DataPlan(NamedTuple):
    release: int  # M, the release the rollback is about to record
    choices: list[Choice]


def _repo(daemon: Daemon) -> Repository:
    from clawpen.snapshots.restic import Repository

    return Repository(daemon.services.state_dir)


def _tag_release(tags: list[str]) -> int | None:
    for tag in tags:
        if tag.startswith(PREFIX) and tag[len(PREFIX) :].isdigit():
            return int(tag[len(PREFIX) :])
    return None


def pick(snapshots: list[Snapshot], after: int) -> tuple[Snapshot, int] | None:
    """Among ``snapshots`` (oldest first) tagged ``before-release:K`` with K > ``after``: the
    newest of the smallest K, and K."""
    best: tuple[Snapshot, int] | None = None
    for snap in snapshots:
        k = _tag_release(snap.tags)
        if k is None or k <= after:
            continue
        if best is None or k < best[1] or (k == best[1] and snap.time >= best[0].time):
            best = (snap, k)
    return best


def _workspace(daemon: Daemon, loaded: LoadedSpec, name: str) -> Path | None:
    from clawpen.daemon.runtime import Instance

    bot = loaded.spec.bots[name]
    workspace = Instance(daemon.services, name, 0, bot, str(loaded.base_dir)).plan().workspace
    return Path(workspace) if workspace else None


async def find(
    daemon: Daemon, loaded: LoadedSpec, plan: ReleasePlan, args: dict[str, Any], rollback_of: int | None
) -> DataPlan | None:
    """The snapshot each affected bot gets back (None without ``with_data``); a UsageError
    (exit 2, nothing changed) naming every bot that has a workspace but no such snapshot."""
    if not args.get("with_data"):
        return None
    if rollback_of is None:  # pragma: no cover - only `rollback` passes with_data
        raise UsageError("--with-data belongs to `clawpen rollback`", where="with_data")
    names = sorted({*plan.names("create"), *plan.names("recreate")})
    wanted = {n: ws for n in names if (ws := _workspace(daemon, loaded, n)) is not None}
    found = await asyncio.to_thread(_repo(daemon).snapshots) if wanted else []
    choices, missing = [], []
    for name, workspace in wanted.items():
        hit = pick([s for s in found if s.bot == name], rollback_of)
        if hit is None:
            missing.append(name)
        else:
            choices.append(Choice(name, workspace, hit[0], hit[1]))
    unsnapped = _changed_unsnapshotted(daemon.store, choices, rollback_of)
    if unsnapped:
        raise UsageError(
            f"{'; '.join(unsnapped)}: no snapshot holds its workspace as it was at release "
            f"{rollback_of}; nothing was changed",
            where=f"clawpen rollback {rollback_of} --with-data",
            hint="roll back without --with-data (the spec only), or restore by hand with "
            "`clawpen snapshot restore BOT ID` (`clawpen snapshot ls BOT` lists them)",
        )
    if missing:
        raise UsageError(
            f"no snapshot holds the workspace of {', '.join(missing)} as it was at release "
            f"{rollback_of} (none tagged before-release:K with K > {rollback_of}); nothing was changed",
            where=f"clawpen rollback {rollback_of} --with-data",
            hint="roll back without --with-data (the spec only), or restore by hand with "
            "`clawpen snapshot restore BOT ID` (`clawpen snapshot ls BOT` lists them)",
        )
    latest = daemon.store.releases(1)
    return DataPlan((int(latest[0]["id"]) if latest else 0) + 1, choices)


def _changed_unsnapshotted(store: Store, choices: list[Choice], after: int) -> list[str]:
    """The bots whose picked snapshot (taken before release K) is not their data of release
    ``after``: a release between the two changed the bot without a snapshot (``before_up`` was
    off then), so the snapshot holds what that later policy wrote. Judged from the policy hashes
    the releases recorded (releases of an older clawpen recorded none: not judged)."""
    found = []
    for c in choices:
        hashes = store.policy_hashes(after, c.from_release - 1)
        base = hashes.get(after, {}).get(c.bot)
        if base is None:
            continue
        for release in range(after + 1, c.from_release):
            bots = hashes.get(release)
            if bots is not None and bots.get(c.bot) != base:
                found.append(f"bot {c.bot} changed at release {release}, which took no snapshot")
                break
    return found


def dry(data: DataPlan | None) -> dict[str, Any]:
    """The dry run's ``data``: which snapshot each bot would get back."""
    if data is None:
        return {}
    rows = [
        {
            "bot": c.bot,
            "workspace": str(c.workspace),
            "snapshot": c.snapshot.id,
            "from_release": c.from_release,
        }
        for c in data.choices
    ]
    return {"data": rows}


def _undo(done: list[tuple[Choice, Restored]]) -> list[str]:
    """Put back the workspaces already swapped (newest first); what could not be put back."""
    stuck = []
    for choice, result in reversed(done):
        ws = choice.workspace
        try:
            aside = ws.with_name(f"{ws.name}.rollback-undone-{time.strftime('%Y%m%d-%H%M%S')}")
            os.rename(ws, aside)
            if result.previous is not None:
                os.rename(result.previous, ws)
            shutil.rmtree(aside, ignore_errors=True)  # a copy of a snapshot that stays
        except OSError as err:
            stuck.append(f"{choice.bot} ({err})")
    return stuck


def _restart(daemon: Daemon, halted: dict[str, list[tuple[Any, bool]]]) -> None:
    """Start again, as they were, the instances this rollback stopped."""
    from clawpen.daemon.runtime import Instance

    for name, old in halted.items():
        fresh = [Instance(daemon.services, name, i.replica, i.bot, i.base_dir) for i, _ in old]
        daemon.instances[name] = fresh
        for inst, (_, was_running) in zip(fresh, old, strict=True):
            if was_running:
                inst.start()


@asynccontextmanager
async def restored(daemon: Daemon, data: DataPlan | None) -> AsyncIterator[dict[str, Any]]:
    """Snapshot, stop and restore (see the module); the caller applies the spec inside. Yields
    the reply's ``data`` (filled in before the caller's block runs)."""
    if data is None or not data.choices:
        yield {}
        return
    from clawpen.daemon.ops_snapshots import take
    from clawpen.snapshots import consistent
    from clawpen.snapshots.restic import before_release_tag

    locks = daemon.bot_locks
    repo, tag = _repo(daemon), before_release_tag(data.release)
    async with AsyncExitStack() as stack:
        for choice in data.choices:
            await stack.enter_async_context(locks.hold(choice.bot, WHY))
        # 1. the data each bot has now (a [snapshots] before_up snapshot just taken is reused)
        made = {s.bot: s.id for s in await asyncio.to_thread(repo.snapshots) if tag in s.tags}
        for c in data.choices:
            if c.bot in made or not c.workspace.is_dir():
                continue
            try:
                async with daemon.snapshot_locks.hold(c.bot, "a snapshot of it is being taken"):
                    snap = await take(daemon, repo, c.bot, c.workspace, [tag])
            except ClawpenError as err:
                raise HostError(
                    f"the snapshot of bot {c.bot}'s workspace before release {data.release} failed, "
                    f"so nothing was changed: {err.what}",
                    where="clawpen rollback --with-data",
                    hint=err.hint or "roll back without --with-data",
                ) from None
            made[c.bot] = snap.backup.snapshot_id
        # 2. stop the bots  3. restore each workspace in place
        halted: dict[str, list[tuple[Any, bool]]] = {}
        for c in data.choices:
            insts = [(i, i.supervised) for i in daemon.replicas(c.bot)]
            await daemon.halt(c.bot)
            if insts:
                halted[c.bot] = insts
        done: list[tuple[Choice, Restored]] = []
        rows: dict[str, Any] = {"data": []}
        try:
            for c in data.choices:
                result = await asyncio.to_thread(
                    consistent.restore, repo, c.bot, c.snapshot.id, c.workspace, running=False
                )
                done.append((c, result))
                rows["data"].append(
                    DataRestored(
                        bot=c.bot, workspace=str(c.workspace), snapshot=c.snapshot.id,
                        from_release=c.from_release, saved=made.get(c.bot),
                        previous=None if result.previous is None else str(result.previous),
                    ).model_dump()
                )  # fmt: skip
            yield rows  # 4. the caller applies the spec
        except BaseException as err:
            stuck = _undo(done)
            _restart(daemon, halted)
            if not isinstance(err, ClawpenError):
                raise
            back = f"; could NOT put back: {', '.join(stuck)}" if stuck else ""
            raise HostError(
                f"rollback --with-data failed before the spec was applied, so the workspaces were "
                f"put back and the bots started again as they were{back}: {err.what}",
                where=err.where or "clawpen rollback --with-data",
                hint=err.hint,
            ) from None
