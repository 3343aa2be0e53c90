"""Learn mode (``network.egress = "learn"``) at the gateway.

* :class:`LearnStarts`: when each bot first started in learn mode, kept in
  ``<state>/net-learn.json`` so that the period survives a daemon restart. A bot registered with
  another egress loses its entry: switching back to learn later starts a new period. The link
  manager turns the policy's ``"learn:<seconds>"`` into the link's ``"learn-until:<epoch>"``.
* :class:`PolicyView`: the policy the gateway and its DNS apply to a link now (a learn link
  whose period is over allows nothing), calling ``on_ended`` once per bot when that happens.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clawpen.fsutil import write_atomic
from clawpen.net.types import BotLink
from clawpen.spec import egress, learnmode
from clawpen.spec.egress import EgressPolicy

if TYPE_CHECKING:
    from clawpen.spec.models import Network


class LearnStarts:
    """Bot name -> epoch seconds of its first start in learn mode (persisted)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()
        self._starts: dict[str, float] = self._load()

    def _load(self) -> dict[str, float]:
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            raw = json.loads(self.path.read_text())
            return {str(k): float(v) for k, v in raw.get("starts", {}).items()}
        return {}

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        body = json.dumps({"starts": self._starts}, indent=1, sort_keys=True)
        write_atomic(self.path, body.encode(), mode=0o600)

    def start_of(self, bot: str) -> float | None:
        with self._lock:
            return self._starts.get(bot)

    def link_egress(self, bot: str, value: tuple[str, ...] | str) -> tuple[str, ...] | str:
        """The link's egress for a policy's ``value``: learn mode gets its end, counted from the
        bot's first start in learn mode (noted now if there is none); any other value comes
        back as it is and ends the bot's learn record."""
        period = learnmode.learn_period(value)
        with self._lock:
            if period is None:
                if self._starts.pop(bot, None) is not None:
                    self._save()
                return value
            start = self._starts.get(bot)
            if start is None:
                start = self._starts[bot] = self.clock()
                self._save()
        return learnmode.learn_until_value(start + period)


class PolicyView:
    """What a link's egress allows at this moment (see the module docstring)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        on_ended: Callable[[BotLink], None] | None = None,
    ) -> None:
        self.clock = clock
        self.on_ended = on_ended
        self._lock = threading.Lock()
        self._ended: set[tuple[str, str]] = set()  # (bot, its link's egress) already announced

    def __call__(self, link: BotLink) -> EgressPolicy:
        policy = egress.policy_for(link.egress)
        if policy.until is None:
            return policy
        now_policy = egress.at(policy, self.clock())
        if now_policy is policy:
            return policy
        key = (link.bot, str(link.egress))
        with self._lock:
            first = key not in self._ended
            self._ended.add(key)
        if first and self.on_ended is not None:
            self.on_ended(link)
        return now_policy

    @staticmethod
    def allowed_by(policy: EgressPolicy) -> str:
        """The log's reason for a connection ``policy`` allows without a rule."""
        return learnmode.ALLOWED_BY_LEARN if policy.until is not None else "open"


def status_fields(bot: str, network: Network, starts: LearnStarts | None) -> dict[str, Any]:
    """For ``clawpen ps --json`` / status: ``egress_learn`` (the bot's egress is "learn") and,
    once its period started, ``learn_until`` (epoch seconds; None before the first start)."""
    if network.egress != learnmode.LEARN:
        return {"egress_learn": False}
    start = starts.start_of(bot) if starts is not None else None
    period = network.learn_for or learnmode.LEARN_DEFAULT
    return {"egress_learn": True, "learn_until": None if start is None else start + period}
