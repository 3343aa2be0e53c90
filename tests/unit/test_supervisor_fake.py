"""The supervisor's policy on a fake tier and virtual time (tests/unit/fake_tier.py): restart
and backoff, crashloop, stop with grace, schedule windows and cron, health checks, memory
pressure, adoption, and `up`'s release plan, each in milliseconds and without root. The same
runtime code runs on the namespace tier in tests/integration/test_daemon*.py."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fake_tier import EPOCH, FakeTier, Script, VirtualLoop, real_seconds

from clawpen.daemon.runtime import Instance, Services
from clawpen.daemon.store import Instance as InstanceRow
from clawpen.daemon.store import Store
from clawpen.logs.upkeep import Compressor
from clawpen.plan.build import HostFacts
from clawpen.sandbox.seccomp import default_policy
from clawpen.spec.models import Bot
from clawpen.supervisor.states import BotState as S
from clawpen.supervisor.states import Transition

HOST = HostFacts.probe()
REAL_LIMIT = 1.0  # seconds of real time any one scenario may take


class Rig:
    """Services on a :class:`FakeTier` and a :class:`VirtualLoop`, with what they record."""

    def __init__(self, tmp: Path, scripts: list[Script], *, tiers: dict[str, Any] | None = None) -> None:
        self.loop = VirtualLoop()
        self.tier = FakeTier(self.loop, scripts)
        self.store = Store(tmp / "clawpen.db", records=tmp / "run")
        self.compressor = Compressor()
        self.transitions: list[Transition] = []
        self.notes: list[tuple[str, str]] = []
        self.changed = asyncio.Event()
        self.servers: list[asyncio.Server] = []
        self.svc = Services(
            tiers={"sandbox": self.tier} if tiers is None else tiers,
            cgroups=lambda: None,
            store=self.store,
            state_dir=tmp,
            logs_dir=tmp / "logs",
            run_dir=tmp / "run",
            host=HOST,
            seccomp=default_policy(),
            clock=self.loop.now,
            record=self._record,
            bpf=lambda: b"\0" * 8,
            compressor=self.compressor,
            secrets=lambda names: {},
            note=lambda kind, why, bot, replica: self.notes.append((kind, why)),
        )

    def _record(self, change: Transition) -> None:
        self.transitions.append(change)
        self.changed.set()

    def instance(self, name: str = "bot", replica: int = 0, **spec: Any) -> Instance:
        bot = Bot.model_validate({"command": ["bot"], **spec})
        return Instance(self.svc, name, replica, bot, str(self.svc.state_dir))

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def do(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` called inside the running loop (what starts tasks needs one)."""

        async def call() -> Any:
            return fn()

        return self.run(call())

    def until(self, cond: Callable[[], bool], within: float, step: float | None = None) -> None:
        """Run the loop until ``cond()`` holds (checked at each state change, and every ``step``
        virtual seconds if given), at most ``within`` virtual seconds."""

        async def wait() -> None:
            deadline = self.loop.time() + within
            while not cond():
                left = deadline - self.loop.time()
                if left <= 0:
                    raise AssertionError(f"not reached within {within}s: {self.path()}")
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), min(left, step or left))

        self.run(wait())

    def stop(self, inst: Instance) -> None:
        inst.stop()
        self.run(inst.stopped())

    def path(self) -> list[str]:
        return [str(t.to_state) for t in self.transitions]

    def at(self, state: S) -> list[float]:
        """Loop times of every change into ``state``."""
        return [t.at - EPOCH for t in self.transitions if t.to_state is state]

    def close(self) -> None:
        self.tier.close()
        for server in self.servers:
            server.close()
        tasks = asyncio.all_tasks(self.loop)
        for task in tasks:
            task.cancel()

        async def drain() -> None:
            await asyncio.gather(*tasks, return_exceptions=True)

        self.loop.run_until_complete(drain())
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()
        self.store.close()
        self.compressor.close(timeout=5)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(*scripts: Script, **kw: Any) -> Rig:
        made.append(Rig(tmp_path / f"state{len(made)}", list(scripts) or [Script()], **kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


def timed(fn: Callable[[], Any]) -> Any:
    value, took = real_seconds(fn)
    assert took < REAL_LIMIT, f"took {took:.2f} s of real time"
    return value


# ------------------------------------------------------------------------ restart and backoff
def test_a_failing_bot_restarts_at_once_then_with_growing_backoff(rig: Callable[..., Rig]) -> None:
    r = rig(Script(exit_after=0.5, code=1))
    inst = r.instance(restart={"backoff_initial": "2s", "backoff_max": "16s", "max_restarts": 50})
    r.do(inst.start)
    timed(lambda: r.until(lambda: len(r.tier.started) >= 6, within=300))
    starts = [s.started for s in r.tier.started]
    gaps = [b - a - 0.5 for a, b in itertools.pairwise(starts)]  # minus each run's 0.5 s
    assert gaps[0] == pytest.approx(0, abs=1e-6), gaps  # the first restart of a streak is immediate
    for gap, nominal in zip(gaps[1:], (2, 4, 8, 16), strict=True):  # equal jitter: [d/2, d]
        assert nominal / 2 - 1e-6 <= gap <= nominal + 1e-6, gaps
    assert r.path()[:8] == [
        *("starting", "running", "exited"),
        *("starting", "running", "exited", "backoff", "starting"),  # immediate, then a backoff
    ]
    assert inst.restarts >= 5 and inst.last is not None and inst.last.exit_code == 1
    # every sandbox that ended was torn down, and no fake process is left running
    assert len(r.tier.torn_down) == len(r.tier.started) - len(r.tier.running())
    r.stop(inst)
    assert r.path()[-1] == "stopped" and not r.tier.running()


def test_a_bot_that_keeps_crashing_goes_to_crashloop_and_stays_down(rig: Callable[..., Rig]) -> None:
    r = rig(Script(exit_after=0.1, code=3))
    inst = r.instance(restart={"backoff_initial": "1s", "max_restarts": 3, "window": "10m"})
    r.do(inst.start)
    timed(lambda: r.until(lambda: inst.machine.state is S.CRASHLOOP, within=600))
    assert len(r.tier.started) == 4  # the first run and 3 restarts
    assert not inst.supervised and inst.restarts == 3
    (why,) = [t.reason for t in r.transitions if t.to_state is S.CRASHLOOP]
    assert "3" in why, why
    r.run(asyncio.sleep(3600))  # an hour later: still down
    assert len(r.tier.started) == 4
    r.do(inst.start)  # a person's start ends the crashloop
    r.until(lambda: len(r.tier.started) == 5 and inst.machine.state is S.RUNNING, within=5)


def test_a_clean_exit_under_on_failure_is_not_restarted_but_always_is(rig: Callable[..., Rig]) -> None:
    r = rig(Script(exit_after=1.0, code=0))
    done = r.instance(name="done")
    r.do(done.start)
    timed(lambda: r.until(lambda: not done.supervised, within=60))
    assert done.machine.state is S.STOPPED and len(r.tier.started) == 1
    again = r.instance(name="again", restart={"policy": "always"})
    r.do(again.start)
    r.until(lambda: len(r.tier.started) == 3, within=60)
    assert again.supervised
    r.stop(again)


def test_stop_waits_its_grace_for_sigterm_then_kills(rig: Callable[..., Rig]) -> None:
    r = rig(Script(ignore_term=True))
    inst = r.instance(restart={"stop_grace": "7s"})
    r.do(inst.start)
    r.until(lambda: inst.machine.state is S.RUNNING, within=5)
    sb = r.tier.started[0]
    asked = r.loop.time()
    timed(lambda: r.stop(inst))
    assert sb.signals == [signal.SIGTERM, signal.SIGKILL]
    assert sb.ended_at is not None and sb.ended_at - asked == pytest.approx(7.0, abs=0.01)
    assert ("kill", "no exit 7s after SIGTERM: SIGKILL") in r.notes
    assert inst.machine.state is S.STOPPED and inst.last is not None and inst.last.signal == 9
    polite = rig(Script())  # one that minds SIGTERM ends at once
    other = polite.instance(restart={"stop_grace": "7s"})
    polite.do(other.start)
    polite.until(lambda: other.machine.state is S.RUNNING, within=5)
    t0 = polite.loop.time()
    polite.stop(other)
    assert polite.tier.started[0].signals == [signal.SIGTERM] and polite.loop.time() - t0 < 0.1


def test_a_start_the_tier_refuses_is_failed_not_retried(rig: Callable[..., Rig]) -> None:
    from clawpen.errors import SandboxError

    r = rig()
    r.tier.fail_start = SandboxError("bubblewrap could not start", where="spawn")
    inst = r.instance()
    r.do(inst.start)
    timed(lambda: r.until(lambda: not inst.supervised, within=60))
    assert inst.machine.state is S.FAILED and r.transitions[-1].reason == "bubblewrap could not start (spawn)"


def test_a_bot_whose_tier_the_daemon_lacks_fails_with_its_name(rig: Callable[..., Rig]) -> None:
    r = rig(tiers={})
    inst = r.instance()
    r.do(inst.start)
    r.until(lambda: not inst.supervised, within=5)
    assert inst.machine.state is S.FAILED
    assert r.transitions[-1].reason == "tier 'sandbox' is not available in this daemon (bots.bot.tier)"


# ------------------------------------------------------------------------------- the schedule
def at_clock(r: Rig, when: datetime) -> None:
    """Move the virtual clock to ``when`` (before anything is started)."""
    r.loop.advance(when.timestamp() - r.loop.now())


def test_a_bot_runs_only_inside_its_active_window(rig: Callable[..., Rig]) -> None:
    r = rig()
    at_clock(r, datetime(2026, 1, 5, 8, 0, tzinfo=UTC))  # a Monday, 08:00 UTC
    inst = r.instance(schedule={"active": "Mon-Fri 09:00-17:00", "timezone": "UTC"})
    r.do(inst.start)
    r.until(lambda: inst.machine.state is S.SCHEDULED_OFF, within=1)
    assert not r.tier.started
    timed(lambda: r.until(lambda: inst.machine.state is S.RUNNING, within=3 * 3600))
    opened = datetime.fromtimestamp(r.transitions[-1].at, UTC)
    assert (opened.hour, opened.minute) == (9, 0)
    r.until(lambda: inst.machine.state is S.SCHEDULED_OFF, within=9 * 3600)
    closed = datetime.fromtimestamp(r.transitions[-1].at, UTC)
    assert (closed.hour, closed.minute) == (17, 0) and not r.tier.running()
    assert r.tier.started[0].signals == [signal.SIGTERM]  # stopped politely, not counted as a crash
    # Friday 17:00 -> the next start is Monday 09:00
    r.until(lambda: len(r.tier.started) == 5 and inst.machine.state is S.SCHEDULED_OFF, within=5 * 86400)
    r.until(lambda: len(r.tier.started) == 6, within=4 * 86400)
    monday = datetime.fromtimestamp(r.transitions[-1].at, UTC)
    assert (monday.weekday(), monday.hour) == (0, 9), monday
    assert inst.restarts == 0
    r.stop(inst)


def test_a_cron_restart_restarts_the_bot_on_time(rig: Callable[..., Rig]) -> None:
    r = rig()
    at_clock(r, datetime(2026, 1, 5, 3, 30, tzinfo=UTC))
    inst = r.instance(schedule={"restart": "0 4 * * *", "timezone": "UTC"})
    r.do(inst.start)
    timed(lambda: r.until(lambda: len(r.tier.started) == 3, within=2 * 86400))
    first, second, _ = r.tier.started
    for sb, day in ((first, 5), (second, 6)):
        assert sb.signals == [signal.SIGTERM]
        assert sb.ended_at is not None
        assert datetime.fromtimestamp(EPOCH + sb.ended_at, UTC) == datetime(2026, 1, day, 4, 0, tzinfo=UTC)
    assert inst.restarts == 2 and inst.machine.state is S.RUNNING
    r.stop(inst)


# ------------------------------------------------------------------------------- health checks
class Service:
    """What the fake bot serves on 127.0.0.1: an HTTP status that the test changes."""

    def __init__(self, r: Rig) -> None:
        self.status = 200
        self.requests = 0
        self.server = r.run(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        r.servers.append(self.server)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        self.requests += 1
        writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()


def test_the_first_checks_come_at_once_so_a_bot_ready_after_1s_is_healthy_by_2s(
    rig: Callable[..., Rig],
) -> None:
    r = rig()
    web = Service(r)
    web.status = 503
    r.loop.call_later(1.0, lambda: setattr(web, "status", 200))  # ready 1 s after the start
    inst = r.instance(health={"http": f"http://127.0.0.1:{web.port}/", "interval": "30s", "retries": 3})
    r.do(inst.start)
    r.until(lambda: inst.health == "starting", within=1, step=0.01)  # never None once started
    timed(lambda: r.until(lambda: inst.health == "healthy", within=30, step=0.05))
    running = r.at(S.RUNNING)[0]
    assert 1.0 <= r.loop.time() - running <= 2.0  # checks at 0, 0.25, 0.75, 1.75 s (was: 30 s)
    assert web.requests == 4 and inst.health_detail == "HTTP 200"
    assert inst.machine.state is S.RUNNING
    r.stop(inst)


def test_quick_first_checks_do_not_make_a_bot_unhealthy_sooner(rig: Callable[..., Rig]) -> None:
    r = rig()
    web = Service(r)
    web.status = 503  # never ready
    inst = r.instance(health={"http": f"http://127.0.0.1:{web.port}/", "interval": "30s", "retries": 3})
    r.do(inst.start)
    timed(lambda: r.until(lambda: bool(r.at(S.UNHEALTHY)), within=120))
    took = r.at(S.UNHEALTHY)[0] - r.at(S.RUNNING)[0]
    assert 60 <= took < 70, took  # the 3rd counted failure: as with checks every 30 s from 0
    assert web.requests > 10  # checked far more often than that while it started
    r.stop(inst)


def test_failing_http_checks_make_the_bot_unhealthy_and_restart_it(rig: Callable[..., Rig]) -> None:
    r = rig()
    web = Service(r)
    health = {"http": f"http://127.0.0.1:{web.port}/health", "interval": "10s", "retries": 3}
    inst = r.instance(health=health)
    r.do(inst.start)
    r.until(lambda: inst.health == "healthy", within=30, step=0.5)
    assert web.requests == 1
    web.status = 503  # from the second check on (at 10 s: the first was right after the start)
    timed(lambda: r.until(lambda: len(r.tier.started) == 2, within=120))
    assert r.path()[2:] == ["unhealthy", "stopping", "exited", "starting", "running"]
    (unhealthy,) = [t for t in r.transitions if t.to_state is S.UNHEALTHY]
    assert unhealthy.reason == "health check failed 3 times: HTTP 503"
    running = r.at(S.RUNNING)[0]
    assert unhealthy.at - EPOCH - running == pytest.approx(30, abs=0.01)  # fails at 10, 20, 30 s
    assert r.tier.started[0].signals == [signal.SIGTERM]
    assert inst.last is not None and inst.last.signal == signal.SIGTERM
    web.status = 200
    r.until(lambda: inst.health == "healthy", within=30, step=0.5)
    assert inst.machine.state is S.RUNNING and len(r.tier.started) == 2
    r.stop(inst)


def test_a_failing_check_with_on_unhealthy_none_only_reports(rig: Callable[..., Rig]) -> None:
    r = rig()
    web = Service(r)
    web.status = 500
    inst = r.instance(health={"tcp": "127.0.0.1:1", "interval": "5s", "retries": 2, "on_unhealthy": "none"})
    r.do(inst.start)
    timed(lambda: r.until(lambda: inst.machine.state is S.UNHEALTHY, within=60))
    assert (inst.health, inst.health_detail) == ("unhealthy", "connection refused")
    r.run(asyncio.sleep(300))
    assert len(r.tier.started) == 1 and inst.machine.state is S.UNHEALTHY
    r.stop(inst)


def test_a_cmd_check_runs_through_the_tiers_enter(rig: Callable[..., Rig], tmp_path: Path) -> None:
    r = rig()
    flag = tmp_path / "healthy"
    flag.touch()
    cmd = ["sh", "-c", f"test -e {flag} || {{ echo not ready; exit 4; }}"]
    inst = r.instance(health={"cmd": cmd, "interval": "5s", "retries": 2})
    r.do(inst.start)
    r.until(lambda: inst.health == "healthy", within=30, step=0.5)
    flag.unlink()
    timed(lambda: r.until(lambda: len(r.tier.started) == 2, within=60))
    (unhealthy,) = [t.reason for t in r.transitions if t.to_state is S.UNHEALTHY]
    assert unhealthy == "health check failed 2 times: exit 4: not ready"
    r.stop(inst)  # the new run's first check starts at once: stopping ends it too
    assert all(p.returncode is not None for p in r.tier.entered)  # every check was reaped


def test_memory_pressure_restarts_a_bot_that_stays_above_its_share(rig: Callable[..., Rig]) -> None:
    r = rig(Script(memory=95 << 20), Script(memory=50 << 20))
    inst = r.instance(resources={"memory": "100M"}, memory_pressure={"share": 0.9, "for": "20s"})
    r.do(inst.start)
    timed(lambda: r.until(lambda: len(r.tier.started) == 2, within=120))
    (stopping,) = [t for t in r.transitions if t.to_state is S.STOPPING]
    assert stopping.reason.startswith("memory at 95% of its limit for 20s")
    r.run(asyncio.sleep(600))
    assert len(r.tier.started) == 2  # the second run stays below: left alone
    r.stop(inst)


# ------------------------------------------------------------------------------------ adoption
def test_an_adopted_sandbox_is_supervised_and_a_gone_one_is_not(rig: Callable[..., Rig]) -> None:
    r = rig(Script(exit_after=5.0, code=2))
    first = r.instance()
    r.do(first.start)
    r.until(lambda: first.machine.state is S.RUNNING, within=1)
    sb = r.tier.started[0]
    row = r.store.instances()[0]
    assert (row.pid, row.sandbox_pid, row.cgroup) == (sb.pid, sb.sandbox_pid, first.cgroup_name)
    first.task.cancel()  # a daemon that dies: the sandbox runs on
    r.tier.adoptable[sb.pid] = sb
    second = r.instance()
    assert r.do(lambda: second.adopt(row))
    assert second.sandbox is sb and ("adopt", f"adopted the running sandbox (pid {sb.pid})") in r.notes
    r.until(lambda: len(r.tier.started) == 2, within=30)  # its exit is seen and restarted from here
    assert second.last is not None and second.last.exit_code == 2
    gone = InstanceRow("bot", 1, "running", 99, 100, 1, "bot.1", EPOCH, 0, None, None, None)
    assert not r.do(lambda: r.instance(replica=1).adopt(gone))
    r.stop(second)


# -------------------------------------------------------------------------------------- logs
def test_each_replica_has_its_own_pipes_and_log(rig: Callable[..., Rig]) -> None:
    from clawpen.logs.query import read_logs

    r = rig(Script(stdout=b"I am replica {replica}\n"))
    insts = [r.instance(replica=i, replicas=2) for i in (0, 1)]
    for inst in insts:
        r.do(inst.start)
    timed(lambda: r.until(lambda: all(i.machine.state is S.RUNNING for i in insts), within=5))
    r.run(asyncio.sleep(1))
    for inst in insts:
        r.stop(inst)
    logs = {i.log_name: [x.text for x in read_logs(r.svc.logs_dir, i.log_name)] for i in insts}
    assert logs == {"bot": ["I am replica 0"], "bot-r1": ["I am replica 1"]}, logs
    names = sorted(p.name for p in r.svc.run_dir.iterdir() if p.suffix in (".out", ".err", ".status"))
    assert names == [f"bot.{i}.{k}" for i in (0, 1) for k in ("err", "out", "status")], names


def test_a_sandbox_of_an_earlier_release_is_adopted_with_its_shared_pipes(rig: Callable[..., Rig]) -> None:
    """Earlier releases named the pipes <bot>.out and <bot>.err; a bot started then is read from them."""
    import os

    from clawpen.logs.query import read_logs

    r = rig(Script())
    r.svc.run_dir.mkdir(parents=True)
    old = {k: r.svc.run_dir / f"bot.{k}" for k in ("out", "err")}
    ends = []
    for path in old.values():
        os.mkfifo(path, 0o600)
        ends.append(os.open(path, os.O_RDWR))  # the running bot's side
    sb = r.tier.start(r.instance().plan(), cgroup_name="bot.0")
    r.tier.adoptable[sb.pid] = sb
    sb.fds += ends
    inst = r.instance()
    row = InstanceRow("bot", 0, "running", sb.pid, sb.sandbox_pid, 1, "bot.0", EPOCH, 0, None, None, None)
    assert r.do(lambda: inst.adopt(row))
    os.write(ends[0], b"still here\n")
    r.run(asyncio.sleep(1))
    r.stop(inst)
    assert [x.text for x in read_logs(r.svc.logs_dir, "bot")] == ["still here"]
    assert not (r.svc.run_dir / "bot.0.out").exists()  # nothing new was made for it
