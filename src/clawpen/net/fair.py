"""Per-bot connection quotas of the gateway: one bot at its limits never holds up another.

Per bot instance (``(bot, replica)``), with that bot's own limits (a
:class:`~clawpen.spec.quotas.NetLimits`, from ``[bots.NAME.network.limits]``; defaults below):

* new connections per second: a token bucket (``connections_per_s``, :data:`RATE`; at once
  ``connection_burst``, :data:`BURST`);
* open connections (accepted, not yet closed): at most ``connections`` (:data:`MAX_CONNECTIONS`);
  each one holds a relay thread, so this also bounds the bot's threads in the gateway;
* unfinished heads (accepted, request head / ClientHello not complete yet): at most
  ``pending_heads`` (:data:`MAX_HEADS`).

:meth:`Fairness.admit` takes the limits of the connection's bot link; a bot whose link comes
back with other limits (its spec changed) is held to the new ones from its next connection on.
A connection over a limit is refused at once (the caller resets it, or answers ``429`` on the
proxy port) and counted: :meth:`Fairness.counts` gives, per bot, ``refused_rate``,
``refused_busy``, ``refused_heads`` and ``head_timeouts``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from clawpen.spec.quotas import DEFAULT_NET_LIMITS, NetLimits

MAX_CONNECTIONS = DEFAULT_NET_LIMITS.connections  # open connections per bot instance
MAX_HEADS = DEFAULT_NET_LIMITS.pending_heads  # unfinished heads per bot instance
RATE = DEFAULT_NET_LIMITS.connections_per_s  # new connections per second (token bucket refill)
BURST = DEFAULT_NET_LIMITS.connection_burst  # bucket size

Key = tuple[str, int]


class _Bot:
    __slots__ = ("active", "heads", "last", "limits", "tokens")

    def __init__(self, limits: NetLimits, now: float) -> None:
        self.limits = limits
        self.tokens = float(limits.connection_burst)
        self.last = now
        self.active = 0
        self.heads = 0

    def refill(self, now: float) -> None:
        lim = self.limits
        self.tokens = min(
            float(lim.connection_burst), self.tokens + (now - self.last) * lim.connections_per_s
        )
        self.last = now


COUNTERS = ("refused_rate", "refused_busy", "refused_heads", "head_timeouts")


class Fairness:
    """Thread-safe per-bot admission: :meth:`admit` a connection, :meth:`take_head` while its
    head is read, :meth:`head_done` / :meth:`conn_done` when each ends. ``limits``: for
    connections admitted without limits of their own."""

    def __init__(self, limits: NetLimits | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits or DEFAULT_NET_LIMITS
        self.clock = clock
        self._lock = threading.Lock()
        self._bots: dict[Key, _Bot] = {}
        self._counts: dict[str, dict[str, int]] = {}

    def _count(self, key: Key, what: str) -> None:
        per = self._counts.setdefault(key[0], dict.fromkeys(COUNTERS, 0))
        per[what] += 1

    def admit(self, key: Key, limits: NetLimits | None = None) -> str | None:
        """Take a place for a new connection of ``key`` under ``limits`` (its link's; None: the
        default ones); None if admitted, else the refusal reason."""
        lim = limits or self.limits
        now = self.clock()
        with self._lock:
            bot = self._bots.get(key)
            if bot is None:
                bot = self._bots[key] = _Bot(lim, now)
            else:
                bot.refill(now)
                if bot.limits is not lim and bot.limits != lim:  # the link came back with new limits
                    bot.limits = lim
                    bot.tokens = min(bot.tokens, float(lim.connection_burst))
            if bot.tokens < 1.0:
                self._count(key, "refused_rate")
                return f"more than {lim.connections_per_s:g} new connections per second"
            if bot.active >= lim.connections:
                self._count(key, "refused_busy")
                return f"more than {lim.connections} open connections"
            bot.tokens -= 1.0
            bot.active += 1
            return None

    def take_head(self, key: Key) -> str | None:
        """Count an unfinished head of an admitted connection; None if within the limit."""
        with self._lock:
            bot = self._bots[key]
            if bot.heads >= bot.limits.pending_heads:
                self._count(key, "refused_heads")
                return f"more than {bot.limits.pending_heads} unfinished request heads"
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
            bot.refill(self.clock())
            if not bot.active and not bot.heads and bot.tokens >= bot.limits.connection_burst:
                del self._bots[key]  # nothing to remember: the bucket is full again

    def active(self, key: Key) -> tuple[int, int]:
        """(open connections, unfinished heads) of one bot instance."""
        with self._lock:
            bot = self._bots.get(key)
            return (bot.active, bot.heads) if bot is not None else (0, 0)

    def counts(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {bot: dict(c) for bot, c in self._counts.items()}
