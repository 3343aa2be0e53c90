"""An HA bot's instance and its failover agent (:mod:`clawpen.ha.agent`): the instance starts
its bot only as primary, with the term's fencing token, and stops it when the host stops being
primary. A bot without ``ha`` passes through every function here unchanged."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol

from clawpen.daemon.watchers import Outcome, Verdict
from clawpen.ha.agent import Agent
from clawpen.ha.model import Role
from clawpen.ha.registry import HaRegistry
from clawpen.spec.models import Bot
from clawpen.supervisor.backoff import RestartTracker
from clawpen.supervisor.states import BotState, BotStateMachine


class _Services(Protocol):
    @property
    def ha(self) -> HaRegistry | None: ...


class Instance(Protocol):
    """What this module uses of a bot replica (``daemon/runtime.py`` ``Instance``)."""

    name: str
    bot: Bot
    machine: BotStateMachine
    tracker: RestartTracker
    _wake: asyncio.Event

    @property
    def svc(self) -> _Services: ...
    def transition(self, state: BotState, reason: str) -> None: ...
    async def _sleep(self, seconds: float) -> bool: ...


TOKEN_FILE = "CLAWPEN_FENCING_TOKEN"  # noqa: S105 - a file name, not a secret; /run/secrets/CLAWPEN_FENCING_TOKEN in the sandbox
NO_AGENT_RETRY = 5.0


def agent_of(inst: Instance) -> Agent | None:
    registry = inst.svc.ha
    return None if inst.bot.ha is None or registry is None else registry.agent(inst.name)


async def until_primary(inst: Instance) -> bool:
    """Before a start: False when the bot may start (no ``ha``, or this host is primary);
    otherwise rest in ``standby`` until that changes (or a command arrives) and return True so
    the loop looks again."""
    if inst.bot.ha is None:
        return False
    agent = agent_of(inst)
    if agent is not None and await agent.confirm():
        if inst.machine.state is BotState.STANDBY:  # a new term here: a new restart streak
            inst.tracker.new_streak()
        return False
    if agent is not None:
        agent.bot_stopped()
        reason = agent.reason
    else:
        registry = inst.svc.ha
        reason = registry.why_none(inst.name, list(inst.bot.ha.hosts)) if registry else "standby: no cluster"
    if inst.machine.state in (BotState.CRASHLOOP, BotState.FAILED):  # a person's start: through stopped
        inst.transition(BotState.STOPPED, "start requested")
    if inst.machine.state is not BotState.STANDBY:
        inst.transition(BotState.STANDBY, reason)
    if agent is None:
        await inst._sleep(NO_AGENT_RETRY)
        return True
    waiter = asyncio.get_running_loop().create_task(agent.wait_change())
    woken = asyncio.get_running_loop().create_task(inst._wake.wait())
    try:
        await asyncio.wait({waiter, woken}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        woken.cancel()
    inst._wake.clear()
    return True


async def demoted(agent: Agent) -> Verdict:
    """A watcher: ends when this host stops being the bot's primary."""
    while agent.role is Role.PRIMARY:
        await agent.wait_change()
    return Outcome.DEMOTED, agent.reason


def watchers(inst: Instance) -> list[Any]:
    agent = agent_of(inst)
    return [] if agent is None else [demoted(agent)]


def env(inst: Instance) -> tuple[tuple[str, str], ...]:
    agent = agent_of(inst)
    return () if agent is None else tuple(agent.env().items())


def files(inst: Instance) -> dict[str, bytes]:
    """Files for /run/secrets (the fencing token): never passed to the log redactor."""
    agent = agent_of(inst)
    return {} if agent is None else {TOKEN_FILE: f"{agent.token or 0}\n".encode()}


def urgent(inst: Instance) -> bool:
    """Stop without the grace period: the lease is being lost."""
    agent = agent_of(inst)
    return agent is not None and agent.urgent


def bot_down(inst: Instance) -> None:
    agent = agent_of(inst)
    if agent is not None:
        with contextlib.suppress(Exception):
            agent.bot_stopped()
