"""``[gateway]``: settings of the clawpen egress gateway shared by every bot.

The gateway's proxy and DNS listen on the link addresses carved out of ``subnet``, so the subnet
must be a private IPv4 range (the same rule :class:`clawpen.net.links.LinkManager` applies when
it allocates): a public range would put listeners on public addresses.
"""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field, field_validator

from clawpen.spec.rules import RuleViolation

MAX_UPSTREAMS = 8


def check_subnet(subnet: str) -> str:
    """A private IPv4 network of at least 8 addresses (each bot instance takes a /30)."""
    hint = 'write a private IPv4 range, e.g. "10.213.0.0/16" (each bot instance takes a /30)'
    try:
        net = ipaddress.ip_network(subnet.strip(), strict=True)
    except ValueError as err:
        raise RuleViolation(f"gateway subnet {subnet!r} is not a network: {err}", hint) from None
    if not isinstance(net, ipaddress.IPv4Network) or not net.is_private or net.prefixlen > 29:
        raise RuleViolation(
            f"gateway subnet {subnet} is not a private IPv4 range of 8 addresses or more", hint
        )
    this_network = ipaddress.IPv4Network("0.0.0.0/8")
    if net.is_loopback or net.is_link_local or net.is_reserved or net.overlaps(this_network):
        raise RuleViolation(f"gateway subnet {subnet} is a special-purpose range", hint)
    return subnet


def check_upstream(raw: str) -> str:
    """``1.1.1.1``, ``1.1.1.1:5353`` or ``[2606:4700::1111]:53``: an IP address and a port 1-65535."""
    hint = 'write an IP address with an optional port, e.g. "1.1.1.1", "9.9.9.9:53" or "[2606:4700::1111]:53"'
    text = raw.strip()
    port = "53"
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise RuleViolation(f"dns_upstream entry {raw!r} is not ADDRESS[:PORT]", hint)
        port = rest[1:] or port
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host = text
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise RuleViolation(f"dns_upstream entry {raw!r}: {host!r} is not an IP address", hint) from None
    if not port.isdigit() or len(port) > 5 or not 1 <= int(port) <= 65535:
        raise RuleViolation(f"dns_upstream entry {raw!r}: port {port!r} is not 1-65535", hint)
    return raw


class GatewayConfig(BaseModel):
    """Where bots' links get their addresses and where the gateway resolves names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    subnet: str = Field("10.213.0.0/16", description="private IPv4 range for bot links (a /30 per bot)")
    dns_upstream: list[str] = Field(
        default_factory=list,
        max_length=MAX_UPSTREAMS,
        description="upstream resolvers (default: the host's /etc/resolv.conf)",
    )

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, v: str) -> str:
        return check_subnet(v)

    @field_validator("dns_upstream")
    @classmethod
    def _upstream(cls, v: list[str]) -> list[str]:
        for raw in v:
            check_upstream(raw)
        return v
