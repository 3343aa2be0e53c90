"""The addresses of a bot's ``health`` check (``http`` URL, ``tcp`` host:port), parsed: pure,
so the spec checks them when it loads and :mod:`clawpen.daemon.health` probes what they name."""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import urlsplit


class HttpTarget(NamedTuple):
    """A parsed ``http`` check URL."""

    host: str
    port: int
    path: str
    host_header: str


def parse_http(url: str) -> HttpTarget:
    """Split an ``http://host[:port]/path`` check URL; ``ValueError`` with a reason otherwise."""
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise ValueError(f"health URL {url!r} holds a space or a control character")
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"health URL {url!r} must start with http:// (https is not supported)")
    if not parts.hostname:
        raise ValueError(f"health URL {url!r} names no host")
    port = parts.port or 80  # .port raises ValueError for a bad one
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return HttpTarget(parts.hostname, port, path, parts.netloc.rpartition("@")[2])


def parse_tcp(addr: str) -> tuple[str, int]:
    """Split ``host:port`` (``[::1]:port`` for IPv6); ``ValueError`` with a reason otherwise."""
    host, sep, port_text = addr.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"health address {addr!r} must be host:port, e.g. 127.0.0.1:5000")
    return host, int(port_text)
