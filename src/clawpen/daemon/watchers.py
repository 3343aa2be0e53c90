"""What watches a running bot besides its exit: the schedule window, cron restarts, memory
pressure and the health check. Each watcher is a coroutine that returns ``(Outcome, reason)``
when the bot must be stopped or restarted (the instance then acts on it), or ``None``."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from clawpen.sandbox.memevents import drain
from clawpen.sandbox.tier import MemoryEvents
from clawpen.spec.schedule import ActiveWindow, CronSpec
from clawpen.supervisor.states import BotState as S
from clawpen.supervisor.states import BotStateMachine

if TYPE_CHECKING:
    from clawpen.plan.build import HostFacts
    from clawpen.plan.model import Plan
    from clawpen.sandbox.cgroups import CgroupHost
    from clawpen.sandbox.tier import RunningSandbox
    from clawpen.spec.models import Bot, MemoryPressure
    from clawpen.supervisor.backoff import RestartTracker

MEMORY_CHECK_INTERVAL = 5.0
DISK_CHECK_INTERVAL = 5.0  # the workspace is walked (in a worker thread) this often
START_RETRY = 0.1  # seconds to wait for a sandbox's pid before the first health check


class Outcome(enum.Enum):
    """Why the watch over a running sandbox ended."""

    EXITED = "exited"  # the bot ended by itself
    STOP = "stop"  # a person asked
    RESTART = "restart"  # a person asked
    SCHEDULE_OFF = "schedule-off"  # its active window closed
    CRON = "cron"  # schedule.restart came due
    UNHEALTHY = "unhealthy"  # the health check failed `retries` times
    MEMORY = "memory-pressure"  # memory stayed above the share of its limit
    DISK = "disk"  # the workspace grew past the bot's disk cap
    DEMOTED = "demoted"  # an HA bot's host is no longer its primary


Verdict = tuple[Outcome, str] | None


class _Services(Protocol):
    @property
    def clock(self) -> Callable[[], float]: ...
    @property
    def bpf(self) -> Callable[[], bytes]: ...
    @property
    def note(self) -> Callable[[str, str, str, int], None]: ...  # kind, reason, bot, replica
    @property
    def host(self) -> HostFacts: ...
    @property
    def cgroups(self) -> Callable[[], CgroupHost | None]: ...


class Watched(Protocol):
    """What the watchers use of the bot replica they watch (``daemon/runtime.py`` ``Instance``)."""

    health: str | None  # set by the health watcher: starting, healthy, unhealthy (None: no check)
    health_latency_s: float | None
    health_detail: str | None  # the last check's result ("HTTP 200", "connection refused")
    health_at: float | None  # when it was made (the services' clock)

    @property
    def name(self) -> str: ...
    @property
    def replica(self) -> int: ...
    @property
    def svc(self) -> _Services: ...
    @property
    def bot(self) -> Bot: ...
    @property
    def started_at(self) -> float | None: ...
    @property
    def tracker(self) -> RestartTracker: ...
    @property
    def machine(self) -> BotStateMachine: ...
    def plan(self) -> Plan: ...
    def transition(self, state: S, reason: str) -> None: ...


def now(inst: Watched) -> datetime:
    return datetime.fromtimestamp(inst.svc.clock(), tz=UTC)


def for_instance(inst: Watched, sandbox: RunningSandbox) -> list[Coroutine[Any, Any, Verdict]]:
    found: list[Coroutine[Any, Any, Verdict]] = []
    sched = inst.bot.schedule
    if sched and sched.active:
        found.append(window_closes(inst, sched.active, sched.timezone))
    if sched and sched.restart:
        found.append(cron_due(inst, sched.restart, sched.timezone))
    if inst.bot.memory_pressure and inst.bot.resources.memory:
        found.append(memory_pressure(inst, sandbox))
    if inst.bot.health:
        found.append(health(inst, sandbox))
    if inst.bot.resources.start_cpus is not None:
        from clawpen.daemon.startcpu import start_allowance

        found.append(start_allowance(inst, sandbox))
    if inst.bot.workspace and inst.bot.resources.disk:  # (the plan holds the resolved path)
        plan = inst.plan()
        if plan.disk_max and plan.workspace:
            found.append(disk_cap(plan.workspace, plan.disk_max))
    return found


async def disk_cap(workspace: str, limit: int, interval: float = DISK_CHECK_INTERVAL) -> Verdict:
    """The workspace's total against the bot's disk cap (RLIMIT_FSIZE caps one file only, and
    ext4 without project quotas has no per-folder limit): the same check `clawpen run` makes
    every second, here every few seconds, one walk at a time, off the event loop."""
    from clawpen.sandbox.workspace import disk_usage

    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval)
        used = await loop.run_in_executor(None, disk_usage, workspace)
        if used > limit:
            return (
                Outcome.DISK,
                f"workspace uses {used / 2**20:.0f} MiB, over its disk cap of {limit / 2**20:.0f} MiB",
            )


async def sleep_until(inst: Watched, when: datetime) -> None:
    await asyncio.sleep(max(0.0, when.timestamp() - inst.svc.clock()))


async def window_closes(inst: Watched, active: str, tz: str | None) -> Verdict:
    window = ActiveWindow.parse(active, tz)
    change = window.next_change(now(inst))
    if change is None:
        return None
    await sleep_until(inst, change)
    return Outcome.SCHEDULE_OFF, f"outside its active window ({active})"


async def cron_due(inst: Watched, spec: str, tz: str | None) -> Verdict:
    cron = CronSpec.parse(spec, tz)
    await sleep_until(inst, cron.next_after(now(inst)))
    return Outcome.CRON, f"scheduled restart ({spec})"


async def memory_pressure(inst: Watched, sandbox: RunningSandbox) -> Verdict:
    """The bot's memory above ``share`` of its limit for ``for`` seconds. On cgroup v1 the
    kernel says when the use crosses that level (:mod:`clawpen.sandbox.memevents`): nothing
    wakes while it does not; elsewhere the use is polled."""
    mp, limit = inst.bot.memory_pressure, inst.bot.resources.memory
    if mp is None:
        return None
    level = int(mp.share * limit)
    efd = sandbox.memory_event_fd(level) if isinstance(sandbox, MemoryEvents) else None
    if efd is None:
        return await _memory_polled(inst, sandbox, level, limit, mp)
    loop = asyncio.get_running_loop()
    crossed = asyncio.Event()

    def ready() -> None:
        drain(efd)
        crossed.set()

    loop.add_reader(efd, ready)
    try:
        above_since: float | None = None
        while True:
            crossed.clear()  # before the read: a crossing after it wakes the wait below
            current = sandbox.stats().memory_current
            now = inst.svc.clock()
            if current is None or current <= level:
                above_since = None
                await crossed.wait()
                continue
            above_since = above_since or now
            if now - above_since >= mp.for_:
                return _over(current, limit, now - above_since, mp)
            with contextlib.suppress(TimeoutError):  # still above when it runs out: a verdict
                await asyncio.wait_for(crossed.wait(), mp.for_ - (now - above_since))
    finally:
        loop.remove_reader(efd)
        os.close(efd)


async def _memory_polled(
    inst: Watched, sandbox: RunningSandbox, level: int, limit: int, mp: MemoryPressure
) -> Verdict:
    interval = min(MEMORY_CHECK_INTERVAL, max(0.2, mp.for_ / 4))
    above_since: float | None = None
    while True:
        await asyncio.sleep(interval)
        current = sandbox.stats().memory_current
        now = inst.svc.clock()
        if current is not None and current > level:
            above_since = above_since or now
            if now - above_since >= mp.for_:
                return _over(current, limit, now - above_since, mp)
        else:
            above_since = None


def _over(current: int, limit: int, lasted: float, mp: MemoryPressure) -> Verdict:
    return Outcome.MEMORY, (
        f"memory at {current / limit:.0%} of its limit for {lasted:.0f}s "
        f"(memory_pressure: {mp.share:.0%} for {mp.for_:g}s)"
    )


async def health(inst: Watched, sandbox: RunningSandbox) -> Verdict:
    """Check from the start (see :class:`clawpen.daemon.health.HealthTracker` for the schedule);
    ``inst.health`` is the tracker's status, ``inst.health_detail``/``health_at`` the last result."""
    from clawpen.daemon.health import HealthTracker, check
    from clawpen.daemon.health import Verdict as HV

    spec = inst.bot.health
    if spec is None:
        return None
    tracker = HealthTracker(spec, started_at=inst.started_at or inst.svc.clock())
    inst.health = tracker.status
    plan = inst.plan()
    bpf = inst.svc.bpf()
    while True:
        await asyncio.sleep(tracker.delay())
        if sandbox.sandbox_pid is None:
            await asyncio.sleep(START_RETRY)
            continue
        result = await check(spec, sandbox, plan=plan, bpf=bpf)
        before = tracker.status
        verdict = tracker.record(result, inst.svc.clock())
        inst.health = tracker.status
        if tracker.status != before:
            note_health(inst, before, tracker.status, result.detail)
        inst.health_detail, inst.health_at = result.detail, inst.svc.clock()
        inst.health_latency_s = result.latency_s
        if verdict is HV.BECAME_UNHEALTHY:
            inst.transition(S.UNHEALTHY, f"health check failed {spec.retries} times: {result.detail}")
            inst.tracker.record_unhealthy(inst.svc.clock())
            if spec.on_unhealthy == "restart":
                return Outcome.UNHEALTHY, f"unhealthy: {result.detail}"
        elif verdict is HV.RECOVERED:
            inst.transition(S.RUNNING, f"health check passes again ({result.latency_s * 1000:.0f} ms)")
        if result.ok:
            inst.tracker.record_healthy(inst.svc.clock())


def note_health(inst: Watched, before: str, after: str, detail: str) -> None:
    """A ``health`` event for a change of health status, with the check's result (a change only:
    not every check); a first pass says how long after the start it came."""
    text = f"{before} -> {after}: {detail}"
    if before == "starting" and inst.started_at is not None:
        text += f" ({inst.svc.clock() - inst.started_at:.1f}s after the start)"
    inst.svc.note("health", text, inst.name, inst.replica)
