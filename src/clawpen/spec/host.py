"""``[host]``: policy for the host itself (its firewall, its hardening).

``[host.firewall]`` is the classic security-group policy for a bot host, applied by
``clawpen firewall apply`` as one nftables table of clawpen's own (see :mod:`clawpen.net.firewall`)::

    [host.firewall]
    ssh_from  = ["203.0.113.7/32", "2001:db8:1::/48"]   # SSH only from the admin addresses
    allow_tcp = [8080]                                   # service ports open to everyone
    allow     = [{ port = 9100, proto = "tcp", from = ["10.0.0.0/8"] }]
    # icmp_echo = false, inbound = "drop", outbound = "allow" are the defaults

``[host.harden]`` is the host part of the deployment practice, applied by
``clawpen host harden apply`` (see :mod:`clawpen.harden`)::

    [host.harden]
    operator      = "clawpen-op"                       # the operator user (password login locked)
    operator_keys = ["ssh-ed25519 AAAAC3Nza... admin@laptop"]
    auto_updates  = "off"                              # "off" | "security" | "all"
    # ssh_password_login = false, ssh_root_login = false, firewall = true, snapshots = true
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import struct
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


_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,30}$")
_RESERVED_USERS = frozenset({"root", "daemon", "bin", "sys", "sync", "nobody", "sshd", "_apt", "man"})
KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
_KEY_COMMENT = re.compile(r"^[\x20-\x7e]{0,200}$")
_COMMAND_PATH = re.compile(r"^/[A-Za-z0-9_./+-]{1,255}$")


def check_public_key(raw: str) -> str:
    """``raw`` as one OpenSSH public key line (``TYPE BASE64 [comment]``, no options), or
    RuleViolation: an unknown type, bad base64, or a blob that names another type."""
    hint = 'paste one line of the key\'s .pub file, e.g. "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... you@host"'
    fields = raw.strip().split(None, 2)
    if len(fields) < 2 or "\n" in raw or "\r" in raw:
        raise RuleViolation(f"operator_keys entry {raw[:40]!r} is not an SSH public key line", hint)
    kind, blob = fields[0], fields[1]
    if kind not in KEY_TYPES:
        raise RuleViolation(
            f"operator_keys entry has the unknown key type {kind[:40]!r}",
            f"use one of {', '.join(sorted(KEY_TYPES))} (no authorized_keys options before it)",
        )
    try:
        data = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise RuleViolation(f"operator_keys entry {kind} has a key that is not valid base64", hint) from None
    if len(data) < 4 or len(data) < 4 + struct.unpack(">I", data[:4])[0]:
        raise RuleViolation(f"operator_keys entry {kind} has a truncated key", hint)
    named = data[4 : 4 + struct.unpack(">I", data[:4])[0]]
    if named != kind.encode():
        raise RuleViolation(
            f"operator_keys entry says {kind} but its key is a {named[:40].decode(errors='replace')!r} key",
            hint,
        )
    if len(fields) == 3 and not _KEY_COMMENT.fullmatch(fields[2]):
        raise RuleViolation("operator_keys entry has a comment with control characters", hint)
    return " ".join(fields)


class Harden(BaseModel):
    """The host part of the deployment practice: an operator user whose only elevated right is
    restarting bots, SSH password and root login off, the automatic-update policy, the host
    firewall and the snapshot schedule. ``clawpen host harden plan`` shows every change first."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    operator: str = Field(
        "clawpen-op",
        description="the operator user: created with its password locked (SSH keys only); its only "
        "elevated right is `clawpen restart` through sudo",
    )
    operator_keys: list[str] = Field(
        default_factory=list,
        description="the operator's SSH public keys (lines of .pub files), written to its authorized_keys",
    )
    ssh_password_login: bool = Field(False, description="allow SSH password login (the practice: false)")
    ssh_root_login: bool = Field(False, description="allow SSH login as root (the practice: false)")
    auto_updates: Literal["off", "security", "all"] = Field(
        "off",
        description='unattended upgrades: "off" (the practice: updates are applied by hand), '
        '"security" (Debian security updates only) or "all"',
    )
    firewall: bool = Field(True, description="apply [host.firewall] too (on this host only, not on --root)")
    snapshots: bool = Field(True, description="check that a snapshot schedule is configured (report only)")
    clawpen_path: str | None = Field(
        None,
        description="the clawpen command the operator may run with sudo (default: the installed entry "
        "point, /usr/local/bin/clawpen for another root)",
    )

    @field_validator("operator")
    @classmethod
    def _operator(cls, v: str) -> str:
        if not _USER.fullmatch(v):
            raise RuleViolation(
                f"operator {v!r} is not a valid user name",
                "use 1 to 31 lower-case letters, digits, _ and -, starting with a letter or _, "
                'e.g. "clawpen-op"',
            )
        if v in _RESERVED_USERS:
            raise RuleViolation(
                f"operator {v!r} is a system account", 'name a dedicated user, e.g. "clawpen-op"'
            )
        return v

    @field_validator("operator_keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        return [check_public_key(raw) for raw in v]

    @field_validator("clawpen_path")
    @classmethod
    def _clawpen_path(cls, v: str | None) -> str | None:
        if v is not None and (not _COMMAND_PATH.fullmatch(v) or "/../" in f"{v}/" or "/./" in f"{v}/"):
            raise RuleViolation(
                f"clawpen_path {v!r} is not an absolute path without spaces or special characters",
                'write the path of the clawpen command, e.g. "/usr/local/bin/clawpen"',
            )
        return v


class HostConfig(BaseModel):
    """Host-level policy; ``[host.firewall]`` is applied by ``clawpen firewall apply``,
    ``[host.harden]`` by ``clawpen host harden apply``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    firewall: Firewall | None = Field(
        None, description="the host's inbound firewall (applied with `clawpen firewall apply`)"
    )
    harden: Harden | None = Field(
        None, description="the host's hardening (applied with `clawpen host harden apply`)"
    )
