"""The start-up CPU allowance of a running bot (``resources.start_cpus``; rules in
:mod:`clawpen.spec.startcpu`).

A watcher of each run (:func:`clawpen.daemon.watchers.for_instance`): right after the start it
raises the bot's cgroup CPU quota to the allowance, waits for the first passing health check
(``inst.health`` turns ``healthy``) or for ``start_for``, then sets the quota back to ``cpus`` and
records a ``start-cpus`` event saying when and why. A daemon that adopts a running bot carries
on with the allowance only if the cgroup still has it (the earlier daemon died during it) and
its time is not over; otherwise it makes sure the quota is ``cpus``, without an event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from clawpen.errors import SandboxError
from clawpen.spec.startcpu import allowance

if TYPE_CHECKING:
    from clawpen.plan.build import HostFacts
    from clawpen.plan.model import Plan
    from clawpen.sandbox.cgroups import CgroupHost
    from clawpen.sandbox.tier import RunningSandbox
    from clawpen.spec.models import Bot
    from clawpen.supervisor.states import BotStateMachine


class _Services(Protocol):
    @property
    def clock(self) -> Callable[[], float]: ...
    @property
    def note(self) -> Callable[[str, str, str, int], None]: ...
    @property
    def host(self) -> HostFacts: ...
    @property
    def cgroups(self) -> Callable[[], CgroupHost | None]: ...


class Starting(Protocol):
    """What the allowance uses of the bot replica (``daemon/runtime.py`` ``Instance``)."""

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
    def health(self) -> str | None: ...
    @property
    def machine(self) -> BotStateMachine: ...
    def plan(self) -> Plan: ...


POLL = 0.1  # seconds between looks at the health status while the allowance lasts
KIND = "start-cpus"
ADOPTED_AFTER = 1.0  # seconds between a run's start and its `running` state: adopted, not started


async def start_allowance(inst: Starting, sandbox: RunningSandbox, *, poll: float = POLL) -> None:
    """Grant ``start_cpus`` from the start until healthy or ``start_for``; never stops the bot."""
    res, svc = inst.bot.resources, inst.svc
    grant = allowance(
        res.cpus,
        res.start_cpus,
        res.start_for,
        host_cores=svc.host.cpu_count,
        has_health=inst.bot.health is not None,
    )
    host = svc.cgroups()
    limits = inst.plan().cgroup
    if grant is None or host is None or sandbox.cgroup_name is None or limits.cpu_quota_us is None:
        return None
    cgroup = host.attach(sandbox.cgroup_name)

    def note(text: str) -> None:
        svc.note(KIND, text, inst.name, inst.replica)

    steady, period = limits.cpu_quota_us, limits.cpu_period_us
    began = inst.started_at or svc.clock()
    deadline = began + grant.seconds
    loop = asyncio.get_running_loop()
    boost = round(grant.cpus * period)
    if adopted(inst):  # the earlier daemon's run: its allowance goes on only if it had not ended
        try:
            current = await loop.run_in_executor(None, cgroup.cpu_quota)
        except SandboxError:  # unreadable: put cpus back (a watcher must never raise)
            current = None
        if current != boost or svc.clock() >= deadline:
            if current != steady:  # a daemon that died as the allowance ended
                with contextlib.suppress(SandboxError):
                    await loop.run_in_executor(None, cgroup.set_cpu_quota, steady, period)
            return None
    else:
        try:
            await loop.run_in_executor(None, cgroup.set_cpu_quota, boost, period)
        except SandboxError as err:
            note(f"start_cpus {grant.cpus:g} not granted: {err.what}")
            return None
    while True:
        now = svc.clock()
        if grant.until_healthy and inst.health == "healthy":
            why = f"healthy after {now - began:.1f}s"
            break
        if now >= deadline:
            why = f"start_for {grant.seconds:g}s passed"
            why += " with no passing health check" if grant.until_healthy else ""
            break
        await asyncio.sleep(min(poll, deadline - now))
    try:
        await loop.run_in_executor(None, cgroup.set_cpu_quota, steady, period)
    except SandboxError as err:  # the bot is gone (its watchers are cancelled next)
        note(f"start_cpus {grant.cpus:g} ended ({why}); setting cpus failed: {err.what}")
        return None
    note(f"start_cpus {grant.cpus:g} ended, cpus {grant.steady:g} now: {why}")
    return None


def adopted(inst: Starting) -> bool:
    """Whether this run was adopted from an earlier daemon: a start's watchers begin at its
    ``running`` transition, made at its start time; an adopted run's is the adoption, later."""
    started, since = inst.started_at, inst.machine.since
    return started is not None and since is not None and since - started > ADOPTED_AFTER
