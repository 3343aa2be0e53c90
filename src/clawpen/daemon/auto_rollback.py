"""Automatic rollback (``[deploy] auto_rollback``, docs/rollback.md): an ``up`` whose changed bots
do not come up (running, and healthy when they have a health check) within ``health_window`` is
rolled back by the daemon to the release before it, through the same path as ``clawpen
rollback`` (:func:`clawpen.daemon.up.apply_spec` with ``rollback_of``), recorded as a new release
and announced with an ``auto-rollback`` event. A rollback is never rolled back itself.

``up`` hands in its own ``apply`` and ``wait`` functions (this module does not import ``up``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from clawpen.daemon import release_diff as rd
from clawpen.errors import ClawpenError
from clawpen.host import Notes

if TYPE_CHECKING:
    from clawpen.daemon.runtime import Instance
    from clawpen.daemon.store import Store
    from clawpen.spec.loader import LoadedSpec


class Daemon(Notes, Protocol):
    """What this module uses of the daemon (``up``'s ``Daemon`` has it all)."""

    @property
    def store(self) -> Store: ...
    @property
    def up_lock(self) -> asyncio.Lock: ...
    @property
    def deploy_watches(self) -> set[asyncio.Task[None]]: ...


KIND = "auto-rollback"  # the event's kind, and the new release's `who`
POLL = 0.1
Apply = Callable[..., Awaitable[dict[str, Any]]]  # apply_spec(daemon, loaded, args, writer, rollback_of=N)
Wait = Callable[..., Awaitable[dict[str, Any]]]  # wait_for(daemon, insts, timeout, stream)


async def roll_back(
    daemon: Daemon, release: int, waited: dict[str, Any], args: dict[str, Any], writer: Any, *, apply: Apply
) -> dict[str, Any]:
    """Release ``release``'s changed bots did not come up (``waited``: the wait's verdict): apply
    the release before it again. Nothing is rolled back when a newer release came meanwhile, or
    there is no release before, or that release is refused now (its folder is gone): each is
    said in the event and in the returned ``why``."""
    failed = sorted({str(r["bot"]) for r in waited.get("bots", []) if not r.get("ok")})
    out: dict[str, Any] = {"release": release, "failed": failed, "done": False}
    names = ", ".join(failed)
    while daemon.up_lock.locked():  # another `up` or rollback is applying: judge after it
        await asyncio.sleep(POLL)
    # no await from here until apply holds the up lock: nothing else can apply in between
    rows = daemon.store.releases(2)
    if not rows or int(rows[0]["id"]) != release:
        out["why"] = "a newer release was applied meanwhile"
    elif len(rows) < 2:
        out["why"] = "there is no release before it"
    if "why" in out:
        daemon.note(KIND, f"release {release}: {names} not up; not rolled back: {out['why']}")
        return out
    target = int(rows[1]["id"])
    out["rollback_of"] = target
    again = {
        "who": KIND,
        "wait": bool(args.get("wait")),
        "progress": bool(args.get("progress")),
        "wait_timeout": args.get("wait_timeout"),
    }
    try:
        row = daemon.store.release(target)
        if row is None:
            raise ClawpenError(f"release {target} is gone")
        rd.folder_of(row)
        loaded: LoadedSpec = rd.stored_spec(row)
        done = await apply(daemon, loaded, again, writer, rollback_of=target)
    except ClawpenError as err:
        out["why"] = f"the rollback to release {target} was refused: {err}"
        daemon.note(KIND, f"release {release}: {names} not up; {out['why']}")
        return out
    warnings = list(done.get("warnings") or [])
    out |= {"done": True, "new_release": done["release"], "wait": done.get("wait"), "warnings": warnings}
    daemon.note(
        KIND,
        f"release {release}: {names} not up within the health window; "
        f"rolled back to release {target} (as release {done['release']})"
        + "".join(f"; warning: {w}" for w in warnings),
    )
    return out


def watch_window(
    daemon: Daemon, release: int, insts: list[Instance], window: float, *, wait: Wait, apply: Apply
) -> None:
    """``up --detach``: a daemon task waits the health window out and rolls back as a waiting
    ``up`` would (its outcome is the ``auto-rollback`` event)."""

    async def watch() -> None:
        waited = await wait(daemon, insts, window, None)
        if not waited["ok"]:
            await roll_back(daemon, release, waited, {}, None, apply=apply)

    task = asyncio.get_running_loop().create_task(watch(), name=f"deploy window of release {release}")
    daemon.deploy_watches.add(task)
    task.add_done_callback(daemon.deploy_watches.discard)
