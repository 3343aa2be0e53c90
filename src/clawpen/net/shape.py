"""Bandwidth shaping of a bot's link: a token bucket (tc ``tbf``) on both veth ends.

``network.bandwidth`` (bits/s) and ``network.burst`` (bytes) become one ``tbf`` root qdisc on
the gateway end ``cb<N>`` (what the bot receives) and one on the bot end ``eth0`` (what the bot
sends), set over netlink with pyroute2. The bot cannot change the qdisc on its own ``eth0``:
it has no CAP_NET_ADMIN over its network namespace.

The bucket must hold at least one full segment: veth hands over GSO packets of up to 64 KiB,
so the burst is never below :data:`MIN_BURST`; by default it is what the rate sends in
:data:`DEFAULT_BURST_S` (at least ``MIN_BURST``). ``latency`` bounds the queue.
"""

from __future__ import annotations

from typing import Any

MIN_BURST = 64 << 10
DEFAULT_BURST_S = 0.02
LATENCY = "100ms"


def burst_for(rate_bits: int, burst: int | None = None) -> int:
    """The bucket size in bytes for ``rate_bits`` bits/s (``burst`` if given, raised to the minimum)."""
    if burst is None:
        burst = int(rate_bits / 8 * DEFAULT_BURST_S)
    return max(burst, MIN_BURST)


def set_rate(ipr: Any, index: int, rate_bits: int, burst: int | None = None) -> None:
    """Put (or replace) a ``tbf`` root qdisc on interface ``index`` of ``ipr``'s namespace."""
    ipr.tc(
        "replace",
        "tbf",
        index=index,
        handle="1:",
        rate=max(1, rate_bits // 8),  # pyroute2 takes bytes per second
        burst=burst_for(rate_bits, burst),
        latency=LATENCY,
    )


def clear(ipr: Any, index: int) -> None:
    """Remove the root qdisc of ``index`` (back to the default); no error if there is none."""
    try:
        ipr.tc("del", index=index, handle="1:")
    except Exception as exc:  # pyroute2's NetlinkError: ENOENT / EINVAL when there is nothing
        if getattr(exc, "code", None) not in (2, 22):
            raise
