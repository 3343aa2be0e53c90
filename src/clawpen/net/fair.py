"""Per-bot connection quotas of the gateway: one bot at its limits never holds up another.

Per bot instance (``(bot, replica)``):

* new connections per second: a token bucket (:data:`RATE` per second, :data:`BURST` at once);
* open connections (accepted, not yet closed): at most :data:`MAX_CONNECTIONS`;
* unfinished heads (accepted, request head / ClientHello not complete yet): at most
  :data:`MAX_HEADS`.

A connection over a limit is refused at once (the caller resets it, or answers ``429`` on the
proxy port) and counted: :meth:`Fairness.counts` gives, per bot, ``refused_rate``,
``refused_busy``, ``refused_heads`` and ``head_timeouts``. The limits are module constants for
now (spec knobs are a later step of issue 13).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_CONNECTIONS = 1024  # open connections per bot instance
MAX_HEADS = 16  # unfinished heads per bot instance
RATE = 50.0  # new connections per second per bot instance (token bucket refill)
BURST = 100.0  # bucket size

Key = tuple[str, int]


@dataclass(frozen=True)
class Limits:
    max_connections: int = MAX_CONNECTIONS
    max_heads: int = MAX_HEADS
    rate: float = RATE
    burst: float = BURST


class _Bot:
    __slots__ = ("active", "heads", "last", "tokens")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.last = now
        self.active = 0
        self.heads = 0


COUNTERS = ("refused_rate", "refused_busy", "refused_heads", "head_timeouts")


class Fairness:
    """Thread-safe per-bot admission: :meth:`admit` a connection, :meth:`take_head` while its
    head is read, :meth:`head_done` / :meth:`conn_done` when each ends."""

    def __init__(self, limits: Limits | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits or Limits()
        self.clock = clock
        self._lock = threading.Lock()
        self._bots: dict[Key, _Bot] = {}
        self._counts: dict[str, dict[str, int]] = {}

    def _count(self, key: Key, what: str) -> None:
        per = self._counts.setdefault(key[0], dict.fromkeys(COUNTERS, 0))
        per[what] += 1

    def admit(self, key: Key) -> str | None:
        """Take a place for a new connection; None if admitted, else the refusal reason."""
        lim = self.limits
        now = self.clock()
        with self._lock:
            bot = self._bots.get(key)
            if bot is None:
                bot = self._bots[key] = _Bot(lim.burst, now)
            bot.tokens = min(lim.burst, bot.tokens + (now - bot.last) * lim.rate)
            bot.last = now
            if bot.tokens < 1.0:
                self._count(key, "refused_rate")
                return f"more than {lim.rate:g} new connections per second"
            if bot.active >= lim.max_connections:
                self._count(key, "refused_busy")
                return f"more than {lim.max_connections} open connections"
            bot.tokens -= 1.0
            bot.active += 1
            return None

    def take_head(self, key: Key) -> str | None:
        """Count an unfinished head of an admitted connection; None if within the limit."""
        with self._lock:
            bot = self._bots[key]
            if bot.heads >= self.limits.max_heads:
                self._count(key, "refused_heads")
                return f"more than {self.limits.max_heads} unfinished request heads"
            bot.heads += 1
            return None

    def head_done(self, key: Key, *, timed_out: bool = False) -> None:
        with self._lock:
            bot = self._bots.get(key)
            if bot is not None and bot.heads > 0:
                bot.heads -= 1
            if timed_out:
                self._count(key, "head_timeouts")

    def conn_done(self, key: Key) -> None:
        with self._lock:
            bot = self._bots.get(key)
            if bot is None:
                return
            bot.active = max(0, bot.active - 1)
            now = self.clock()
            bot.tokens = min(self.limits.burst, bot.tokens + (now - bot.last) * self.limits.rate)
            bot.last = now
            if not bot.active and not bot.heads and bot.tokens >= self.limits.burst:
                del self._bots[key]  # nothing to remember: the bucket is full again

    def active(self, key: Key) -> tuple[int, int]:
        """(open connections, unfinished heads) of one bot instance."""
        with self._lock:
            bot = self._bots.get(key)
            return (bot.active, bot.heads) if bot is not None else (0, 0)

    def counts(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {bot: dict(c) for bot, c in self._counts.items()}
