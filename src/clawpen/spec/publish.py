"""Published ports: ``publish = ["[HOST_IP:]HOST_PORT:BOT_PORT"]`` (the parsing and checks).

Connections to ``HOST_IP:HOST_PORT`` are relayed to ``127.0.0.1:BOT_PORT`` *inside the bot's
network namespace* by a relay process of the instance's own (:mod:`clawpen.net.portrelay`,
driven by :mod:`clawpen.net.relayctl`), not by the daemon, so a published port keeps answering
while the daemon is down. The upstream socket is created by a thread that joined the bot's
namespace for that moment (a socket keeps the namespace it was made in), so a bot that binds
only its loopback (OpenClaw does) is reachable, and nothing is routed between the namespaces.

``expose``: a non-loopback ``HOST_IP`` is refused by the spec unless ``expose = true``;
``from = [CIDRs]`` then limits who may connect (:func:`source_allowed`): other sources are
closed at once and reported as ``publish`` events.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import NamedTuple

from clawpen.spec.rules import RuleViolation


class Publish(NamedTuple):
    """One parsed ``publish`` entry."""

    host_ip: str
    host_port: int
    bot_port: int
    loopback: bool


def _port(text: str, what: str, raw: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise RuleViolation(
            f"publish {raw!r}: {what} {text!r} is not a port number",
            'use "[HOST_IP:]HOST_PORT:BOT_PORT" with ports 1-65535, e.g. "127.0.0.1:8080:8080"',
        )
    return int(text)


def parse_publish(raw: str) -> Publish:
    """``"8080:80"``, ``"127.0.0.1:8080:80"``, ``"[::1]:8080:80"`` -> :class:`Publish`.

    The host address defaults to 127.0.0.1; raises :class:`RuleViolation` with a fix.
    """
    text = raw.strip()
    host = "127.0.0.1"
    if text.startswith("["):
        end = text.find("]:")
        if end < 0:
            raise RuleViolation(f"publish {raw!r}: unclosed [IPv6] address", 'write "[::1]:8080:80"')
        host, text = text[1:end], text[end + 2 :]
    parts = text.split(":")
    if len(parts) == 3 and host == "127.0.0.1" and not raw.strip().startswith("["):
        host, parts = parts[0], parts[1:]
    if len(parts) != 2:
        raise RuleViolation(
            f"publish {raw!r} is not HOST_PORT:BOT_PORT or HOST_IP:HOST_PORT:BOT_PORT",
            'e.g. "127.0.0.1:18789:18789" (the host address defaults to 127.0.0.1)',
        )
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise RuleViolation(
            f"publish {raw!r}: {host!r} is not an IP address",
            "give the host address as an IP (127.0.0.1, or the host's own address with expose = true)",
        ) from None
    return Publish(
        str(addr),
        _port(parts[0], "host port", raw),
        _port(parts[1], "bot port", raw),
        addr.is_loopback,
    )


def duplicate_ports(published: Iterable[tuple[str, str]]) -> str | None:
    """Given (bot, raw publish entry) pairs, describe the first host port used twice, or None.

    Two entries clash when they use the same host port on the same address, or when either
    binds the wildcard address (0.0.0.0 / ::).
    """
    seen: dict[int, list[tuple[str, str]]] = {}
    for bot, raw in published:
        p = parse_publish(raw)
        for other_bot, other_ip in seen.get(p.host_port, []):
            wild = {"0.0.0.0", "::"}  # noqa: S104 - compared, not bound
            if other_ip == p.host_ip or other_ip in wild or p.host_ip in wild:
                return f"host port {p.host_port} is published by both {other_bot} and {bot}"
        seen.setdefault(p.host_port, []).append((bot, p.host_ip))
    return None


def source_allowed(addr: str, allowed: tuple[str, ...]) -> bool:
    """True when ``addr`` is in one of the CIDRs (an empty list allows everyone)."""
    if not allowed:
        return True
    ip = ipaddress.ip_address(addr.split("%", maxsplit=1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(c, strict=False) for c in allowed)
