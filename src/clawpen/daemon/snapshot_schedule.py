"""Scheduled snapshots (docs/rollback.md): each bot's ``snapshots = { every, keep }`` and
``[snapshots] state_every`` / ``state_keep``, run by the daemon.

The settings are read from the applied spec (the newest release's text), so they survive a daemon
restart and are in no bot's policy hash: changing them restarts nothing. A bot (or the state) is
due when its newest snapshot tagged ``scheduled`` in the repository is ``every`` old, or it has
none: a restarted daemon does not snapshot again at once. A run snapshots the workspace the way
``snapshot create`` does (running replicas frozen; a stopped bot's workspace too, if it exists),
tagged ``scheduled``, then forgets that bot's scheduled snapshots beyond ``keep`` (``--tag
bot:NAME,scheduled``: manual and before-release snapshots are never touched) and prunes. One
snapshot at a time (never two of one bot: the bot's lifecycle lock is held, as a restore does).
Each run is a ``snapshot`` event; a failure is a ``snapshot-failed`` event, which the monitor
sends to the notifiers (``[SNAPSHOT FAILED]``).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from clawpen.errors import ClawpenError

if TYPE_CHECKING:
    from clawpen.daemon.server import Daemon
    from clawpen.snapshots.restic import Keep, Repository
    from clawpen.spec.models import Spec

SCHEDULED = "scheduled"
STATE = "(state)"  # the key of clawpen's own state in the schedule
KIND = "snapshot"
FAILED = "snapshot-failed"
INTERVAL = 60.0  # how soon a due run that was skipped (its bot busy) is looked at again
MAX_WAIT = 3600.0  # the longest sleep between two looks (nothing scheduled, or due later)
RETRY = 3600.0  # a failed run is tried again after this long (or `every`, when shorter)


def parse_time(text: str) -> float:
    """restic's RFC 3339 time (nanoseconds, ``Z``) as a Unix time."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))
    return datetime.fromisoformat(text).timestamp()


def wanted(spec: Spec | None) -> dict[str, tuple[float, Keep]]:
    """What the spec schedules: ``{bot or STATE: (every, keep)}``."""
    from clawpen.snapshots.restic import Keep

    out: dict[str, tuple[float, Keep]] = {}
    if spec is None:
        return out
    for name, bot in spec.bots.items():
        if bot.snapshots is not None:
            k = bot.snapshots.keep
            out[name] = (bot.snapshots.every, Keep(k.daily, k.weekly, k.monthly, k.hourly))
    s = spec.snapshots
    if s.state_every is not None:
        k = s.state_keep
        out[STATE] = (s.state_every, Keep(k.daily, k.weekly, k.monthly, k.hourly))
    return out


class Scheduler:
    """Runs the schedule; :meth:`tick` is one pass at ``now`` (tests call it with their clock)."""

    def __init__(
        self,
        daemon: Daemon,
        *,
        clock: Callable[[], float] | None = None,
        repo: Callable[[], Repository] | None = None,
    ) -> None:
        self.daemon = daemon
        self.clock = clock or daemon.services.clock
        self._repo = repo
        self._last: dict[str, float | None] = {}  # newest scheduled snapshot, as read or taken
        self._lock = asyncio.Lock()  # one snapshot at a time
        self._retry: dict[str, float] = {}  # after a failure: not before this time
        self._plan: dict[str, tuple[float, Keep]] = {}  # what the last tick's spec scheduled

    def repo(self) -> Repository:
        from clawpen.snapshots.restic import Repository

        return self._repo() if self._repo is not None else Repository(self.daemon.services.state_dir)

    async def _last_time(self, key: str) -> float | None:
        if key not in self._last:
            from clawpen.snapshots import state

            repo = self.repo()
            if key == STATE:
                snaps = await asyncio.to_thread(state.snapshots, repo, SCHEDULED)
            else:
                snaps = await asyncio.to_thread(repo.snapshots, key, tag=SCHEDULED)
            self._last[key] = max((parse_time(s.time) for s in snaps), default=None)
        return self._last[key]

    async def due(self, now: float) -> list[str]:
        """The bots (and STATE) due at ``now``, in name order."""
        plan = wanted(self.daemon.current_spec())
        known = self.daemon.store.bots()
        out = []
        for key, (every, _keep) in sorted(plan.items()):
            if key != STATE and key not in known:
                continue
            if now < self._retry.get(key, now):
                continue  # it failed lately: not again at every tick
            try:
                last = await self._last_time(key)
            except ClawpenError:
                last = None  # the run says why (a snapshot-failed event)
            if last is None or now >= last + every:
                out.append(key)
        return out

    async def tick(self, now: float | None = None) -> list[dict[str, Any]]:
        """Snapshot every due bot (and the state); one report per run."""
        now = self.clock() if now is None else now
        async with self._lock:
            reports = []
            plan = self._plan = wanted(self.daemon.current_spec())
            for key in await self.due(now):
                every, keep = plan[key]
                busy = self.daemon.snapshot_locks.busy(key) or self.daemon.bot_locks.busy(key)
                if key != STATE and busy:
                    reports.append({"target": key, "ok": True, "skipped": busy})  # still due: next tick
                    continue
                report = await self._run(key, keep, now)
                if report["ok"]:
                    self._retry.pop(key, None)
                else:
                    self._retry[key] = now + min(every, RETRY)
                reports.append(report)
            return reports

    def wait(self, now: float | None = None) -> float:
        """Seconds from ``now`` to the next run the last tick's plan has due (its last snapshot +
        ``every``, or its retry time): the schedule sleeps until then, not every minute; a run
        still due (skipped: its bot was busy) is looked at again in :data:`INTERVAL`."""
        now = self.clock() if now is None else now
        soonest = MAX_WAIT
        for key, (every, _keep) in self._plan.items():
            last = self._last.get(key)
            at = max(self._retry.get(key, now), now if last is None else last + every)
            soonest = min(soonest, at - now)
        return INTERVAL if soonest <= 0 else max(1.0, soonest)

    async def _run(self, key: str, keep: Keep, now: float) -> dict[str, Any]:
        bot = None if key == STATE else key
        what = "clawpen's state" if bot is None else f"bot {bot}'s workspace"
        try:
            if bot is None:
                report = await self._state(keep, now)
            else:
                # never two snapshots of one bot; never during a restore of its workspace
                async with (
                    self.daemon.snapshot_locks.hold(bot, "a snapshot of it is being taken"),
                    self.daemon.bot_locks.hold(bot, "a scheduled snapshot is being taken"),
                ):
                    report = await self._bot(bot, keep, now)
        except ClawpenError as err:
            reason = f"the scheduled snapshot of {what} failed: {err.what}"
            self.daemon.note(FAILED, reason + (f" ({err.hint})" if err.hint else ""), bot)
            return {"target": key, "ok": False, "error": err.what}
        if report.get("skipped"):
            return report
        self._last[key] = now
        pause = f", frozen {report['pause_s'] * 1000:.1f} ms" if report.get("frozen") else ""
        self.daemon.note(
            KIND,
            f"scheduled snapshot {report['snapshot'][:8]} of {what}: {report['data_added']} bytes added"
            f"{pause}; {len(report['forgotten'])} old scheduled snapshot(s) forgotten",
            bot,
        )
        return report

    async def _bot(self, bot: str, keep: Keep, now: float) -> dict[str, Any]:
        from clawpen.daemon.ops_snapshots import stored_workspace

        repo = self.repo()
        workspace = stored_workspace(self.daemon, bot)
        if workspace is None or not workspace.is_dir():
            return {"target": bot, "ok": True, "skipped": "no workspace"}
        from clawpen.daemon.ops_snapshots import take

        made = await take(self.daemon, repo, bot, workspace, (SCHEDULED,), at=now)
        gone = await asyncio.to_thread(repo.forget, bot, keep, tag=SCHEDULED)
        return {
            "target": bot, "ok": True, "snapshot": made.backup.snapshot_id,
            "frozen": made.frozen, "pause_s": round(made.pause, 6),
            "data_added": made.backup.data_added, "forgotten": gone,
        }  # fmt: skip

    async def _state(self, keep: Keep, now: float) -> dict[str, Any]:
        from clawpen.snapshots import state

        repo = self.repo()
        made = await asyncio.to_thread(lambda: state.create(repo, tags=(SCHEDULED,), at=now))
        gone = await asyncio.to_thread(state.forget, repo, keep, SCHEDULED)
        return {
            "target": STATE, "ok": True, "snapshot": made.snapshot_id, "frozen": False,
            "data_added": made.data_added, "forgotten": gone,
        }  # fmt: skip

    async def forever(self, wake: asyncio.Event) -> None:
        """Tick when the next run is due (:meth:`wait`), and at once when ``wake`` is set (an
        applied ``up``)."""
        while True:
            wake.clear()
            pause = INTERVAL
            try:
                await self.tick()
                pause = self.wait()
            except Exception as err:  # a bug here must not stop the schedule for good
                self.daemon.note("snapshot", f"the snapshot schedule failed: {err!r}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), pause)


class Looping(Protocol):
    async def forever(self, wake: asyncio.Event) -> None: ...


S = TypeVar("S", bound=Looping)


class LoopComponent(abc.ABC, Generic[S]):
    """A daemon component running its scheduler's ``forever`` (woken at once by an applied ``up``)
    until the daemon stops; :meth:`make` builds the scheduler."""

    name = "loop"

    def __init__(self, state: Path) -> None:
        self.state = state
        self.scheduler: S | None = None
        self._task: asyncio.Task[None] | None = None

    @abc.abstractmethod
    def make(self, daemon: Daemon) -> S:
        """The scheduler this component runs (it may also register the daemon's operations)."""

    async def start(self, daemon: Daemon) -> None:
        self.scheduler = self.make(daemon)
        wake = asyncio.Event()
        daemon.on_spec(lambda _spec: wake.set())  # a new schedule is looked at at once
        self._task = asyncio.get_running_loop().create_task(self.scheduler.forever(wake))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class ScheduleComponent(LoopComponent[Scheduler]):
    """The daemon component (daemon/app.py) running a :class:`Scheduler` every ``INTERVAL``."""

    name = "snapshot-schedule"

    def make(self, daemon: Daemon) -> Scheduler:
        return Scheduler(daemon)
