"""Records and ports shared by the link manager (:mod:`clawpen.net.links`) and the gateway.

Topology: the daemon keeps one *gateway network namespace* of its own. Each bot instance with
egress gets its own network namespace and a veth pair: ``eth0`` in the bot's namespace
(``bot_addr``, default route via ``gw_addr``) and ``cb<N>`` in the gateway namespace
(``gw_addr``). The gateway's listening sockets live in the gateway namespace; its upstream
connections are made from the host namespace. Nothing routes between the namespaces: the only
way out for a bot is through the gateway process, and nftables in the gateway namespace drops
every packet of a bot that is not for the gateway's ports.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from clawpen.plan.model import DEFAULT_NET_LIMITS, NetLimits

# Ports of the gateway on ``gw_addr`` of every link (inside the gateway namespace).
PROXY_PORT = 3128  # explicit HTTP proxy (CONNECT and plain HTTP); bots get HTTP(S)_PROXY
TRANSPARENT_PORT = 3129  # every other TCP connection of a bot is redirected here by nftables
DNS_PORT = 53  # UDP and TCP
GATEWAY_PORTS = (PROXY_PORT, TRANSPARENT_PORT, DNS_PORT)
LINK_PREFIX = "cb"  # name prefix of the gateway-side veth ends


class BotLink(NamedTuple):
    """One bot instance's link to the gateway and the policy the gateway applies to it
    (``limits``: its quotas; a link registered again with other limits gets the new ones)."""

    bot: str
    replica: int
    bot_addr: str
    gw_addr: str
    egress: tuple[str, ...] | str  # allowlist rules ("host:port"), or "open"
    allow_private: tuple[str, ...] = ()
    limits: NetLimits = DEFAULT_NET_LIMITS


class LinkRegistry(Protocol):
    """Who is behind a source address (the gateway asks on every connection and query)."""

    def by_source(self, addr: str) -> BotLink | None: ...
