"""``clawpen net suggest``: an egress allowlist from what a bot reached or tried to reach.

Pure: the input is the connection log summed per (host, port, verdict)
(:func:`clawpen.net.connlog.reached`). The rules:

* every host name or IP address becomes ``host:port`` (IPv6 in brackets), one entry per port;
* a name seen only in a denied DNS query (port 0) becomes ``name:443`` (the port is a guess,
  marked ``dns_only``) unless a connection to it was seen on some port;
* :data:`WILDCARD_MIN` or more different subdomains of one domain on one port become
  ``*.domain:port`` (the domain itself stays its own entry: the wildcard does not cover it);
  never below a public suffix or a top-level domain (:func:`clawpen.spec.egress.parse_rule`);
* entries are sorted by host (names by their labels right to left, so a domain's names stay
  together; then IP addresses) and port;
  each carries how many connections (or queries) it stands for.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable
from typing import Any

from clawpen.spec import egress
from clawpen.spec.rules import RuleViolation

WILDCARD_MIN = 4  # different subdomains of one domain (one port) that make a wildcard
DNS_PORT_GUESS = 443


@dataclasses.dataclass(frozen=True)
class Suggestion:
    rule: str  # the allowlist entry, e.g. "api.openai.com:443" or "*.telegram.org:443"
    count: int  # connections (and queries) it stands for
    denied: int  # how many of them were denied
    hosts: tuple[str, ...]  # the names a wildcard stands for (the host itself otherwise)
    dns_only: bool = False  # seen only in DNS queries: the port is a guess

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"hosts": list(self.hosts)}


def domain_of(name: str) -> str:
    """The registrable domain of ``name``: its last two labels, or three below a public suffix."""
    labels = name.split(".")
    if len(labels) >= 3 and ".".join(labels[-2:]) in egress.PUBLIC_SUFFIXES:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def _entry(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _sort_key(s: Suggestion) -> tuple[int, tuple[str, ...], int, int, str]:
    """Names first, by their labels right to left; then addresses, in order; then the port."""
    host, _, port = s.rule.rpartition(":")
    bare = host.strip("[]")
    if egress.is_ip(bare):
        ip = ipaddress.ip_address(bare)
        return 1, (), ip.version * 2**128 + int(ip), int(port), s.rule
    return 0, tuple(reversed(bare.split("."))), 0, int(port), s.rule


def suggest(rows: Iterable[tuple[str, int, str, int]], wildcard_min: int = WILDCARD_MIN) -> list[Suggestion]:
    """The allowlist for ``rows`` of (host, port, verdict, count); see the module docstring."""
    seen: dict[tuple[str, int], list[int]] = {}  # (host, port) -> [count, denied]
    for host, port, verdict, count in rows:
        try:
            name = egress.normalize_host(host)
        except ValueError:
            continue  # "-", or a name no rule can hold
        if not 0 <= port <= 65535:
            continue
        totals = seen.setdefault((name, port), [0, 0])
        totals[0] += count
        totals[1] += count if verdict != "allowed" else 0
    with_port = {h for h, p in seen if p}
    dns_only = set()
    for (host, port), totals in list(seen.items()):
        if port == 0:
            del seen[(host, port)]
            if host not in with_port and not egress.is_ip(host):
                guess = seen.setdefault((host, DNS_PORT_GUESS), [0, 0])
                guess[0] += totals[0]
                guess[1] += totals[1]
                dns_only.add(host)
    out: list[Suggestion] = []
    groups: dict[tuple[str, int], list[str]] = {}
    for host, port in seen:
        if not egress.is_ip(host) and host.count(".") >= 2:
            groups.setdefault((domain_of(host), port), []).append(host)
    wild: set[tuple[str, int]] = set()
    for (domain, port), names in groups.items():
        below = sorted(n for n in names if n.endswith("." + domain))
        if len(below) < wildcard_min:
            continue
        rule = f"*.{domain}:{port}"
        try:
            egress.parse_rule(rule)
        except RuleViolation:
            continue
        wild.update((n, port) for n in below)
        count = sum(seen[(n, port)][0] for n in below)
        denied = sum(seen[(n, port)][1] for n in below)
        out.append(Suggestion(rule, count, denied, tuple(below)))
    for (host, port), (count, denied) in seen.items():
        if (host, port) not in wild:
            guessed = host in dns_only and port == DNS_PORT_GUESS
            out.append(Suggestion(_entry(host, port), count, denied, (host,), guessed))
    return sorted(out, key=_sort_key)


def render_toml(suggestions: list[Suggestion]) -> str:
    """The ``egress = [...]`` line for ``clawpen.toml``, a count on every entry as a comment."""
    if not suggestions:
        return "egress = []  # nothing reached or denied in the log\n"
    width = max(len(s.rule) for s in suggestions) + 4  # quotes, comma, a space
    lines = ["egress = ["]
    for s in suggestions:
        what = f"{s.count} connection{'s' if s.count != 1 else ''}"
        if s.denied:
            what += f", {s.denied} denied"
        if s.dns_only:
            what = f"{s.count} DNS quer{'ies' if s.count != 1 else 'y'} only (port guessed)"
        if s.rule.startswith("*."):
            what += (
                f"; {len(s.hosts)} subdomains: {', '.join(s.hosts[:5])}{', ...' if len(s.hosts) > 5 else ''}"
            )
        lines.append(f"    {(chr(34) + s.rule + chr(34) + ','):<{width}} # {what}")
    lines.append("]")
    return "\n".join(lines) + "\n"
