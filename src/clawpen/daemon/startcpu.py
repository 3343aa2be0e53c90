"""The start-up CPU allowance of a running bot (``resources.start_cpus``; rules in
:mod:`clawpen.spec.startcpu`).

A watcher of each run (:func:`clawpen.daemon.watchers.for_instance`): right after the start it
raises the bot's cgroup CPU quota to the allowance, waits for the first passing health check
(``inst.health`` turns ``healthy``) or for ``start_for``, then sets the quota back to ``cpus`` and
records a ``start-cpus`` event saying when and why. A daemon that adopts a running bot whose
allowance is over puts the quota back at once (a daemon that died during the allowance leaves
it raised), without an event.
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
    def plan(self) -> Plan: ...


POLL = 0.1  # seconds between looks at the health status while the allowance lasts
KIND = "start-cpus"


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
    if svc.clock() >= deadline:  # adopted after its allowance: make sure it is over
        with contextlib.suppress(SandboxError):
            await loop.run_in_executor(None, cgroup.set_cpu_quota, steady, period)
        return None
    try:
        await loop.run_in_executor(None, cgroup.set_cpu_quota, round(grant.cpus * period), period)
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
