"""The contracts of the gateway's operations (see :mod:`clawpen.ops`); the handlers are
``GatewayComponent.op_<name>`` in net/component.py."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from clawpen.ops import Contract, Empty, Reply, Request

MAX_ROWS = 5000


class NetLogRequest(Request):
    bot: str | None = Field(default=None, max_length=200)
    since: float | None = Field(default=None, description="epoch seconds")
    denied: bool = False
    after_id: int = Field(default=0, ge=0)
    limit: int = Field(default=200, ge=1, le=1_000_000, description=f"rows (at most {MAX_ROWS} are sent)")


class ConnRow(Reply):
    id: int
    at: float
    bot: str
    replica: int
    kind: str
    host: str
    port: int
    verdict: str
    reason: str
    up: int
    down: int
    duration: float
    count: int


class BotTraffic(Reply):
    allowed: int = 0
    denied: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


class NetSuggestRequest(Request):
    bot: str = Field(min_length=1, max_length=200)
    since: float | None = Field(default=None, description="epoch seconds")


class SuggestRow(Reply):
    rule: str
    count: int
    denied: int
    hosts: list[str]
    dns_only: bool = False


NET_LOG = Contract("net_log", "viewer", NetLogRequest, list[ConnRow], "a bot's egress log (connections, DNS)")
NET_STATS = Contract("net_stats", "viewer", Empty, dict[str, BotTraffic], "egress counters per bot")

NET_SUGGEST = Contract(
    "net_suggest", "viewer", NetSuggestRequest, list[SuggestRow], "an egress allowlist from a bot's log"
)

CONTRACTS: tuple[Contract[Any], ...] = (NET_LOG, NET_STATS, NET_SUGGEST)
