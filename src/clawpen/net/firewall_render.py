"""The pure half of the host firewall: ``[host.firewall]`` -> the nft table text, and diffs.

:func:`render` writes the table exactly as ``nft list table`` prints it (sets sorted and merged,
single addresses without /32), so :func:`diff` against the live listing shows "no change" once
applied; :func:`normalise` only drops handles, counter values and layout.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from clawpen.spec.host import Firewall, IPNetwork, parse_network

FAMILY = "inet"
TABLE = "clawpen_host"
QUALIFIED = f"{FAMILY} {TABLE}"

# ICMPv6 that IPv6 needs to work at all (errors, router and neighbour discovery), in type order
# (nft prints a set's elements sorted by value).
_ICMPV6_NEEDED = (
    "destination-unreachable",
    "packet-too-big",
    "time-exceeded",
    "parameter-problem",
    "nd-router-advert",
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
)


def _addr(net: IPNetwork) -> str:
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def _saddr_sets(raw: list[str]) -> list[tuple[str, str]]:
    """``[("ip", "{ a, b }"), ("ip6", "c")]``: the sources per family, merged, sorted, in nft's form."""
    nets = [parse_network(r, field="from") for r in raw]
    out: list[tuple[str, str]] = []
    for version, keyword in ((4, "ip"), (6, "ip6")):
        family = [n for n in nets if n.version == version]
        if not family:
            continue
        merged = sorted(ipaddress.collapse_addresses(family))  # type: ignore[type-var]
        items = [_addr(n) for n in merged]
        out.append((keyword, items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"))
    return out


def _service(proto: str, ports: tuple[int, int], sources: list[str], comment: str) -> list[str]:
    port = str(ports[0]) if ports[0] == ports[1] else f"{ports[0]}-{ports[1]}"
    match = f"{proto} dport {port}"
    tail = f'counter accept comment "{comment}"'
    if not sources:
        return [f"{match} {tail}"]
    return [f"{match} {kw} saddr {addrs} {tail}" for kw, addrs in _saddr_sets(sources)]


def rules(fw: Firewall) -> list[str]:
    """The input chain's rules, in order, as nft prints them."""
    out = [
        'iif "lo" accept comment "loopback"',
        'ct state established,related accept comment "replies to connections of this host"',
        'ct state invalid drop comment "invalid packets"',
        "icmpv6 type { "
        + ", ".join(_ICMPV6_NEEDED)
        + ' } accept comment "IPv6 errors and neighbour discovery"',
        'ip6 saddr fe80::/10 udp dport 546 accept comment "DHCPv6 client"',
    ]
    if fw.ssh:
        out += _service("tcp", (fw.ssh_port, fw.ssh_port), fw.ssh_from, "ssh from ssh_from")
    for port in fw.allow_tcp:
        out += _service("tcp", (port, port), [], f"allow_tcp {port}")
    for rule in fw.allow:
        label = rule.name or f"allow {rule.port}/{rule.proto}"
        out += _service(rule.proto, rule.ports, rule.from_, label)
    if fw.icmp_echo:
        out.append('icmp type echo-request counter accept comment "icmp_echo"')
        out.append('icmpv6 type echo-request counter accept comment "icmp_echo"')
    if fw.inbound == "reject":
        out.append('meta l4proto tcp counter reject with tcp reset comment "other inbound: refused"')
        out.append('counter reject with icmpx admin-prohibited comment "other inbound: refused"')
    else:
        out.append('counter drop comment "other inbound: dropped"')
    return out


def render(fw: Firewall) -> str:
    """The table ``inet clawpen_host`` for ``fw``, in the form ``nft list table`` prints it."""
    body = "".join(f"\t\t{rule}\n" for rule in rules(fw))
    return (
        f"table {QUALIFIED} {{\n"
        "\tchain input {\n"
        "\t\ttype filter hook input priority filter; policy drop;\n"
        f"{body}"
        "\t}\n"
        "}\n"
    )


def load_script(table: str | None) -> str:
    """One nft transaction that replaces clawpen's table by ``table`` (None: removes it).

    ``table ... {}`` first makes the ``delete`` valid when the table does not exist yet."""
    script = f"table {QUALIFIED} {{}}\ndelete table {QUALIFIED}\n"
    return script + (table if table else "")


_COUNTER = re.compile(r"\bcounter packets \d+ bytes \d+")
_HANDLE = re.compile(r"\s*# handle \d+\s*$")


def normalise(text: str | None) -> list[str]:
    """Lines of a table without handles, counter values and layout differences."""
    if not text:
        return []
    lines: list[str] = []
    depth = 0
    for raw in text.splitlines():
        line = _COUNTER.sub("counter", _HANDLE.sub("", raw)).strip()
        if not line:
            continue
        if line.startswith("}"):
            depth = max(depth - 1, 0)
        lines.append("\t" * depth + line)
        if line.endswith("{"):
            depth += 1
    return lines


@dataclass(frozen=True)
class Diff:
    """What applying would change: ``changed`` and a unified diff (empty when unchanged)."""

    changed: bool
    live_present: bool
    text: str


def diff(live: str | None, wanted: str | None, labels: tuple[str, str] = ("live", "wanted")) -> Diff:
    """A unified diff from the live table (None: absent) to the wanted one."""
    old, new = normalise(live), normalise(wanted)
    lines = difflib.unified_diff(
        old,
        new,
        fromfile=f"{labels[0]}: table {QUALIFIED}" + ("" if live else " (absent)"),
        tofile=f"{labels[1]}: table {QUALIFIED}" + ("" if wanted else " (absent)"),
        lineterm="",
    )
    return Diff(changed=old != new, live_present=live is not None, text="\n".join(lines))


def counters(text: str | None) -> list[dict[str, Any]]:
    """Packet and byte counts per rule of a listed table, with each rule's comment."""
    out = []
    for raw in (text or "").splitlines():
        line = _HANDLE.sub("", raw)
        m = re.search(r"counter packets (\d+) bytes (\d+).*?(?:comment \"([^\"]*)\")?\s*$", line)
        if m:
            rule = _COUNTER.sub("counter", line.strip())
            out.append(
                {"rule": rule, "comment": m.group(3), "packets": int(m.group(1)), "bytes": int(m.group(2))}
            )
    return out
