"""Restart decisions: whether, when, and when to give up (crashloop).

Policies (``[bot.restart] policy``):

    no              never restart
    on-failure      restart after a non-zero exit, a signal, an OOM kill, a timeout or the disk cap
    always          restart after any exit, unless a person stopped it
    unless-stopped  like ``always``, and a person's stop also holds across daemon restarts: the
                    tracker exposes :attr:`RestartTracker.manually_stopped` (and :meth:`snapshot`)
                    for the caller to persist, and :meth:`RestartTracker.start_on_boot` reads it

A run whose sandbox could not be set up (reason ``setup-failed``) is never restarted: the next
state is ``failed``. A stop by a person or by the schedule is never restarted either.

Delays: the first restart of a streak is immediate (a crashed bot comes back at once); then
``backoff_initial``, 2x, 4x, ... capped at ``backoff_max``, with **equal jitter** by default:
the delay is drawn uniformly from [d/2, d] for the nominal delay d, so bots that fail together
(a shared API down) spread out, yet none retries sooner than half its nominal delay (which
"full jitter", uniform in [0, d], would allow). ``jitter="full"`` and ``jitter="none"`` exist
too. The random source is injected (``random.Random``) so tests are reproducible.

Streak reset: once a run has been stable for ``max(window, 2 * backoff_max)`` seconds (measured
from its start, or from the first healthy report after an unhealthy one), the next exit starts
a new streak with an immediate restart.

Crashloop: every automatic restart is counted at the moment it is decided; when ``max_restarts``
restarts already happened within the last ``window`` seconds, the next exit gives up (state
``crashloop``) instead of restarting. ``max_restarts = 0`` therefore never restarts automatically.

All times are epoch seconds from the caller, so they survive a daemon restart: the daemon saves
:meth:`RestartTracker.snapshot` (``TrackerState.to_json``) with the instance and passes it back
as ``state=``, and the crashloop window and backoff streak carry on where they were.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

from clawpen.errors import ConfigError
from clawpen.supervisor.states import BotState

PolicyName = Literal["no", "on-failure", "always", "unless-stopped"]
Jitter = Literal["equal", "full", "none"]
POLICIES: tuple[PolicyName, ...] = ("no", "on-failure", "always", "unless-stopped")
_MAX_DOUBLINGS = 60
TRACKER_FORMAT = 1  # the version of TrackerState.to_json's format


class RestartSpec(Protocol):
    """What :meth:`RestartPolicy.from_spec` reads (``clawpen.spec.models.Restart`` fits)."""

    @property
    def policy(self) -> str: ...
    @property
    def backoff_initial(self) -> float: ...
    @property
    def backoff_max(self) -> float: ...
    @property
    def max_restarts(self) -> int: ...
    @property
    def window(self) -> float: ...
    @property
    def stop_grace(self) -> float: ...


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """The restart fields of a bot's spec, in seconds, checked."""

    policy: PolicyName = "on-failure"
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    max_restarts: int = 5
    window: float = 300.0
    stop_grace: float = 10.0

    def __post_init__(self) -> None:
        problem = None
        if self.policy not in POLICIES:
            problem = f"unknown restart policy {self.policy!r}"
        elif not 0 < self.backoff_initial <= self.backoff_max:
            problem = "backoff_initial must be > 0 and <= backoff_max"
        elif self.max_restarts < 0:
            problem = "max_restarts must be >= 0"
        elif self.window <= 0 or self.stop_grace < 0:
            problem = "window must be > 0 and stop_grace >= 0"
        if problem:
            raise ConfigError(
                problem,
                where="restart",
                hint='write e.g. restart = { policy = "on-failure", backoff_initial = "1s", '
                'backoff_max = "60s", max_restarts = 5, window = "5m" }',
            )

    @classmethod
    def from_spec(cls, spec: RestartSpec) -> RestartPolicy:
        """Build from a ``Restart`` model (or anything with the same fields)."""
        return cls(
            _policy_name(spec.policy),
            float(spec.backoff_initial),
            float(spec.backoff_max),
            int(spec.max_restarts),
            float(spec.window),
            float(spec.stop_grace),
        )

    @property
    def stable_after(self) -> float:
        """Seconds of stable running after which the backoff streak resets."""
        return max(self.window, 2 * self.backoff_max)


def _policy_name(text: str) -> PolicyName:
    for name in POLICIES:
        if name == text:
            return name
    raise ConfigError(
        f"unknown restart policy {text!r}",
        where="restart.policy",
        hint="use one of: " + ", ".join(POLICIES),
    )


class Decision(NamedTuple):
    """What to do after an exit."""

    restart: bool
    delay: float
    """Seconds to wait before starting again (0 when not restarting)."""
    crashloop: bool
    why: str
    """One sentence for the event log and ``clawpen ps``."""
    next_state: BotState
    """Where the bot goes from ``exited``/``oom``: starting (delay 0), backoff, stopped,
    crashloop or scheduled_off; ``failed`` for a setup failure (reached from ``starting``)."""
    attempt: int = 0
    """Which restart of the current streak this is (1 = the first, immediate one)."""


class TrackerState(NamedTuple):
    """Everything a :class:`RestartTracker` knows, for the caller to persist."""

    attempt: int = 0
    restarts: tuple[float, ...] = ()
    manually_stopped: bool = False
    started_at: float | None = None
    stable_since: float | None = None

    def to_json(self) -> str:
        """The state as JSON (with a format version), for the instance row and its record."""
        return json.dumps({"v": TRACKER_FORMAT, **self._asdict(), "restarts": list(self.restarts)})

    @classmethod
    def from_json(cls, text: str | None) -> TrackerState | None:
        """The state saved by :meth:`to_json`; None for nothing saved, a newer format or garbage
        (the tracker then starts afresh, as it did before the state was saved)."""
        if not text:
            return None
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("v") != TRACKER_FORMAT:
                return None
            return cls(
                int(data["attempt"]),
                tuple(float(t) for t in data["restarts"]),
                bool(data["manually_stopped"]),
                _opt_float(data.get("started_at")),
                _opt_float(data.get("stable_since")),
            )
        except (ValueError, TypeError, KeyError):
            return None


def _opt_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _describe(exit_code: int, reason: str) -> str:
    if reason == "exited":
        return f"exited with code {exit_code}"
    if reason == "signaled":
        return f"was killed by a signal (exit {exit_code})"
    return {
        "oom": "was killed by the OOM killer",
        "timeout": "hit its timeout",
        "disk": "went over its disk cap",
    }.get(reason, f"ended ({reason}, exit {exit_code})")


class RestartTracker:
    """Restart bookkeeping for one bot instance: feed it starts, health and exits."""

    def __init__(
        self,
        policy: RestartPolicy,
        rng: random.Random | None = None,
        *,
        jitter: Jitter = "equal",
        state: TrackerState | None = None,
    ) -> None:
        self.policy = policy
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - not for secrets
        self._jitter = jitter
        state = state or TrackerState()
        self._attempt = state.attempt
        self._restarts: list[float] = list(state.restarts)
        self._manually_stopped = state.manually_stopped
        self._started_at = state.started_at
        self._stable_since = state.stable_since

    @property
    def manually_stopped(self) -> bool:
        """Whether the last stop was a person's (persist it for ``unless-stopped``)."""
        return self._manually_stopped

    @property
    def attempt(self) -> int:
        """Restarts decided in the current streak."""
        return self._attempt

    def restarts_in_window(self, now: float) -> int:
        """Automatic restarts decided within the last ``window`` seconds."""
        return sum(1 for t in self._restarts if t > now - self.policy.window)

    def snapshot(self) -> TrackerState:
        """The tracker's state, to persist and pass back as ``state=`` after a daemon restart."""
        return TrackerState(
            self._attempt, tuple(self._restarts), self._manually_stopped, self._started_at, self._stable_since
        )

    def start_on_boot(self, was_running: bool) -> bool:
        """Whether a freshly started daemon should start this bot.

        ``always`` starts it even after a person's stop (Docker's meaning), ``unless-stopped``
        unless a person stopped it, ``on-failure`` if it was running when the daemon went away
        and no person stopped it, ``no`` never.
        """
        kind = self.policy.policy
        if kind == "always":
            return True
        if kind == "unless-stopped":
            return not self._manually_stopped
        if kind == "on-failure":
            return was_running and not self._manually_stopped
        return False

    def record_started(self, now: float, *, manual: bool = False) -> None:
        """A process was started; ``manual`` (a person's start) also clears the streak and crashloop."""
        if manual:
            self._attempt = 0
            self._restarts.clear()
        self._manually_stopped = False
        self._started_at = now
        self._stable_since = now

    def record_healthy(self, now: float) -> None:
        """The health check passed; may end the streak if the run has been stable long enough."""
        if self._started_at is None:
            return
        if self._stable_since is None:
            self._stable_since = now
        self._maybe_reset(now)

    def record_unhealthy(self, now: float) -> None:
        """The health check failed: the run stops counting as stable until it is healthy again."""
        del now
        self._stable_since = None

    def new_streak(self) -> None:
        """Forget the restart streak and a crashloop without a person: an HA bot's new term on
        this host (its crashes in an earlier term do not delay this one's restarts)."""
        self._attempt = 0
        self._restarts.clear()

    def record_manual_stop(self, now: float) -> None:
        """A person stopped the bot (also when no process was running, e.g. during backoff)."""
        del now
        self._manually_stopped = True
        self._attempt = 0
        self._restarts.clear()
        self._started_at = self._stable_since = None

    def record_exit(
        self,
        exit_code: int,
        reason: str,
        now: float,
        manual_stop: bool = False,
        *,
        scheduled_stop: bool = False,
    ) -> Decision:
        """Decide what follows an exit. ``reason`` is ``RunResult.reason`` (exited, signaled, oom, ...).

        ``manual_stop``: a person asked for the stop; ``scheduled_stop``: the schedule did.
        """
        self._maybe_reset(now)
        self._started_at = self._stable_since = None
        what = _describe(exit_code, reason)
        if manual_stop:
            self.record_manual_stop(now)
            return Decision(False, 0.0, False, f"{what} after a stop was asked for", BotState.STOPPED)
        if scheduled_stop:
            self._attempt = 0
            self._restarts.clear()
            return Decision(
                False, 0.0, False, f"{what}; stopped outside its active window", BotState.SCHEDULED_OFF
            )
        if reason == "setup-failed":
            return Decision(
                False, 0.0, False, "the sandbox could not be set up; not restarting", BotState.FAILED
            )
        kind = self.policy.policy
        failed = exit_code != 0 or reason != "exited"
        if kind == "no" or (kind == "on-failure" and not failed):
            why = f"{what}; restart policy {kind!r} does not restart it"
            return Decision(False, 0.0, False, why, BotState.STOPPED)
        return self._restart(what, now)

    def _maybe_reset(self, now: float) -> None:
        if self._stable_since is not None and now - self._stable_since >= self.policy.stable_after:
            self._attempt = 0

    def _restart(self, what: str, now: float) -> Decision:
        p = self.policy
        self._restarts = [t for t in self._restarts if t > now - p.window]
        if len(self._restarts) >= p.max_restarts:
            why = (
                f"{what}; {len(self._restarts)} restarts within {p.window:g}s "
                f"(max_restarts = {p.max_restarts}): giving up until it is started again"
            )
            return Decision(False, 0.0, True, why, BotState.CRASHLOOP, self._attempt)
        delay = self.delay_for(self._attempt)
        self._attempt += 1
        self._restarts.append(now)
        if delay == 0:
            why = f"{what}; restarting now (restart {self._attempt})"
            return Decision(True, 0.0, False, why, BotState.STARTING, self._attempt)
        why = f"{what}; restarting in {delay:.1f}s (restart {self._attempt}, backoff)"
        return Decision(True, delay, False, why, BotState.BACKOFF, self._attempt)

    def nominal_delay(self, attempt: int) -> float:
        """The delay before restart number ``attempt + 1`` of a streak, before jitter."""
        if attempt <= 0:
            return 0.0
        p = self.policy
        return min(p.backoff_max, p.backoff_initial * 2.0 ** min(attempt - 1, _MAX_DOUBLINGS))

    def delay_for(self, attempt: int) -> float:
        """The jittered delay before restart number ``attempt + 1`` of a streak."""
        d = self.nominal_delay(attempt)
        if d == 0 or self._jitter == "none":
            return d
        if self._jitter == "full":
            return self._rng.uniform(0.0, d)
        return d / 2 + self._rng.uniform(0.0, d / 2)
