"""Upstream name resolution for the gateway and its DNS server, with a small TTL cache.

Queries are made fresh (a new message with only the name and type), never forwarded as the bot
sent them, so nothing but an allowlisted name ever leaves. Sockets are made by the calling
thread, so they live in that thread's network namespace (the gateway's upstream one).
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset

MIN_TTL = 5
MAX_TTL = 300
NEGATIVE_TTL = 30
NAME_MAP_SIZE = 65536
NAME_MAP_TTL = 3600.0


class Answer(NamedTuple):
    rcode: int
    answer: tuple[dns.rrset.RRset, ...]
    ttl: int


class UpstreamError(Exception):
    """No upstream resolver answered."""


def system_nameservers(path: Path = Path("/etc/resolv.conf")) -> list[str]:
    """The ``nameserver`` lines of resolv.conf (empty if unreadable)."""
    found = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                found.append(parts[1])
    return found


def _server(spec: str) -> tuple[str, int]:
    """``1.1.1.1``, ``1.1.1.1:5353`` or ``[2606:4700::1111]:53`` as (address, port)."""
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 53
    if spec.count(":") == 1:
        host, port = spec.split(":")
        return host, int(port)
    return spec, 53


class Resolver:
    """Asks the upstream resolvers; caches answers for their TTL (clamped to 5..300 s)."""

    def __init__(
        self,
        upstream: Sequence[str] = (),
        *,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout = timeout
        self.clock = clock
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, int], tuple[float, Answer]] = {}
        self.servers: list[tuple[str, int]] = []
        self.set_upstream(upstream)

    def set_upstream(self, upstream: Sequence[str]) -> None:
        servers = [_server(s) for s in (upstream or system_nameservers())]
        with self._lock:
            if servers != self.servers:
                self.servers = servers
                self._cache.clear()

    def cached(self, name: str, rdtype: int) -> bool:
        """Whether :meth:`lookup` would answer from the cache now (no query, no wait)."""
        with self._lock:
            hit = self._cache.get((name, rdtype))
        return hit is not None and hit[0] > self.clock()

    def lookup(self, name: str, rdtype: int) -> Answer:
        """The upstream answer for ``name``/``rdtype`` (cached). Raises :class:`UpstreamError`."""
        key = (name, rdtype)
        now = self.clock()
        with self._lock:
            hit = self._cache.get(key)
            servers = list(self.servers)
        if hit is not None and hit[0] > now:
            return hit[1]
        answer = self._ask(name, rdtype, servers)
        ttl = answer.ttl if answer.rcode == dns.rcode.NOERROR and answer.answer else NEGATIVE_TTL
        with self._lock:
            if len(self._cache) > 10000:
                self._cache.clear()
            self._cache[key] = (now + ttl, answer)
        return answer

    def _ask(self, name: str, rdtype: int, servers: list[tuple[str, int]]) -> Answer:
        if not servers:
            raise UpstreamError("no upstream resolver configured")
        query = dns.message.make_query(name + ".", dns.rdatatype.RdataType.make(rdtype))
        query.flags |= dns.flags.RD
        last: Exception | None = None
        for addr, port in servers:
            try:
                reply = dns.query.udp(query, addr, timeout=self.timeout, port=port)
                if reply.flags & dns.flags.TC:
                    reply = dns.query.tcp(query, addr, timeout=self.timeout, port=port)
            except (OSError, dns.exception.DNSException) as err:
                last = err
                continue
            ttls = [rr.ttl for rr in reply.answer]
            ttl = max(MIN_TTL, min([MAX_TTL, *ttls]))
            return Answer(reply.rcode(), tuple(reply.answer), ttl)
        raise UpstreamError(f"no upstream resolver answered ({last})")

    def addresses(self, name: str) -> list[str]:
        """Every IPv4 address ``name`` resolves to (following CNAMEs in the answer)."""
        answer = self.lookup(name, dns.rdatatype.A)
        return [rd.address for rrset in answer.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset]


class NameMap:
    """Which name the gateway's DNS gave a bot for an address: (bot address, IP) -> name.

    The transparent path uses it for ports other than 80 and 443, where the bytes carry no
    name. Bounded; oldest entries go first.
    """

    def __init__(self, size: int = NAME_MAP_SIZE, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.clock = clock
        self._lock = threading.Lock()
        self._map: collections.OrderedDict[tuple[str, str], tuple[str, float]] = collections.OrderedDict()

    def add(self, bot_addr: str, ip: str, name: str, ttl: float = NAME_MAP_TTL) -> None:
        with self._lock:
            self._map[(bot_addr, ip)] = (name, self.clock() + max(ttl, NAME_MAP_TTL))
            self._map.move_to_end((bot_addr, ip))
            while len(self._map) > self.size:
                self._map.popitem(last=False)

    def get(self, bot_addr: str, ip: str) -> str | None:
        with self._lock:
            hit = self._map.get((bot_addr, ip))
        if hit is None or hit[1] < self.clock():
            return None
        return hit[0]
