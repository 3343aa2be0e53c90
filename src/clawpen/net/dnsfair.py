"""Per-bot fairness for the gateway's DNS server: a token bucket and a bounded queue per source,
served round-robin, so one bot's flood never delays another bot's answer.

The UDP read loop only classifies a datagram by its source and calls :meth:`FairQueue.offer`
(a dict lookup, a bucket update, an append: it never blocks). A query over the source's rate, or
one that finds the source's queue (or all queues together) full, is dropped and counted. Workers
take from the sources in turn, and at most ``in_flight`` queries of one source are worked on at
once, so a backlog (or a slow upstream) of one bot holds at most that many workers.

A bot's rate, burst and queue come from its link's limits (``dns_per_s``, ``dns_burst``,
``dns_queue`` of a :class:`~clawpen.spec.quotas.NetLimits`, from ``[bots.NAME.network.limits]``),
passed with each query; a source offered without limits gets the queue's own (the defaults
below). A source whose limits change is held to the new ones from its next query on.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from clawpen.spec.quotas import DEFAULT_NET_LIMITS, NetLimits

RATE = DEFAULT_NET_LIMITS.dns_per_s  # queries per second a bot may ask, sustained
BURST = float(DEFAULT_NET_LIMITS.dns_burst)  # ... and at once
QUEUE_PER_SOURCE = DEFAULT_NET_LIMITS.dns_queue  # queries of one bot waiting for a worker
QUEUE_TOTAL = 1024  # queries of every bot together waiting for a worker
IN_FLIGHT = 2  # workers one bot's queries may hold at once
TCP_PER_SOURCE = DEFAULT_NET_LIMITS.dns_tcp_connections  # open DNS-over-TCP connections of one bot

T = TypeVar("T")


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; :meth:`take` spends one."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now

    def take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def retune(self, rate: float, burst: float, now: float) -> None:
        """New ``rate`` and ``burst`` from ``now`` on (what was saved up stays, up to ``burst``)."""
        self._refill(now)
        self.rate, self.burst = rate, burst
        self.tokens = min(self.tokens, burst)


class _Source(Generic[T]):
    __slots__ = ("bucket", "in_flight", "items", "limits", "per_source", "ready")

    def __init__(self, bucket: TokenBucket, per_source: int, limits: NetLimits | None) -> None:
        self.bucket = bucket
        self.per_source = per_source
        self.limits = limits  # what they were made from (None: the queue's defaults)
        self.items: deque[T] = deque()
        self.in_flight = 0
        self.ready = False  # in the round-robin ring


class FairQueue(Generic[T]):
    """Items of many sources, rate-limited and bounded per source, taken round-robin.

    Sources are keys the caller picks (a bot instance, or one shared key for unknown senders), so
    the number of sources is bounded by the number of links. ``rate``, ``burst`` and
    ``per_source`` are the limits of a source offered without limits of its own. ``dropped``
    counts per source and reason ("rate", "queue") what :meth:`offer` refused.
    """

    def __init__(
        self,
        *,
        rate: float = RATE,
        burst: float = BURST,
        per_source: int = QUEUE_PER_SOURCE,
        total: int = QUEUE_TOTAL,
        in_flight: int = IN_FLIGHT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.per_source = per_source
        self.total = total
        self.in_flight = in_flight
        self.clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._sources: dict[str, _Source[T]] = {}
        self._ring: deque[str] = deque()  # sources with work a worker may take now
        self._queued = 0
        self._closed = False
        self.dropped: dict[str, dict[str, int]] = {}

    def offer(self, source: str, item: T, limits: NetLimits | None = None) -> str | None:
        """Queue ``item`` under ``source``'s ``limits`` (None: the defaults); None, or why it was
        dropped ("rate" or "queue"). Never blocks long."""
        with self._cond:
            src = self._source(source, limits)
            if not src.bucket.take(self.clock()):
                why = "rate"
            elif len(src.items) >= src.per_source or self._queued >= self.total:
                why = "queue"
            else:
                src.items.append(item)
                self._queued += 1
                if not src.ready and src.in_flight < self.in_flight:
                    src.ready = True
                    self._ring.append(source)
                    self._cond.notify()
                return None
            self._count(source, why)
            return why

    def allow(self, source: str, limits: NetLimits | None = None) -> bool:
        """Spend one of ``source``'s tokens without queueing (a query answered in place, e.g.
        over TCP); False (counted as "rate") when it has none."""
        with self._cond:
            src = self._source(source, limits)
            if src.bucket.take(self.clock()):
                return True
            self._count(source, "rate")
            return False

    def _terms(self, limits: NetLimits | None) -> tuple[float, float, int]:
        if limits is None:
            return self.rate, self.burst, self.per_source
        return limits.dns_per_s, float(limits.dns_burst), limits.dns_queue

    def _source(self, source: str, limits: NetLimits | None) -> _Source[T]:
        src = self._sources.get(source)
        if src is None:
            rate, burst, per_source = self._terms(limits)
            bucket = TokenBucket(rate, burst, self.clock())
            src = self._sources[source] = _Source(bucket, per_source, limits)
        elif src.limits is not limits:
            if src.limits != limits:  # the source's link came back with other limits
                rate, burst, src.per_source = self._terms(limits)
                src.bucket.retune(rate, burst, self.clock())
            src.limits = limits
        return src

    def _count(self, source: str, why: str) -> None:
        counts = self.dropped.setdefault(source, {"rate": 0, "queue": 0})
        counts[why] += 1

    def take(self, timeout: float | None = None) -> tuple[str, T] | None:
        """The next item (round-robin over sources); None when closed or after ``timeout``.
        Call :meth:`done` with its source when the work on it is finished."""
        with self._cond:
            while not self._ring or self._closed:
                if self._closed or not self._cond.wait(timeout):
                    return None
            source = self._ring.popleft()
            src = self._sources[source]
            item = src.items.popleft()
            self._queued -= 1
            src.in_flight += 1
            if src.items and src.in_flight < self.in_flight:
                self._ring.append(source)  # back of the line: the others go first
            else:
                src.ready = False
            return source, item

    def done(self, source: str) -> None:
        with self._cond:
            src = self._sources.get(source)
            if src is None:
                return
            src.in_flight -= 1
            if src.items and not src.ready:
                src.ready = True
                self._ring.append(source)
                self._cond.notify()

    def forget_idle(self, keep: Callable[[str], bool]) -> None:
        """Drop the state of sources ``keep`` rejects that have nothing queued or in flight."""
        with self._cond:
            for source in [s for s, v in self._sources.items() if not v.items and not v.in_flight]:
                if not keep(source):
                    del self._sources[source]
                    self.dropped.pop(source, None)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def queued(self) -> int:
        with self._cond:
            return self._queued

    def take_dropped(self) -> dict[str, dict[str, int]]:
        """The drop counts since the last call (and reset them)."""
        with self._cond:
            out, self.dropped = self.dropped, {}
            return out
