"""The record of the connection log (:mod:`clawpen.net.connlog`), on its own so that the log
and its budgets (:mod:`clawpen.net.connbudget`) both use it without importing each other."""

from __future__ import annotations

from typing import NamedTuple


class ConnRecord(NamedTuple):
    """One connection (or DNS query) as the gateway saw it."""

    at: float  # when it started (epoch seconds)
    bot: str
    replica: int
    kind: str  # "proxy" (plain HTTP), "connect", "transparent", "dns"
    host: str
    port: int
    verdict: str  # "allowed" or "denied"
    reason: str  # why denied, or the rule / "open" that allowed it
    up: int = 0  # bytes from the bot
    down: int = 0  # bytes to the bot
    duration: float = 0.0
    times: int = 1  # how many connections or queries this row stands for (column "count")
