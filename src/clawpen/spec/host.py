"""``[host]``: policy for the host itself (its firewall).

``[host.firewall]`` is the classic security-group policy for a bot host, applied by
``clawpen firewall apply`` as one nftables table of clawpen's own (see :mod:`clawpen.net.firewall`)::

    [host.firewall]
    ssh_from  = ["203.0.113.7/32", "2001:db8:1::/48"]   # SSH only from the admin addresses
    allow_tcp = [8080]                                   # service ports open to everyone
    allow     = [{ port = 9100, proto = "tcp", from = ["10.0.0.0/8"] }]
    # icmp_echo = false, inbound = "drop", outbound = "allow" are the defaults
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from clawpen.spec.rules import RuleViolation

_PORT_RANGE = re.compile(r"([0-9]{1,5})-([0-9]{1,5})")
_NAME = re.compile(r"^[A-Za-z0-9 _.:/+-]{1,64}$")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(raw: str, *, field: str) -> IPNetwork:
    """``raw`` as a network (a bare address is /32 or /128); refuses host bits set, with the fix."""
    try:
        net = ipaddress.ip_network(raw.strip(), strict=True)
    except ValueError as err:
        try:
            loose = ipaddress.ip_network(raw.strip(), strict=False)
        except ValueError:
            raise RuleViolation(
                f"{field} entry {raw!r} is not an address or network: {err}",
                'write an address or a network with its prefix, e.g. "203.0.113.7/32" or "10.0.0.0/8"',
            ) from None
        raise RuleViolation(
            f"{field} entry {raw!r} has host bits set after the /{loose.prefixlen}",
            f'write "{loose}" for the whole network, or "{raw.strip().split("/")[0]}" for one address',
        ) from None
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None:
        raise RuleViolation(
            f"{field} entry {raw!r} is an IPv4-mapped IPv6 network",
            "write the IPv4 address or network itself; IPv4 packets are matched as IPv4",
        )
    return net


def _networks(values: list[str], field: str) -> list[str]:
    for raw in values:
        parse_network(raw, field=field)
    return values


def parse_ports(value: int | str, *, field: str) -> tuple[int, int]:
    """A port (``443``) or an inclusive range (``"8000-8010"``) as ``(first, last)``."""
    if isinstance(value, bool):
        raise RuleViolation(f"{field} {value!r} is not a port", "write a number from 1 to 65535")
    if isinstance(value, int):
        first = last = value
    else:
        text = value.strip()
        match = _PORT_RANGE.fullmatch(text)
        if text.isascii() and text.isdigit():
            first = last = int(text)
        elif match:
            first, last = int(match.group(1)), int(match.group(2))
        else:
            raise RuleViolation(
                f"{field} {value!r} is not a port or port range",
                'write a number such as 443 or a range such as "8000-8010"',
            )
    for port in (first, last):
        if not 1 <= port <= 65535:
            raise RuleViolation(f"{field} {value!r}: port {port} is out of range", "ports go from 1 to 65535")
    if first > last:
        raise RuleViolation(f"{field} {value!r}: the range runs backwards", f'write "{last}-{first}"')
    return first, last


class AllowRule(BaseModel):
    """One inbound service: a port (or range), a protocol and, optionally, who may reach it."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    port: int | str = Field(description='a port, e.g. 443, or a range, e.g. "8000-8010"')
    proto: Literal["tcp", "udp"] = Field("tcp", description="tcp or udp")
    from_: list[str] = Field(
        default_factory=list,
        alias="from",
        description="source addresses or networks (IPv4 and IPv6); empty: from everywhere",
    )
    name: str | None = Field(None, description="a short label, shown as the rule's comment")

    @field_validator("port")
    @classmethod
    def _port(cls, v: int | str) -> int | str:
        parse_ports(v, field="port")
        return v

    @field_validator("from_")
    @classmethod
    def _from(cls, v: list[str]) -> list[str]:
        return _networks(v, "from")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME.fullmatch(v):
            raise RuleViolation(
                f"name {v!r} is not a short label",
                "use up to 64 letters, digits, spaces and _ . : / + -",
            )
        return v

    @property
    def ports(self) -> tuple[int, int]:
        return parse_ports(self.port, field="port")


class Firewall(BaseModel):
    """Inbound traffic denied except loopback, replies, SSH from ``ssh_from`` and the listed
    services; ICMP echo dropped unless enabled; outbound allowed. IPv4 and IPv6 alike."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ssh: bool = Field(True, description="open SSH to the ssh_from addresses (false: no SSH rule at all)")
    ssh_port: int = Field(22, description="the port sshd listens on")
    ssh_from: list[str] = Field(
        default_factory=list,
        validate_default=True,
        description='admin addresses or networks allowed to SSH, e.g. ["203.0.113.7/32"]',
    )
    allow_tcp: list[int] = Field(default_factory=list, description="TCP ports open to everyone, e.g. [8080]")
    allow: list[AllowRule] = Field(
        default_factory=list, description='services with a source list: [{port=443, proto="tcp", from=[...]}]'
    )
    icmp_echo: bool = Field(False, description="answer ping (IPv4 and IPv6); dropped by default")
    inbound: Literal["drop", "reject"] = Field(
        "drop", description="what happens to other inbound packets: drop (silent) or reject (refused)"
    )
    outbound: Literal["allow"] = Field("allow", description="outbound traffic: allowed")

    @field_validator("ssh_port")
    @classmethod
    def _ssh_port(cls, v: int) -> int:
        parse_ports(v, field="ssh_port")
        return v

    @field_validator("ssh_from")
    @classmethod
    def _ssh_from(cls, v: list[str], info: ValidationInfo) -> list[str]:
        ssh = info.data.get("ssh", True)
        if ssh and not v:
            raise RuleViolation(
                "ssh_from is empty: the firewall would drop SSH from everywhere and lock the admin out",
                'list the admin addresses, e.g. ssh_from = ["203.0.113.7/32"], or set ssh = false '
                "if this host is managed without SSH",
            )
        if not ssh and v:
            raise RuleViolation(
                "ssh_from is set but ssh = false, so it would have no effect",
                "remove ssh_from, or set ssh = true",
            )
        for raw in v:
            if parse_network(raw, field="ssh_from").prefixlen == 0:
                raise RuleViolation(
                    f"ssh_from entry {raw!r} opens SSH to every address",
                    "list the admin addresses or networks, e.g. your office's public address /32",
                )
        return v

    @field_validator("allow_tcp")
    @classmethod
    def _allow_tcp(cls, v: list[int], info: ValidationInfo) -> list[int]:
        for port in v:
            parse_ports(port, field="allow_tcp port")
        ssh_port = info.data.get("ssh_port")
        if info.data.get("ssh", True) and ssh_port in v:
            raise RuleViolation(
                f"allow_tcp opens the SSH port {ssh_port} to everyone, bypassing ssh_from",
                f"remove {ssh_port} from allow_tcp; SSH is reached from the ssh_from addresses",
            )
        return v

    @field_validator("allow")
    @classmethod
    def _allow(cls, v: list[AllowRule], info: ValidationInfo) -> list[AllowRule]:
        ssh_port = info.data.get("ssh_port")
        if not info.data.get("ssh", True) or ssh_port is None:
            return v
        for rule in v:
            first, last = rule.ports
            if rule.proto == "tcp" and first <= ssh_port <= last:
                raise RuleViolation(
                    f"allow entry {rule.port!r}/tcp covers the SSH port {ssh_port}, bypassing ssh_from",
                    "add the addresses to ssh_from instead of an allow entry for the SSH port",
                )
        return v


class HostConfig(BaseModel):
    """Host-level policy; ``[host.firewall]`` is applied by ``clawpen firewall apply``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    firewall: Firewall | None = Field(
        None, description="the host's inbound firewall (applied with `clawpen firewall apply`)"
    )
