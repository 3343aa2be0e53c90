"""``[bots.NAME.network.limits]``: a bot's quotas at the egress gateway (issue 13).

Every key is optional; an unset key keeps the gateway's default (:class:`NetLimits`), which is
what a bot without the table gets. Each bot instance (replica) has its own quotas::

    [bots.crawler.network.limits]
    connections = 256          # open connections through the gateway (default 1024)
    connections_per_s = 20     # new connections per second, sustained (default 50)
    connection_burst = 40      # ... and at once (default 100)
    pending_heads = 8          # connections still sending their request head / ClientHello (16)
    dns_per_s = 20             # DNS queries per second, sustained (default 50)
    dns_burst = 50             # ... and at once (default 200)
    dns_queue = 32             # DNS queries waiting for an answer (default 64)
    dns_tcp_connections = 4    # open DNS-over-TCP connections (default 8)

Over a limit, a connection is refused at once (``429`` on the proxy port, a reset on the
transparent one) and a DNS query is dropped; both are counted and logged in aggregate.

Only keys set to something other than the default are part of the stored policy (and so of the
policy hash): a spec without the table, or with defaults written out, hashes as it did before
the table existed, so an upgrade or such an edit restarts no bot.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
)

from clawpen.spec import rules
from clawpen.spec.quotas import DEFAULT_NET_LIMITS, NetLimits

D = DEFAULT_NET_LIMITS
MAX_DNS_QUEUE = 1024  # clawpen.net.dnsfair.QUEUE_TOTAL: all bots' queries waiting together
# (low, high, what a unit of it is) per key: the bounds and the words of the error
BOUNDS: dict[str, tuple[float, float, str]] = {
    "connections": (1, 65_536, "open connections"),
    "connections_per_s": (0.01, 10_000, "new connections per second"),
    "connection_burst": (1, 100_000, "new connections at once"),
    "pending_heads": (1, 4096, "unfinished request heads"),
    "dns_per_s": (0.01, 100_000, "DNS queries per second"),
    "dns_burst": (1, 100_000, "DNS queries at once"),
    "dns_queue": (1, MAX_DNS_QUEUE, "queued DNS queries"),
    "dns_tcp_connections": (1, 256, "DNS-over-TCP connections"),
}


def _field(name: str, description: str) -> Any:
    low, high, _ = BOUNDS[name]
    return Field(
        getattr(D, name),
        strict=True,  # `true` is not a count, "50" is not a number
        description=f"{description} (default {getattr(D, name):g}; {low:g} to {high:g})",
        json_schema_extra={"minimum": low, "maximum": high},  # checked by _bounds, with a hint
    )


class NetworkLimits(BaseModel):
    """A bot's quotas at the egress gateway, per instance; unset keys keep the defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connections: int = _field(
        "connections", "most open connections through the gateway (each holds a relay thread)"
    )
    connections_per_s: float = _field("connections_per_s", "new connections per second, sustained")
    connection_burst: int = _field("connection_burst", "new connections at once, above the rate")
    pending_heads: int = _field(
        "pending_heads", "connections whose request head or TLS ClientHello is not complete yet"
    )
    dns_per_s: float = _field("dns_per_s", "DNS queries per second, sustained (excess dropped)")
    dns_burst: int = _field("dns_burst", "DNS queries at once, above the rate")
    dns_queue: int = _field("dns_queue", "DNS queries waiting for a gateway worker")
    dns_tcp_connections: int = _field("dns_tcp_connections", "open DNS-over-TCP connections")

    @field_validator(*BOUNDS)
    @classmethod
    def _bounds(cls, v: float, info: ValidationInfo) -> float:
        name = str(info.field_name)
        low, high, what = BOUNDS[name]
        if not math.isfinite(v) or not low <= v <= high:
            raise rules.RuleViolation(
                f"{name} = {v:g} is out of range: {low:g} to {high:g} {what}",
                f"use a value from {low:g} to {high:g} (default {getattr(D, name):g}), or leave {name} out",
            )
        return v

    @model_serializer(mode="wrap")
    def _only_set(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Keys at their default are left out (the policy hash of a bot without them stays)."""
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if getattr(self, k) != getattr(D, k)}

    def record(self) -> NetLimits:
        return NetLimits(**{name: getattr(self, name) for name in NetLimits._fields})
