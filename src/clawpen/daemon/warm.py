"""Warm restarts: a bot's next sandbox, built while the bot runs, so a restart only releases it.

While a bot with a restart policy runs, :class:`Spares` builds its next sandbox through the
tier's :meth:`~clawpen.sandbox.tier.HoldingTier.prepare`: the cgroup made with its limits and
the spare already in it, the seccomp filter and generated files in memfds, bubblewrap started as
the bot's uid in the bot's network namespace, its mounts built, waiting on its block fd just
before seccomp and the exec. The same steps build a cold start; only the unblock waits. When
the bot exits and is to restart at once, the supervisor checks that the spare was built from
what a cold start would use now (the same spec object, network link and secret values) and
writes one byte: the bot runs again. Otherwise the spare is thrown away and the start is cold.

A bot has two *slots*, each with its own cgroup, pipes and status file: slot 0 keeps the names
of a cold start (``<bot>.<replica>``), slot 1 adds ``.b``. The spare is built in the slot the
running bot does not use, so the finished run's teardown never touches it. A daemon that dies
leaves a spare waiting forever (its block pipe is open read-write in bubblewrap itself, so it
never reads EOF, which would run it): the next daemon removes it (:meth:`Spares.sweep`).

Spares are built one at a time, on one thread of their own, off the event loop: a daemon that
starts 500 bots builds their spares after them, without competing with the starts. A spare costs
about 300 kB of processes (PSS) and 250 kB charged to its cgroup; none is built while the host
has less than 10 % of its memory available (:func:`memory_low`). Opt out per bot with
``restart = { warm = false }``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

from clawpen.daemon.lifecycle import open_slot
from clawpen.errors import ClawpenError
from clawpen.sandbox.tier import HeldSandbox, HoldingTier

if TYPE_CHECKING:
    from collections.abc import Callable

    from clawpen.net.instance import InstanceNetwork
    from clawpen.net.links import Link
    from clawpen.plan.model import Plan
    from clawpen.sandbox.cgroups import CgroupHost
    from clawpen.sandbox.tier import RunningSandbox, Tier
    from clawpen.spec.models import Bot

SLOT_SUFFIX = ("", ".b")
LOW_MEMORY = 0.10  # no new spare while less than this share of the host's memory is available


def memory_low(meminfo: Path = Path("/proc/meminfo")) -> bool:
    """Whether the host is short of memory (``MemAvailable`` under :data:`LOW_MEMORY` of
    ``MemTotal``): spares (about 300 kB of processes and 250 kB of cgroup each) are a luxury then."""
    try:
        fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
        total, available = int(fields["MemTotal"].split()[0]), int(fields["MemAvailable"].split()[0])
    except (OSError, KeyError, ValueError):
        return False
    return available < total * LOW_MEMORY


class SparePool:
    """The one thread that builds every bot's spare (made on first use; one per daemon). Spares
    wait while any cold start is under way: 500 bots coming up are not slowed by their spares."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._starting = 0
        self._quiet = asyncio.Event()
        self._quiet.set()

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """Around a cold start."""
        self._starting += 1
        self._quiet.clear()
        try:
            yield
        finally:
            self._starting -= 1
            if not self._starting:
                self._quiet.set()

    async def quiet(self) -> None:
        """Return once no cold start is under way."""
        while self._starting:
            await self._quiet.wait()

    @property
    def executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clawpen-spare")
        return self._pool

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


class Spare(NamedTuple):
    sandbox: HeldSandbox
    slot: int
    pipes: dict[str, int]  # the daemon's read ends of the slot's stdout/stderr pipes
    bot: Bot  # what it was built from: the spec object, the link, the secret values
    link: Link | None
    secrets: dict[str, bytes]


def slot_of(cgroup: str | None, base: str) -> int:
    """The slot a saved sandbox's cgroup name belongs to (``base`` is slot 0's name)."""
    return 1 if cgroup == base + SLOT_SUFFIX[1] else 0


def other_slot(cgroup: str) -> str:
    """The cgroup of the slot a running sandbox in ``cgroup`` does not use (its spare's)."""
    suffix = SLOT_SUFFIX[1]
    return cgroup.removesuffix(suffix) if cgroup.endswith(suffix) else cgroup + suffix


def remove_stale(host: CgroupHost | None, cgroup: str | None) -> None:
    """Remove the spare a dead daemon left beside the sandbox in ``cgroup`` (blocking; quiet)."""
    if host is None or cgroup is None:
        return
    with contextlib.suppress(ClawpenError, OSError):
        host.attach(other_slot(cgroup)).remove()


def paths(run_dir: Path, name: str, replica: int, slot: int) -> dict[str, Path]:
    """The pipes and status file of one slot: ``<bot>.<replica>[.b].out`` ..."""
    base = f"{name}.{replica}{SLOT_SUFFIX[slot]}"
    return {k: run_dir / f"{base}.{k}" for k in ("out", "err", "status")}


def _close(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def discard(spare: Spare) -> None:
    """Kill a spare that will not be used and release what it holds (blocking: a thread's job)."""
    _close(spare.pipes.values())
    with contextlib.suppress(ClawpenError, OSError):
        spare.sandbox.kill(monitor=True)
    with contextlib.suppress(ClawpenError, OSError):
        spare.sandbox.teardown()


class _Services(Protocol):
    @property
    def spares(self) -> SparePool | None: ...
    @property
    def run_dir(self) -> Path: ...
    @property
    def secrets(self) -> Callable[[list[str]], dict[str, bytes]]: ...
    @property
    def cgroups(self) -> Callable[[], CgroupHost | None]: ...
    @property
    def note(self) -> Callable[[str, str, str, int], None]: ...


class Supervised(Protocol):
    """What a spare needs of its bot's supervisor (:class:`clawpen.daemon.runtime.Instance`)."""

    name: str
    replica: int
    bot: Bot
    slot: int
    sandbox: RunningSandbox | None
    net: InstanceNetwork

    @property
    def svc(self) -> _Services: ...
    @property
    def tier(self) -> Tier: ...
    def plan(self) -> Plan: ...
    def slot_cgroup(self, slot: int) -> str: ...


class Spares:
    """One instance's spare: built after each start, used or thrown away at the next."""

    def __init__(self, inst: Supervised) -> None:
        self.inst = inst
        self.spare: Spare | None = None
        self._task: asyncio.Task[None] | None = None
        self._gen = 0  # bumped by drop(): a build finishing after it throws its spare away
        self._swept = False

    def wanted(self) -> bool:
        inst = self.inst
        return (
            inst.svc.spares is not None
            and inst.bot.restart.warm
            and inst.bot.restart.policy != "no"
            and isinstance(inst.tier, HoldingTier)
            and inst.bot.ha is None  # a failover bot's fencing token changes with each lease
            and not (inst.bot.schedule and inst.bot.schedule.active)
        )

    def schedule(self, after: asyncio.Future[None] | None) -> None:
        """Build the next spare in the background (once ``after``, the last run's teardown, is done)."""
        if self.spare is None and (self._task is None or self._task.done()) and self.wanted():
            self._task = asyncio.get_running_loop().create_task(self._build(after, self._gen))

    async def _build(self, after: asyncio.Future[None] | None, gen: int) -> None:
        inst = self.inst
        if after is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(after)
        await self.sweep()
        if inst.svc.spares is not None:
            await inst.svc.spares.quiet()
        if gen != self._gen or inst.sandbox is None or memory_low():
            return
        slot = 1 - inst.slot
        bot, link = inst.bot, inst.net.link
        tier = inst.tier
        if not isinstance(tier, HoldingTier) or inst.svc.spares is None:
            return
        plan = inst.plan()
        secrets = inst.svc.secrets(list(bot.secrets))
        where = paths(inst.svc.run_dir, inst.name, inst.replica, slot)
        try:
            ends, pipes = open_slot(where)
        except OSError as err:
            inst.svc.note("spare", f"no warm spare: {err}", inst.name, inst.replica)
            return

        def job() -> HeldSandbox:  # the thread owns the bot's ends: closed once bubblewrap has them
            return ends.run(
                lambda: tier.prepare(
                    plan,
                    cgroup_name=inst.slot_cgroup(slot),
                    stdio=ends.stdio,
                    status_fd=ends.status,
                    secrets=secrets,
                )
            )

        def orphaned(done: Future[HeldSandbox]) -> None:
            """The build outlived its task (the daemon is stopping): throw its spare away."""
            if done.cancelled():  # it never ran: the bot's ends are still ours
                ends.close()
                _close(pipes.values())
            elif done.exception() is None:
                discard(Spare(done.result(), slot, pipes, bot, link, secrets))
            else:
                _close(pipes.values())

        try:
            future = inst.svc.spares.executor.submit(job)
        except RuntimeError:  # the pool has shut down
            ends.close()
            _close(pipes.values())
            return
        try:
            sandbox = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.add_done_callback(orphaned)
            raise
        except (ClawpenError, OSError) as err:
            _close(pipes.values())
            inst.svc.note("spare", f"no warm spare: {err}", inst.name, inst.replica)
            return
        spare = Spare(sandbox, slot, pipes, bot, link, secrets)
        if gen != self._gen or inst.sandbox is None or inst.slot == slot:
            await asyncio.to_thread(discard, spare)
            return
        self.spare = spare

    def take(self) -> Spare | None:
        """The spare, if it fits a start now (the same spec object, link and secrets), else
        ``None`` (a misfit is thrown away in the background)."""
        spare, self.spare = self.spare, None
        if spare is None:
            return None
        inst = self.inst
        fits = (
            spare.bot is inst.bot
            and spare.link == inst.net.link
            and self.wanted()
            and (not inst.bot.secrets or spare.secrets == inst.svc.secrets(list(inst.bot.secrets)))
        )
        if not fits:
            asyncio.get_running_loop().run_in_executor(None, discard, spare)
            return None
        return spare

    def drop(self) -> None:
        """Throw the spare away (the bot stops, or the daemon exits): now, blocking."""
        self._gen += 1
        spare, self.spare = self.spare, None
        if spare is not None:
            discard(spare)

    async def sweep(self) -> None:
        """Once, before this daemon's first start or build for the instance: remove what a dead
        daemon's spare left in the slot the bot does not use (its cgroup, and so the spare)."""
        if self._swept:
            return
        self._swept = True
        inst = self.inst
        if isinstance(inst.tier, HoldingTier):
            await asyncio.to_thread(remove_stale, inst.svc.cgroups(), inst.slot_cgroup(inst.slot))
