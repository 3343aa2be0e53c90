"""Releases you can inspect and roll back (see :mod:`clawpen.ops`): ``release_show`` (one
release: spec text, who, when, summary, per-bot policy hashes), ``release_diff`` (two releases:
the spec texts' unified diff and per bot added / removed / changed fields) and ``rollback``
(re-apply a release's spec text through ``up``'s path, recorded as a new release that names it;
:mod:`clawpen.daemon.auto_rollback` does the same by itself for ``[deploy] auto_rollback``).

The spec text a release stored is parsed again as if read from its spec file, so relative paths
(workspaces, builds) resolve against that file's folder; a folder that is gone is a clear error.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from clawpen.daemon import release_diff as rd
from clawpen.daemon.build_steps import build_root
from clawpen.daemon.ops_bots import UpResult
from clawpen.daemon.rollback_data import DataRestored
from clawpen.daemon.store import policy_hash
from clawpen.errors import UsageError
from clawpen.ops import Call, Contract, Operation, Reply, Request

if TYPE_CHECKING:
    from clawpen.daemon.store import Store
    from clawpen.daemon.up import Daemon


# ------------------------------------------------------------------ requests
class ShowRequest(Request):
    release: int = Field(ge=1, le=2**62, description="the release's number (`clawpen releases`)")


class DiffRequest(Request):
    a: int = Field(ge=1, le=2**62, description="the older release")
    b: int | None = Field(default=None, ge=1, le=2**62, description="the newer one (default: the latest)")


class RollbackRequest(Request):
    release: int | None = Field(
        default=None,
        ge=1,
        le=2**62,
        description="the release to go back to (default: the one before the latest)",
    )
    dry_run: bool = False
    who: str | None = Field(default=None, max_length=200)
    progress: bool = False
    wait: bool = False
    wait_timeout: float | None = None
    allow_empty: bool = False
    no_snapshot: bool = False  # skip the [snapshots] before_up snapshot
    with_data: bool = False  # the workspaces go back too (daemon/rollback_data.py)


# ------------------------------------------------------------------ replies
class BotPolicy(Reply):
    bot: str
    policy_hash: str
    running: bool  # the daemon's bot of that name has this very policy now
    folders: list[dict[str, Any]] | None = (
        None  # code folders: source, target, hash, state (None: not recorded)
    )
    build: dict[str, Any] | None = None  # key, output_hash, kept (the output is still on disk)


class ReleaseDetail(Reply):
    id: int
    created: float
    who: str
    spec_path: str
    spec_hash: str
    summary: str
    rollback_of: int | None = None
    spec_text: str
    bots: list[BotPolicy] | None  # None: the stored spec no longer parses (see problem)
    problem: str | None = None


class BotChange(Reply):
    bot: str
    change: str  # added | removed | changed | unchanged
    fields: list[str]
    why: str


class ReleaseDiff(Reply):
    a: int
    b: int
    spec_diff: str
    bots: list[BotChange] | None
    problem: str | None = None


class RollbackResult(UpResult):
    rollback_of: int | None = None
    warnings: list[str] = Field(default_factory=list)  # what runs now differs from the release's record
    data: list[DataRestored] | None = None  # --with-data: per bot, the snapshot restored


def _rollback_audit(reply: Any) -> dict[str, Any]:
    return {k: reply.get(k) for k in ("release", "rollback_of", "before", "after")}


SHOW = Contract(
    "release_show", "viewer", ShowRequest, ReleaseDetail, "one release: spec, who, when, per-bot hashes"
)
DIFF = Contract(
    "release_diff", "viewer", DiffRequest, ReleaseDiff, "two releases: spec diff, per-bot changes"
)
ROLLBACK = Contract(
    "rollback",
    "admin",  # like `up`: it applies a spec (an operator may not change what bots are)
    RollbackRequest,
    RollbackResult,
    "re-apply an earlier release's spec as a new release, all or nothing",
    True,
    _rollback_audit,
)
CONTRACTS: tuple[Contract[Any], ...] = (SHOW, DIFF, ROLLBACK)


def get_release(store: Store, number: int, where: str) -> dict[str, Any]:
    """Release ``number`` with its spec text; UsageError (exit 2) naming the releases there are."""
    row = store.release(number)
    if row is None:
        newest = store.releases(1)
        there = f"releases 1 to {newest[0]['id']}" if newest else "no release yet"
        raise UsageError(
            f"there is no release {number} ({there})",
            where=where,
            hint="`clawpen releases` lists them",
        )
    return row


def default_target(store: Store) -> int:
    """The release before the latest (what ``rollback`` without a number goes back to)."""
    rows = store.releases(2)
    if len(rows) < 2:
        raise UsageError(
            "there is no release before the latest to roll back to",
            where="clawpen rollback",
            hint="`clawpen releases` lists them; `clawpen down` removes every bot",
        )
    return int(rows[1]["id"])


def _recorded(contents: dict[str, Any] | None, bot_dir: Path) -> dict[str, Any]:
    """A bot's recorded contents for ``release show``, with whether its build output is kept."""
    if contents is None:
        return {}
    build = contents.get("build")
    if build:
        key = build.get("key")
        build = build | {"kept": bool(key) and (bot_dir / str(key)).is_dir()}
    return {"folders": contents.get("folders") or [], "build": build}


def operations(daemon: Daemon) -> list[Operation[Any]]:
    async def show(req: ShowRequest, _call: Call) -> dict[str, Any]:
        row = get_release(daemon.store, req.release, "clawpen release show")
        found, problem = rd.try_policies(row)
        stored = daemon.store.bots()
        bots = None
        if found is not None:
            hashes = {n: policy_hash(p) for n, p in found.items()}
            recorded = daemon.store.release_bots(req.release)
            root = build_root(daemon.services.state_dir)
            bots = [
                {"bot": n, "policy_hash": h, "running": n in stored and stored[n].spec_hash == h}
                | _recorded(recorded.get(n), root / n)
                for n, h in hashes.items()
            ]
        return row | {"bots": bots, "problem": problem}

    async def diff(req: DiffRequest, _call: Call) -> dict[str, Any]:
        store = daemon.store
        a = get_release(store, req.a, "clawpen diff A")
        if req.b is None:
            newest = store.releases(1)
            b = get_release(store, int(newest[0]["id"]), "clawpen diff")
        else:
            b = get_release(store, req.b, "clawpen diff B")
        (old, bad_a), (new, bad_b) = rd.try_policies(a), rd.try_policies(b)
        bots = None
        if old is not None and new is not None:
            bots = [c._asdict() | {"fields": list(c.fields)} for c in rd.bot_diff(old, new)]
            rd.with_contents(bots, store.release_bots(int(a["id"])), store.release_bots(int(b["id"])))
        problem = "; ".join(f"release {r['id']}: {p}" for r, p in ((a, bad_a), (b, bad_b)) if p) or None
        return {"a": a["id"], "b": b["id"], "spec_diff": rd.text_diff(a, b), "bots": bots, "problem": problem}

    async def rollback(req: RollbackRequest, call: Call) -> dict[str, Any]:
        from clawpen.daemon.up import apply_spec, wait_timeout

        store = daemon.store
        args = req.model_dump()
        args["who"] = req.who or call.who
        wait_timeout(args)  # a bad timeout is refused before anything else
        number = default_target(store) if req.release is None else req.release
        row = get_release(store, number, "clawpen rollback")
        rd.folder_of(row)
        loaded = rd.stored_spec(row)
        return await apply_spec(daemon, loaded, args, call.writer, rollback_of=number)

    return [SHOW.bind(show), DIFF.bind(diff), ROLLBACK.bind(rollback)]
