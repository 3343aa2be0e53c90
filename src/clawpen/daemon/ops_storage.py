"""``clawpen storage age [--dry-run]`` and ``clawpen storage status``: the storage tiers of the
spec applied now (``[storage]``, :mod:`clawpen.spec.storage`); the daemon also ages every hour
(:func:`periodic`). Snapshots move hot -> warm -> cold (:mod:`clawpen.snapshots.tiers`); rotated
bot logs move to ``logs_warm`` and then into the archive repository (:mod:`clawpen.logs.ageing`).

One ageing run at a time, across processes: an flock on ``<state>/snapshots/storage.lock``.
restic runs in a worker thread, so the daemon keeps serving meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from clawpen.errors import ClawpenError, UsageError
from clawpen.ops import Call, Contract, Empty, Operation, Reply, Request

if TYPE_CHECKING:
    from clawpen.daemon.runtime import Services
    from clawpen.daemon.store import Store
    from clawpen.snapshots.tierrepo import TierRepo
    from clawpen.spec.storage import StorageSettings

INTERVAL = 3600.0
FIRST_DELAY = 120.0  # after the daemon starts: its bots come first


class _Daemon(Protocol):
    @property
    def services(self) -> Services: ...
    @property
    def store(self) -> Store: ...
    def note(self, kind: str, reason: str, bot: str | None = None, replica: int | None = None) -> None: ...


class AgeRequest(Request):
    dry_run: bool = False


class Moved(Reply):
    kind: str
    source: str
    target: str | None
    snapshot: str
    age_days: float


class AgeReport(Reply):
    dry_run: bool
    configured: bool
    snapshots: list[Moved]
    created: list[str]
    logs_moved: int
    logs_archived: int
    logs_deleted: int
    errors: list[str]


class TierStatus(Reply):
    tier: str
    repository: str
    age_days: float | None
    snapshots: int
    oldest: str | None
    newest: str | None
    size: int
    problem: str | None


STORAGE_AGE = Contract(
    "storage_age", "operator", AgeRequest, AgeReport,
    "age snapshots and bot logs through the [storage] tiers now (--dry-run: say what would move)",
)  # fmt: skip
STORAGE_STATUS = Contract(
    "storage_status", "viewer", Empty, list[TierStatus], "per storage tier: repository, snapshots, size"
)
CONTRACTS = (STORAGE_AGE, STORAGE_STATUS)


def current_storage(store: Store) -> StorageSettings | None:
    """``[storage]`` of the spec applied now (the latest release's); None before the first ``up``."""
    from clawpen.spec.loader import parse_spec_text

    latest = store.latest_spec()
    if latest is None:
        return None
    return parse_spec_text(latest[1], Path(latest[0])).spec.storage


def _repos(state_dir: Path, storage: StorageSettings) -> dict[str, TierRepo]:
    from clawpen.snapshots.restic import Repository
    from clawpen.snapshots.tiers import tier_repos
    from clawpen.vault.store import Vault

    hot = Repository(state_dir)
    vault = Vault(state_dir)
    return tier_repos(state_dir, storage, password=hot.password, secret=vault.get)


@contextlib.contextmanager
def _exclusive(state_dir: Path) -> Iterator[None]:
    folder = state_dir / "snapshots"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(folder / "storage.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                "storage ageing is running already", where="clawpen storage age", hint="wait for it to finish"
            ) from None
        yield
    finally:
        os.close(fd)


def age_now(
    state_dir: Path,
    logs_dir: Path,
    storage: StorageSettings,
    now: float,
    *,
    dry_run: bool = False,
    busy: Callable[[Path], bool] = lambda _p: False,
    repos: dict[str, TierRepo] | None = None,
) -> dict[str, Any]:
    """One ageing run (snapshots, then logs); the :data:`STORAGE_AGE` reply."""
    from clawpen.logs.ageing import age_logs
    from clawpen.snapshots.tiers import run_ageing

    repos = _repos(state_dir, storage) if repos is None else repos
    errors: list[str] = []
    with _exclusive(state_dir):
        snaps = None
        try:
            snaps = run_ageing(repos, storage, now, dry_run=dry_run)
        except ClawpenError as err:
            errors.append(str(err))
        logs = None
        if storage.logs_warm and not dry_run:
            archive_to = repos.get("cold") or repos.get("warm")

            def archive(bot: str, files: list[Path]) -> None:
                assert archive_to is not None
                if repos["hot"].exists():
                    archive_to.ensure_from(repos["hot"])
                elif not archive_to.exists():
                    archive_to.run(["init"], "init")
                args = ["backup", "--tag", "logs", "--tag", f"bot:{bot}", "--host", "clawpen"]
                archive_to.run([*args, *map(str, files)], "backup of logs")

            logs = age_logs(
                logs_dir, Path(storage.logs_warm), now, hot_age=storage.hot.age, warm_age=storage.warm_age,
                archive=archive if archive_to is not None else None, busy=busy,
            )  # fmt: skip
            errors += logs.errors
    moved = [
        {"kind": a.kind, "source": a.source, "target": a.target, "snapshot": a.id,
         "age_days": round(a.age_s / 86400, 2)}
        for a in ([*snaps.copied, *snaps.forgotten] if snaps else [])
    ]  # fmt: skip
    return {
        "dry_run": dry_run,
        "configured": storage.warm is not None or storage.logs_warm is not None,
        "snapshots": moved,
        "created": snaps.created if snaps else [],
        "logs_moved": len(logs.moved) if logs else 0,
        "logs_archived": len(logs.archived) if logs else 0,
        "logs_deleted": len(logs.deleted) if logs else 0,
        "errors": errors,
    }


def status_now(state_dir: Path, storage: StorageSettings) -> list[dict[str, Any]]:
    import time

    ages = {"hot": storage.hot.age, "warm": storage.warm_age, "cold": None}
    rows = []
    for name, repo in _repos(state_dir, storage).items():
        row: dict[str, Any] = {"tier": name, "repository": repo.location, "snapshots": 0, "oldest": None,
                               "newest": None, "size": 0, "problem": None}  # fmt: skip
        age = ages[name]
        row["age_days"] = None if age is None else round(age / 86400, 2)
        try:
            snaps = repo.snapshots()
            row["snapshots"] = len(snaps)
            if snaps:
                fmt = "%Y-%m-%d %H:%M:%S"
                row["oldest"] = time.strftime(fmt, time.localtime(snaps[0].time))
                row["newest"] = time.strftime(fmt, time.localtime(snaps[-1].time))
            row["size"] = repo.size()
        except ClawpenError as err:
            row["problem"] = str(err)
        rows.append(row)
    return rows


def operations(daemon: _Daemon) -> list[Operation[Any]]:
    from clawpen.spec.storage import StorageSettings

    def settings() -> StorageSettings:
        return current_storage(daemon.store) or StorageSettings()

    async def age(req: AgeRequest, _call: Call) -> dict[str, Any]:
        svc = daemon.services
        return await asyncio.to_thread(
            age_now, svc.state_dir, svc.logs_dir, settings(), svc.clock(), dry_run=req.dry_run,
            busy=svc.compressor.busy,
        )  # fmt: skip

    async def status(_req: Empty, _call: Call) -> list[dict[str, Any]]:
        return await asyncio.to_thread(status_now, daemon.services.state_dir, settings())

    return [STORAGE_AGE.bind(age), STORAGE_STATUS.bind(status)]


async def periodic(daemon: _Daemon, *, interval: float = INTERVAL, first: float = FIRST_DELAY) -> None:
    """Age every ``interval`` seconds (the daemon's clock for ages); a failed run is noted."""
    await asyncio.sleep(first)
    while True:
        try:
            storage = current_storage(daemon.store)
            if storage is not None and (storage.warm is not None or storage.logs_warm is not None):
                svc = daemon.services
                report = await asyncio.to_thread(
                    age_now, svc.state_dir, svc.logs_dir, storage, svc.clock(), busy=svc.compressor.busy
                )
                if report["snapshots"] or report["logs_moved"] or report["logs_deleted"]:
                    moved = len(report["snapshots"])
                    logs = f"{report['logs_moved']} log files to warm, {report['logs_deleted']} out of warm"
                    daemon.note("storage", f"ageing moved or forgot {moved} snapshots, {logs}")
                for err in report["errors"]:
                    daemon.note("storage", f"ageing: {err}")
        except ClawpenError as err:
            daemon.note("storage", f"ageing failed: {err}")
        await asyncio.sleep(interval)
