"""Records and ports shared by the link manager (:mod:`clawpen.net.links`) and the gateway.

Topology: the daemon keeps one *gateway network namespace* of its own. Each bot instance with
egress gets its own network namespace and a veth pair: ``eth0`` in the bot's namespace
(``bot_addr``, default route via ``gw_addr``) and ``cb<N>`` in the gateway namespace
(``gw_addr``). A bot with ``network.ipv6`` also has an IPv6 pair on the same link,
``bot_addr6``/``gw_addr6``, derived from the IPv4 pair (:func:`ipv6_of`: the IPv4 address in
the last 32 bits of :data:`LINK6_PREFIX`, so a /30 block is a /126 block); every other link has
no IPv6 at all. The gateway's listening sockets live in the gateway namespace; its upstream
connections are made from the host namespace. Nothing routes between the namespaces: the only
way out for a bot is through the gateway process, and nftables in the gateway namespace drops
every packet of a bot that is not for the gateway's ports.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple, Protocol

from clawpen.spec.quotas import DEFAULT_NET_LIMITS, NetLimits

# Ports of the gateway on ``gw_addr`` of every link (inside the gateway namespace).
PROXY_PORT = 3128  # explicit HTTP proxy (CONNECT and plain HTTP); bots get HTTP(S)_PROXY
TRANSPARENT_PORT = 3129  # every other TCP connection of a bot is redirected here by nftables
DNS_PORT = 53  # UDP and TCP
GATEWAY_PORTS = (PROXY_PORT, TRANSPARENT_PORT, DNS_PORT)
LINK_PREFIX = "cb"  # name prefix of the gateway-side veth ends
# IPv6 of the links of ``network.ipv6`` bots: a unique local /48 of clawpen's own ("clawp" as
# the global ID), subnet 0; a link's IPv4 address fills the last 32 bits (fd63:6c61:7770::a.b.c.d).
LINK6_PREFIX = ipaddress.IPv6Network("fd63:6c61:7770::/96")
LINK6_EXTRA_BITS = 128 - 32  # an IPv4 /30 block is an IPv6 /126 block


def ipv6_of(addr4: str) -> str:
    """The IPv6 address of a link end whose IPv4 address is ``addr4`` (compressed text)."""
    v4 = ipaddress.IPv4Address(addr4)
    return str(LINK6_PREFIX.network_address + int(v4))


def canonical(addr: str) -> str:
    """``addr`` in the one text form the gateway uses as a key (IPv6 compressed, lower case);
    anything that is not an address comes back as it is."""
    try:
        return str(ipaddress.ip_address(addr))
    except ValueError:
        return addr


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
    bot_addr6: str = ""  # set for a ``network.ipv6`` bot (see :func:`ipv6_of`), else empty
    gw_addr6: str = ""

    def is_gateway(self, addr: str) -> bool:
        """True if ``addr`` is this link's gateway end (either family)."""
        return addr == self.gw_addr or (bool(self.gw_addr6) and addr == self.gw_addr6)


class LinkRegistry(Protocol):
    """Who is behind a source address (the gateway asks on every connection and query): a
    link's ``bot_addr`` or, for an IPv6 link, its ``bot_addr6``."""

    def by_source(self, addr: str) -> BotLink | None: ...
