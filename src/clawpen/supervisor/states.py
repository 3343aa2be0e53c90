"""The state machine of one bot instance (one replica of one bot).

States (a process exists only in the four *active* ones, see :func:`is_active`):

    created        declared, never started by this daemon yet
    starting       the sandbox is being built and the command launched
    running        the process is up (and healthy, if it has a health check)
    unhealthy      the process is up but its health check has failed ``retries`` times
    stopping       asked to stop: SIGTERM sent, waiting up to ``stop_grace`` before SIGKILL
    stopped        no process, and the supervisor will not start one on its own
                   (stopped by a person, or exited under a policy that does not restart)
    exited         the process has just ended by itself (any exit code or signal)
    oom            the process has just been killed by the OOM killer (memory limit)
    backoff        waiting out a restart delay; a timer will move it to ``starting``
    crashloop      restarted more than ``max_restarts`` times within ``window``: given up,
                   until a person starts it again
    failed         the sandbox could not be set up (bad mount, missing command, ...); retrying
                   will not help until the cause is fixed
    scheduled_off  no process because the time is outside the bot's ``active`` window; the
                   window's next opening starts it
    standby        no process because another host is the primary of this HA bot (``ha``);
                   becoming primary starts it

``exited`` and ``oom`` are short-lived: the caller asks :class:`clawpen.supervisor.backoff.
RestartTracker` what to do and moves on to ``starting`` (immediate restart), ``backoff``,
``crashloop``, ``stopped`` or ``scheduled_off`` (the window closed while it was down).

Why the table looks the way it does:

- Nothing jumps from an active state to a resting one: a process is always stopped through
  ``stopping`` (or ends by itself through ``exited``/``oom``), so "no process" and "resting
  state" stay the same thing. Closing a schedule window is ``running → stopping →
  scheduled_off``; restarting an unhealthy bot is ``unhealthy → stopping → exited → starting``.
- ``stopping`` may end in ``exited``/``oom`` when the process dies on its own (or of memory)
  before the stop completes; the caller then decides with the tracker as for any exit.
- ``crashloop`` and ``failed`` need a person: only ``starting`` (a manual start) or
  ``stopped`` leave them, and a schedule cannot silently turn them into ``scheduled_off``.
- A resting bot (``created``, ``stopped``, ``backoff``, ``exited``, ``oom``) may become
  ``scheduled_off`` when its window closes, so the next opening starts it again.
- Self-transitions are not allowed: every :class:`Transition` is a real change.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import NamedTuple

from clawpen.errors import ClawpenError


class BotState(StrEnum):
    """Where one bot instance is in its life; the values are what ``clawpen ps`` shows."""

    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    UNHEALTHY = "unhealthy"
    STOPPING = "stopping"
    STOPPED = "stopped"
    EXITED = "exited"
    OOM = "oom"
    BACKOFF = "backoff"
    CRASHLOOP = "crashloop"
    FAILED = "failed"
    SCHEDULED_OFF = "scheduled_off"
    STANDBY = "standby"


_S = BotState

TRANSITIONS: Mapping[BotState, frozenset[BotState]] = MappingProxyType(
    {
        _S.CREATED: frozenset({_S.STARTING, _S.STOPPED, _S.SCHEDULED_OFF, _S.STANDBY}),
        _S.STARTING: frozenset({_S.RUNNING, _S.FAILED, _S.EXITED, _S.OOM, _S.STOPPING}),
        _S.RUNNING: frozenset({_S.UNHEALTHY, _S.STOPPING, _S.EXITED, _S.OOM}),
        _S.UNHEALTHY: frozenset({_S.RUNNING, _S.STOPPING, _S.EXITED, _S.OOM}),
        _S.STOPPING: frozenset({_S.STOPPED, _S.SCHEDULED_OFF, _S.STANDBY, _S.EXITED, _S.OOM}),
        _S.STOPPED: frozenset({_S.STARTING, _S.SCHEDULED_OFF, _S.STANDBY}),
        # EXITED -> FAILED: a run that ended before its bot ran (a VM whose guest could not boot)
        _S.EXITED: frozenset(
            {_S.STARTING, _S.BACKOFF, _S.STOPPED, _S.CRASHLOOP, _S.SCHEDULED_OFF, _S.FAILED, _S.STANDBY}
        ),
        _S.OOM: frozenset({_S.STARTING, _S.BACKOFF, _S.STOPPED, _S.CRASHLOOP, _S.SCHEDULED_OFF, _S.STANDBY}),
        _S.BACKOFF: frozenset({_S.STARTING, _S.STOPPED, _S.SCHEDULED_OFF, _S.STANDBY}),
        _S.CRASHLOOP: frozenset({_S.STARTING, _S.STOPPED}),
        _S.FAILED: frozenset({_S.STARTING, _S.STOPPED}),
        _S.SCHEDULED_OFF: frozenset({_S.STARTING, _S.STOPPED}),
        _S.STANDBY: frozenset({_S.STARTING, _S.STOPPED}),
    }
)
"""Every allowed move: ``to in TRANSITIONS[from]``. Covers every :class:`BotState`."""

ACTIVE_STATES: frozenset[BotState] = frozenset({_S.STARTING, _S.RUNNING, _S.UNHEALTHY, _S.STOPPING})
"""States in which a process (or a sandbox being built) exists."""

NEEDS_PERSON: frozenset[BotState] = frozenset({_S.STOPPED, _S.CRASHLOOP, _S.FAILED})
"""Resting states the supervisor never leaves on its own (no timer, no schedule, no policy)."""


def is_active(state: BotState) -> bool:
    """Whether a process (or a sandbox being set up) should exist in ``state``."""
    return state in ACTIVE_STATES


def is_terminal_for_policy(state: BotState) -> bool:
    """Whether only a person can move a bot out of ``state`` (stopped, crashloop, failed).

    ``backoff`` waits on a timer, ``scheduled_off`` on the schedule and ``exited``/``oom`` on
    the restart decision, so none of them is terminal.
    """
    return state in NEEDS_PERSON


def allowed_from(state: BotState) -> frozenset[BotState]:
    """The states ``state`` may move to."""
    return TRANSITIONS[state]


def _label(bot: str, replica: int) -> str:
    return bot if replica == 0 else f"{bot}[{replica}]"


class IllegalTransition(ClawpenError):
    """A move the transition table forbids; a supervisor bug or a command that does not apply."""

    def __init__(self, bot: str, replica: int, from_state: BotState, to_state: BotState) -> None:
        allowed = ", ".join(sorted(TRANSITIONS[from_state])) or "nothing"
        super().__init__(
            f"bot {_label(bot, replica)} cannot go from {from_state} to {to_state}; "
            f"allowed from {from_state}: {allowed}",
            where=f"bot {_label(bot, replica)}",
            hint=f"check the bot's state with `clawpen ps` first; it is {from_state}",
        )
        self.bot = bot
        self.replica = replica
        self.from_state = from_state
        self.to_state = to_state


class Transition(NamedTuple):
    """One recorded state change; the caller stores these as events."""

    bot: str
    replica: int
    from_state: BotState
    to_state: BotState
    reason: str
    at: float
    """Epoch seconds, as given by the caller."""


class BotStateMachine:
    """The current state of one bot instance; every change goes through :meth:`transition`.

    The machine keeps no history: :meth:`transition` returns the :class:`Transition` for the
    caller to record. Restore a persisted bot by passing its last ``state``.
    """

    __slots__ = ("_since", "_state", "bot", "replica")

    def __init__(
        self, bot: str, replica: int = 0, state: BotState = BotState.CREATED, since: float | None = None
    ) -> None:
        if replica < 0:
            raise ValueError(f"replica index must be >= 0, got {replica}")
        self.bot = bot
        self.replica = replica
        self._state = BotState(state)
        self._since = since

    @property
    def state(self) -> BotState:
        """The current state."""
        return self._state

    @property
    def since(self) -> float | None:
        """When the current state was entered (epoch seconds), if known."""
        return self._since

    @property
    def active(self) -> bool:
        """Whether a process should exist now."""
        return is_active(self._state)

    def can(self, to: BotState) -> bool:
        """Whether :meth:`transition` to ``to`` would be allowed now."""
        return to in TRANSITIONS[self._state]

    def transition(self, to: BotState, reason: str, now: float) -> Transition:
        """Move to ``to``, or raise :class:`IllegalTransition` and stay where it is."""
        to = BotState(to)
        if to not in TRANSITIONS[self._state]:
            raise IllegalTransition(self.bot, self.replica, self._state, to)
        change = Transition(self.bot, self.replica, self._state, to, reason, now)
        self._state = to
        self._since = now
        return change

    def __repr__(self) -> str:
        return f"BotStateMachine({self.bot!r}, replica={self.replica}, state={self._state.value!r})"
