"""One asyncio task per bot instance: start it in its sandbox, watch it, restart or stop it.

Crash safety: a bot outlives its daemon. Its stdout and stderr are named pipes in
``<state>/run`` that the bot's side opens read-write (so a write never fails for want of a
reader: with the daemon gone, the pipe fills to 1 MiB and then the bot waits), bubblewrap's
exit status goes to a file, and the instance (pids, cgroup) is saved in the store. A new
daemon adopts it (:meth:`Instance.adopt`) and carries on reading the same pipes: no line is lost.

The task walks the explicit state machine of :mod:`clawpen.supervisor.states`; every change is
stored as an event with its reason. Restart decisions come from
:class:`clawpen.supervisor.backoff.RestartTracker`. The bot's stdout and stderr are pipes read
by the event loop and appended to its log by :class:`clawpen.logs.writer.LogWriter`: a chunk
is read, written, then the next is read, so a flooding bot meets the pipe's backpressure and
the daemon's memory stays flat.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

from clawpen.daemon import hagate, warm
from clawpen.daemon import watchers as watch
from clawpen.daemon.botpipes import BotPipes
from clawpen.daemon.lifecycle import describe, instance_plan, open_slot, settle, terminate
from clawpen.daemon.services import Services
from clawpen.daemon.store import Instance as InstanceRow
from clawpen.daemon.tiers import adopt_row, tier_for
from clawpen.daemon.watchers import Outcome, Verdict
from clawpen.errors import ClawpenError
from clawpen.logs.writer import daemon_writer
from clawpen.net.instance import InstanceNetwork
from clawpen.net.learn import status_fields
from clawpen.paths import cgroup_scope
from clawpen.plan.model import Plan
from clawpen.sandbox.tier import RunningSandbox, RunResult, Tier
from clawpen.spec.models import Bot
from clawpen.spec.schedule import ActiveWindow
from clawpen.supervisor.backoff import Decision, RestartPolicy, RestartTracker, TrackerState
from clawpen.supervisor.states import BotState, BotStateMachine
from clawpen.vault.redact import Redactor

S = BotState
__all__ = ["Instance", "Services", "instance_plan"]


REQUESTED = {Outcome.STOP: "stop requested", Outcome.RESTART: "restart requested"}


class Instance:
    """One replica of one bot, supervised by :meth:`run` until it is stopped for good."""

    def __init__(self, services: Services, name: str, replica: int, bot: Bot, base_dir: str) -> None:
        self.svc = services
        self.name = name
        self.replica = replica
        self.bot = bot
        self.base_dir = base_dir
        self.machine = BotStateMachine(name, replica)
        self.tracker = RestartTracker(RestartPolicy.from_spec(bot.restart))
        self.sandbox: RunningSandbox | None = None
        self.restarts = 0
        self.last: RunResult | None = None
        self._saved_exit: tuple[int | None, str | None] = (None, None)  # the row's, until a run ends
        self.started_at: float | None = None
        self._wake = asyncio.Event()
        self._request: Outcome | None = None
        self._why = ""
        self._secrets: dict[str, bytes] = {}
        self.health: str | None = None  # starting, healthy, unhealthy (the health watcher's)
        self.health_latency_s: float | None = None
        self.health_detail: str | None = None
        self.health_at: float | None = None
        self._manual_start = True
        self.task: asyncio.Task[None] | None = None
        self.net = InstanceNetwork(self)  # link (bots with egress) and published ports
        self._adopting = False
        self.slot = 0  # which of the bot's two cgroup/pipe sets the running sandbox uses
        self.warm = warm.Spares(self)
        self._teardown: asyncio.Future[None] | None = None  # the last run's, finishing in a thread

    # ---------------------------------------------------------------- commands
    def start(self, *, manual: bool = True) -> None:
        """Start supervising (or start again after a stop, a crashloop or a failure); a
        ``manual`` start (a person's) also ends a restart streak and a crashloop."""
        self._manual_start = manual
        self._request = None
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self.run(), name=f"bot {self.label}")

    def adopt(self, row: InstanceRow) -> bool:
        """Take over the sandbox of ``row`` that an earlier daemon started, if it still runs
        (False: it does not, or its tier is not here)."""
        self.slot = warm.slot_of(row.cgroup, self.slot_cgroup(0))
        legacy = not self._paths()["out"].exists() and self._paths(legacy=True)["out"].exists()
        sandbox = adopt_row(self.svc.tiers, self.bot.tier, row, self._paths(legacy=legacy)["status"])
        if sandbox is None:
            self.slot = 0
            return False
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
        self._pipes = {s: os.open(p, flags) for s, p in self._fifos(legacy=legacy)}
        self.machine = BotStateMachine(self.name, self.replica, BotState.RUNNING, self.svc.clock())
        if not self._restore(row):  # saved by an older clawpen: no tracker state
            self.tracker.record_started(row.started_at or self.svc.clock())
        self._manual_start = False
        self._adopting = True
        self.sandbox = sandbox  # `ps` shows its pid from now on, not once the task has run
        self.svc.note("adopt", f"adopted the running sandbox (pid {row.pid})", self.name, self.replica)
        self.task = asyncio.get_running_loop().create_task(self.run(sandbox), name=f"bot {self.label}")
        return True

    def rest(self, state: BotState, row: InstanceRow) -> None:
        """Restore an instance that had come to rest (stopped, crashloop, failed) without starting it."""
        self.machine = BotStateMachine(self.name, self.replica, state, self.svc.clock())
        self._restore(row)

    def resume(self, row: InstanceRow | None) -> None:
        """Start again after a daemon start found its process gone (a host restart): the restart
        count, the last exit and the crashloop window carry on from ``row``."""
        if row is None:
            self.start()
            return
        self._restore(row)
        self.start(manual=False)

    def _restore(self, row: InstanceRow) -> bool:
        """Carry on from a saved row; True if it held the restart tracker's state."""
        self.restarts = row.restarts
        self.started_at = row.started_at
        self._saved_exit = (row.last_exit, row.last_reason)
        saved = TrackerState.from_json(row.tracker)
        if saved is not None:
            self.tracker = RestartTracker(self.tracker.policy, state=saved)
        return saved is not None

    @property
    def last_exit(self) -> tuple[int | None, str | None]:
        """(exit code, reason) of the last run, also when it ended under an earlier daemon."""
        if self.last is not None:
            return self.last.exit_code, self.last.reason
        return self._saved_exit

    def stop(self) -> None:
        self._request = Outcome.STOP
        self._wake.set()

    def restart(self) -> None:
        if self.task is None or self.task.done():
            self.start()
            return
        self._request = Outcome.RESTART
        self._wake.set()

    async def stopped(self) -> None:
        if self.task is not None:
            await asyncio.shield(self.task)

    @property
    def supervised(self) -> bool:
        """Whether a supervising task is alive (the bot runs, starts, or waits to restart)."""
        return self.task is not None and not self.task.done()

    @property
    def label(self) -> str:
        return self.name if self.replica == 0 else f"{self.name}[{self.replica}]"

    @property
    def tier(self) -> Tier:
        """The tier the bot's spec names (``tier``, default ``sandbox``)."""
        return tier_for(self.svc.tiers, self.bot.tier, self.name)

    @property
    def cgroup_name(self) -> str:
        """The running sandbox's cgroup (see :meth:`slot_cgroup`)."""
        return self.slot_cgroup(self.slot)

    def slot_cgroup(self, slot: int) -> str:
        """``<bot>.<replica>`` (``.b`` added for slot 1, see :mod:`clawpen.daemon.warm`),
        prefixed for a daemon on another state dir (see paths.cgroup_scope)."""
        return f"{cgroup_scope(self.svc.state_dir)}{self.name}.{self.replica}{warm.SLOT_SUFFIX[slot]}"

    @property
    def log_name(self) -> str:
        return self.name if self.replica == 0 else f"{self.name}-r{self.replica}"

    # ---------------------------------------------------------------- the loop
    def transition(self, state: BotState, reason: str) -> None:
        if self.machine.state != state:
            self.svc.record(self.machine.transition(state, reason, self.svc.clock()))
            self._persist()

    def _persist(self) -> None:
        rec = self.sandbox.record() if self.sandbox is not None else None
        self.svc.store.save_instance(
            InstanceRow(
                self.name,
                self.replica,
                str(self.machine.state),
                rec.pid if rec else None,
                rec.sandbox_pid if rec else None,
                rec.pid_start if rec else None,
                rec.cgroup if rec else None,
                self.started_at,
                self.restarts,
                *self.last_exit,
                None,
                self.tracker.snapshot().to_json(),
            )
        )

    async def run(self, adopted: RunningSandbox | None = None) -> None:
        try:
            if self._adopting:
                self._adopting = False
                await self.net.adopt()
            await self.net.publish()
            await self._loop(adopted)
        except Exception as err:  # the task must never die silently
            self.svc.note("error", f"supervisor error: {err!r}", self.name, self.replica)
            raise
        finally:
            self.warm.drop()  # a spare never outlives its supervisor (a daemon exit included)
            await self.net.unpublish()
            if self.sandbox is None:  # stopped for good (a daemon exit leaves running bots linked)
                await self.net.detach()

    async def _loop(self, adopted: RunningSandbox | None) -> None:
        promoted: warm.Spare | None = None
        while True:
            sandbox: RunningSandbox
            if adopted is not None:
                sandbox, adopted = adopted, None
                self.sandbox = sandbox
                self._persist()
                self.warm.schedule(None)
            elif promoted is not None:  # a warm spare, released as the last run ended
                sandbox, promoted = self._take_over(promoted), None
                self.transition(S.STARTING, "restarting (warm)")
                self._running(sandbox)
            else:
                if self._request is Outcome.STOP:
                    self._request = None
                    self.tracker.record_manual_stop(self.svc.clock())
                    self.transition(S.STOPPED, "stopped by request")
                    return
                self._request = None
                if await self._outside_window() or await hagate.until_primary(self):
                    continue
                self.transition(S.STARTING, "start requested" if self._manual_start else "restarting")
                try:
                    sandbox = await self._start_sandbox()
                except ClawpenError as err:
                    self.transition(S.FAILED, f"{err.what} ({err.where})" if err.where else err.what)
                    return
                self._running(sandbox)
            outcome = await self._watch(sandbox)
            decision: Decision | None = None
            result = None
            if outcome is Outcome.EXITED and self.warm.spare is not None:
                # a warm restart may follow: decide and release first, the books after
                result = sandbox.collect()  # the monitor has exited: a reap and a few cgroup reads
                decision = self._decide(outcome, result)
                promoted = self._release_now(decision)
            result = await self._finish(sandbox, outcome, result)
            self.sandbox = None
            self.last = result
            hagate.bot_down(self)
            if outcome is Outcome.DEMOTED:
                self.transition(S.STANDBY, self._why)
                continue
            if outcome is Outcome.STOP:
                self.tracker.record_manual_stop(self.svc.clock())
                self.transition(S.STOPPED, f"stopped by request ({describe(result)})")
                return
            if outcome is Outcome.SCHEDULE_OFF:
                self.tracker.record_exit(
                    result.exit_code, result.reason, self.svc.clock(), scheduled_stop=True
                )
                self.transition(S.SCHEDULED_OFF, self._why)
                continue
            if outcome in (Outcome.RESTART, Outcome.CRON):
                self.transition(S.OOM if result.reason == "oom" else S.EXITED, describe(result))
                self._manual_start = outcome is Outcome.RESTART
                self.restarts += 1  # like pm2's restart count, asked-for restarts count too
                continue
            if decision is None:
                decision = self._decide(outcome, result)
                promoted = self._release_now(decision)
            self.transition(S.OOM if result.reason == "oom" else S.EXITED, describe(result))
            if not decision.restart:
                self.transition(decision.next_state, decision.why)
                return
            self.restarts += 1
            if decision.delay > 0:
                self.transition(S.BACKOFF, decision.why)
                if await self._sleep(decision.delay):
                    continue  # woken by a command: the loop handles it

    def _decide(self, outcome: Outcome, result: RunResult) -> Decision:
        failure = outcome in (Outcome.UNHEALTHY, Outcome.MEMORY, Outcome.DISK)
        return self.tracker.record_exit(
            result.exit_code if not failure or result.exit_code else 1,
            outcome.value if failure else result.reason,
            self.svc.clock(),
        )

    def _release_now(self, decision: Decision) -> warm.Spare | None:
        """On an immediate restart, the released warm spare (the bot runs again from here)."""
        if decision.restart and decision.delay <= 0 and self._request is None:
            return self._release_spare()
        return None

    async def _outside_window(self) -> bool:
        """If the bot's active window is closed: rest in scheduled_off until it opens (or a
        command arrives) and return True so the loop looks again."""
        sched = self.bot.schedule
        if not sched or not sched.active:
            return False
        window = ActiveWindow.parse(sched.active, sched.timezone)
        now = watch.now(self)
        if window.is_active(now):
            return False
        opens = window.next_change(now)
        self.transition(
            S.SCHEDULED_OFF,
            f"outside its active window ({sched.active}); opens {opens:%a %H:%M %Z}"
            if opens
            else f"outside its active window ({sched.active})",
        )
        await self._sleep(3600.0 if opens is None else max(0.0, opens.timestamp() - self.svc.clock()))
        return True

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, or return True early when a command arrives."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
            return True
        return False

    # ---------------------------------------------------------------- the sandbox
    def plan(self) -> Plan:
        return instance_plan(
            self.bot,
            self.name,
            self.replica,
            self.base_dir,
            state_dir=self.svc.state_dir,
            host=self.svc.host,
            seccomp=self.svc.seccomp,
            link=self.net.link,
            extra_env=hagate.env(self),
            extra_secrets=tuple(hagate.files(self)),
        )

    def _paths(self, *, legacy: bool = False) -> dict[str, Path]:
        """The running slot's pipes and bubblewrap's status file: ``<bot>.<replica>.out`` ...
        (``legacy``: ``<bot>.out``, which earlier releases shared between replicas: adopted as found)."""
        if legacy:
            return {k: self.svc.run_dir / f"{self.name}.{k}" for k in ("out", "err", "status")}
        return warm.paths(self.svc.run_dir, self.name, self.replica, self.slot)

    def _fifos(self, *, legacy: bool = False) -> list[tuple[str, Path]]:
        paths = self._paths(legacy=legacy)
        return [("out", paths["out"]), ("err", paths["err"])]

    def _running(self, sandbox: RunningSandbox) -> None:
        self.sandbox = sandbox
        now = self.svc.clock()
        self.started_at = now
        self.tracker.record_started(now, manual=self._manual_start)
        self._manual_start = False
        self.transition(S.RUNNING, f"pid {sandbox.pid}")
        self.warm.schedule(self._teardown)

    def _new_process(self) -> None:
        self.health = "starting" if self.bot.health else None  # a new process: until checked
        self.health_latency_s = self.health_detail = self.health_at = None

    def _release_spare(self) -> warm.Spare | None:
        """Run the bot in its warm spare, if one fits (see :mod:`clawpen.daemon.warm`)."""
        spare = self.warm.take()
        if spare is not None:
            spare.sandbox.release()
        return spare

    def _take_over(self, spare: warm.Spare) -> RunningSandbox:
        """Make a released spare the running sandbox (once the last run's pipes are closed)."""
        self.slot, self._pipes, self._secrets = spare.slot, spare.pipes, spare.secrets
        self._new_process()
        return spare.sandbox

    async def _start_sandbox(self) -> RunningSandbox:
        tier = self.tier
        await self.net.attach(reserve=tier.makes_netns)
        promoted = self._release_spare()  # after a backoff or a requested restart
        if promoted is not None:
            return self._take_over(promoted)
        if self._teardown is not None:  # the slot's last run is still being cleared
            with contextlib.suppress(Exception):
                await asyncio.shield(self._teardown)
        await self.warm.sweep()  # the first start: a spare a dead daemon left waiting
        with self.svc.spares.starting() if self.svc.spares else contextlib.nullcontext():
            return await self._cold_start(tier)

    async def _cold_start(self, tier: Tier) -> RunningSandbox:
        self._new_process()
        plan = self.plan()
        self._secrets = self.svc.secrets(list(self.bot.secrets))
        secrets = {**self._secrets, **hagate.files(self)}
        wire_net = self.net.wirer() if tier.makes_netns else None
        self.svc.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        ends, pipes = open_slot(self._paths())

        def start() -> RunningSandbox:
            return tier.start(
                plan,
                cgroup_name=self.cgroup_name,
                stdio=ends.stdio,
                status_fd=ends.status,
                secrets=secrets,
                wire_net=wire_net,
            )

        try:
            sandbox = await asyncio.get_running_loop().run_in_executor(None, ends.run, start)
        except BaseException:
            for fd in pipes.values():
                os.close(fd)
            raise
        self._pipes = pipes
        return sandbox

    async def _watch(self, sandbox: RunningSandbox) -> Outcome:
        loop = asyncio.get_running_loop()
        redactor = Redactor(self._secrets) if self._secrets else None
        writer = daemon_writer(  # caps on write, rate limit, pauses (never raises) on a full disk
            self.svc.logs_dir,
            self.log_name,
            self.svc.clock,
            self.svc.compressor,
            redact=redactor.redact if redactor else None,
            notify=lambda kind, text: self.svc.note(kind, text, self.name, self.replica),
        )
        self._reader = BotPipes(self._pipes, writer)
        self._reader.start()
        exited: asyncio.Future[None] = loop.create_future()
        pidfd = sandbox.exit_fd()
        loop.add_reader(pidfd, settle, exited)
        self._wake.clear()
        watchers = {loop.create_task(w) for w in [*watch.for_instance(self, sandbox), *hagate.watchers(self)]}
        try:
            while True:
                if self._request is not None:
                    request, self._request = self._request, None
                    self._why = REQUESTED.get(request, str(request.value))
                    return request
                waker = loop.create_task(self._wake.wait())
                pending: set[asyncio.Future[Any]] = {exited, waker, *watchers}
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
                self._wake.clear()
                if exited.done():
                    return Outcome.EXITED
                for task in done & watchers:
                    verdict: Verdict = task.result()
                    if verdict is not None:
                        self._why = verdict[1]
                        return verdict[0]
                    watchers.discard(task)
        finally:
            for task in watchers:
                task.cancel()
            loop.remove_reader(pidfd)
            os.close(pidfd)

    async def _finish(self, sandbox: RunningSandbox, outcome: Outcome, result: RunResult | None) -> RunResult:
        if outcome is not Outcome.EXITED:
            self.transition(S.STOPPING, self._why)
            await self._terminate(sandbox)
        loop = asyncio.get_running_loop()
        await self._reader.close()
        if result is not None:  # collected early (a warm restart): the teardown is not waited for
            self._teardown = loop.run_in_executor(None, sandbox.teardown)
        else:
            result = await loop.run_in_executor(None, sandbox.collect)
            await loop.run_in_executor(None, sandbox.teardown)
        return result

    async def _terminate(self, sandbox: RunningSandbox) -> None:
        """SIGTERM every process of the bot, then SIGKILL them after the grace period."""
        grace = 0.0 if hagate.urgent(self) else self.bot.restart.stop_grace
        await terminate(sandbox, grace, lambda kind, why: self.svc.note(kind, why, self.name, self.replica))

    # ---------------------------------------------------------------- views
    def status(self) -> dict[str, Any]:
        sb = self.sandbox
        return {
            "bot": self.name,
            "replica": self.replica,
            "state": str(self.machine.state),
            "since": self.machine.since,
            "pid": sb.pid if sb else None,
            "restarts": self.restarts,
            "started_at": self.started_at,
            "last_exit": self.last_exit[0],
            "last_reason": self.last_exit[1],
            "health": self.health,
            **status_fields(
                self.name, self.bot.network, None if (net := self.svc.network) is None else net.learn
            ),
            "health_detail": self.health_detail,
            "health_at": self.health_at,
        }
