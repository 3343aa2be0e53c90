"""A bot's quotas at the egress gateway as a plain record (no pydantic: the plan, the policy and
the gateway carry it; :mod:`clawpen.spec.netlimits` parses ``[bots.NAME.network.limits]``)."""

from __future__ import annotations

from typing import NamedTuple


class NetLimits(NamedTuple):
    """Per-bot-instance quotas of the gateway (``[bots.NAME.network.limits]``; see
    :mod:`clawpen.net.fair` and :mod:`clawpen.net.dnsfair`). The defaults are the gateway's own."""

    connections: int = 1024  # open connections through the gateway (each holds a relay thread)
    connections_per_s: float = 50.0  # new connections per second, sustained (token bucket)
    connection_burst: int = 100  # ... and at once
    pending_heads: int = 16  # connections whose request head / ClientHello is not complete yet
    dns_per_s: float = 50.0  # DNS queries per second, sustained (token bucket)
    dns_burst: int = 200  # ... and at once
    dns_queue: int = 64  # DNS queries waiting for a worker
    dns_tcp_connections: int = 8  # open DNS-over-TCP connections


DEFAULT_NET_LIMITS = NetLimits()
