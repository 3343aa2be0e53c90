"""The gateway's DNS server for bots (UDP and TCP on DNS_PORT in the gateway namespace).

For the asking bot (found by source address) a name its egress allows is looked up upstream
(:class:`clawpen.net.resolve.Resolver`) and answered with the public addresses only; every
other name gets NXDOMAIN *without* any upstream query, so a bot cannot smuggle data out in
query names. AAAA questions of a ``network.ipv6`` bot are answered like A questions (public
addresses only); every other bot gets an empty AAAA answer (its link has no IPv6). Each
(bot, address) -> name answer is remembered for the transparent path (IPv6 addresses in their
compressed form, as :func:`clawpen.net.gateway.original_dst` reports them); denials go to the
connection log. Queries come over IPv4 only (``resolv.conf`` names ``gw_addr``).

Fairness (:mod:`clawpen.net.dnsfair`): the UDP read loop only reads, finds the sender and queues
the datagram in that bot's bounded queue, or drops it (over the bot's rate, or queue full) and
counts it; workers serve the bots' queues in turn. The drops of each bot are logged as one
aggregated denial per report interval, never one row per datagram.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from clawpen.net.connlog import ConnLog
from clawpen.net.connrecord import ConnRecord
from clawpen.net.dnsfair import TCP_PER_SOURCE, FairQueue
from clawpen.net.dnsudp import UdpFront
from clawpen.net.hostaddr import PerNamespace
from clawpen.net.relay import Workers
from clawpen.net.resolve import NameMap, Resolver, UpstreamError
from clawpen.net.types import DNS_PORT, BotLink, LinkRegistry
from clawpen.netns import setns, socket_in
from clawpen.spec import egress
from clawpen.spec.egress import EgressPolicy, HostSource
from clawpen.spec.quotas import NetLimits

_ADDRESS_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)
UNKNOWN = "?"  # the one queue of every sender that is not a bot link
_log = logging.getLogger(__name__)
_Job = tuple[socket.socket, bytes, tuple[str, int]]


class DnsServer:
    """Answers bots' queries by policy. ``start``/``stop`` from any thread."""

    def __init__(
        self,
        registry: LinkRegistry,
        resolver: Resolver,
        names: NameMap,
        log: ConnLog | None = None,
        *,
        netns_fd: int | None = None,
        upstream_netns_fd: int | None = None,
        host: str = "0.0.0.0",  # noqa: S104 - inside the gateway namespace only
        port: int = DNS_PORT,
        workers: int = 8,
        fair: FairQueue[_Job] | None = None,
        host_addrs: HostSource | None = None,
        policies: Callable[[BotLink], EgressPolicy] | None = None,  # a link's egress now (learn)
    ) -> None:
        self.registry = registry
        self.policies = policies if policies is not None else (lambda link: egress.policy_for(link.egress))
        # the host's own addresses, per namespace of the asking thread (answers never name them)
        self._own_host_addrs = host_addrs is None
        self.host_addrs: HostSource = host_addrs if host_addrs is not None else PerNamespace()
        self.resolver = resolver
        self.names = names
        self.log = log
        self.netns_fd = netns_fd
        self.upstream_netns_fd = upstream_netns_fd
        self.host = host
        self.port = port
        self.workers = workers
        self._udp: UdpFront | None = None
        self._tcp: socket.socket | None = None
        self.fair: FairQueue[_Job] = fair if fair is not None else FairQueue()
        self._tcp_lock = threading.Lock()
        self._tcp_open: dict[str, int] = {}  # open DNS-over-TCP connections per source
        self._tcp_workers: Workers | None = None  # one thread per TCP connection (reused)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        udp = UdpFront(
            self.registry,
            self._offer,
            self._report_drops,
            netns_fd=self.netns_fd,
            host=self.host,
            port=self.port,
        )
        udp.start()
        tcp = socket_in(self.netns_fd, socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((self.host, self.port))
            tcp.listen(64)
        except OSError:
            udp.stop()
            udp.run()  # returns at once (stopped): closes its sockets
            tcp.close()
            raise
        self._udp, self._tcp = udp, tcp
        fd = self.upstream_netns_fd
        enter = (lambda: setns(fd)) if fd is not None else None
        self._tcp_workers = Workers(enter, name="clawpen-dns-tcp")
        for target in (udp.run, self._tcp_loop):
            t = threading.Thread(target=target, name="clawpen-dns-listen", daemon=True)
            t.start()
            self._threads.append(t)
        for _ in range(self.workers):
            t = threading.Thread(target=self._udp_worker, args=(enter,), name="clawpen-dns", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self.fair.close()
        if self._udp is not None:
            self._udp.stop()
        if self._tcp is not None:
            with contextlib.suppress(OSError):
                self._tcp.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self._tcp.close()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        if self._own_host_addrs and isinstance(self.host_addrs, PerNamespace):
            self.host_addrs.close()

    # ------------------------------------------------------------ transports
    def _offer(self, sock: socket.socket, data: bytes, addr: tuple[str, int]) -> None:
        """From the read loop: queue the query in its sender's queue, or drop (and count) it."""
        link = self.registry.by_source(addr[0])
        if link is None:
            self.fair.offer(UNKNOWN, (sock, data, addr))
        else:
            self.fair.offer(addr[0], (sock, data, addr), link.limits)

    def _report_drops(self) -> None:
        """One aggregated denial per bot for the queries dropped since the last report."""
        dropped = self.fair.take_dropped()
        for source, counts in dropped.items():
            link = self.registry.by_source(source) if source != UNKNOWN else None
            if link is None:
                continue
            for why, n in counts.items():
                if n:
                    reason = (
                        "query rate limit exceeded (dropped, not forwarded)"
                        if why == "rate"
                        else "query queue full (dropped, not forwarded)"
                    )
                    self._deny(link.bot, link.replica, "(any name)", reason, count=n)
        self.fair.forget_idle(lambda s: s == UNKNOWN or self.registry.by_source(s) is not None)

    def _udp_worker(self, enter: Callable[[], None] | None) -> None:
        if enter is not None:
            enter()
        fair = self.fair
        while True:
            job = fair.take()
            if job is None:
                return
            source, (sock, data, addr) = job
            try:
                reply = self.answer(data, addr[0])
                if reply is not None:
                    with contextlib.suppress(OSError):
                        sock.sendto(reply, addr)
            except Exception:  # one bad query must not end a worker
                _log.exception("DNS answer failed")
            finally:
                fair.done(source)

    def _tcp_loop(self) -> None:
        sock, workers = self._tcp, self._tcp_workers
        if sock is None or workers is None:
            return
        while True:
            try:
                conn, addr = sock.accept()
            except OSError:
                return
            link = self.registry.by_source(addr[0])
            source = addr[0] if link is not None else UNKNOWN
            limits = link.limits if link is not None else None
            cap = limits.dns_tcp_connections if limits is not None else TCP_PER_SOURCE
            with self._tcp_lock:
                busy = self._tcp_open.get(source, 0)
                if busy < cap:
                    self._tcp_open[source] = busy + 1
            if busy >= cap:
                conn.close()  # this bot has its share of TCP connections open already
                continue
            workers.submit(functools.partial(self._serve_tcp, conn, addr[0], source, limits))

    def _serve_tcp(self, conn: socket.socket, addr: str, source: str, limits: NetLimits | None) -> None:
        conn.settimeout(10)
        try:
            while True:
                head = _recv_exact(conn, 2)
                if head is None:
                    return
                data = _recv_exact(conn, struct.unpack("!H", head)[0])
                if data is None:
                    return
                ok = self.fair.allow(source, limits)
                reply = self.answer(data, addr, max_size=65535) if ok else _refused(data)
                if reply is None:
                    return
                conn.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            return
        finally:
            conn.close()
            with self._tcp_lock:
                left = self._tcp_open.get(source, 1) - 1
                if left > 0:
                    self._tcp_open[source] = left
                else:
                    self._tcp_open.pop(source, None)

    # ------------------------------------------------------------ policy
    def answer(self, data: bytes, source: str, max_size: int = 1232) -> bytes | None:
        """The wire reply to query ``data`` from bot address ``source`` (None: drop it)."""
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return None
        if query.flags & dns.flags.QR:
            return None
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.RA
        link = self.registry.by_source(source)
        if link is None:
            reply.set_rcode(dns.rcode.REFUSED)
            return reply.to_wire(max_size=max_size)
        if len(query.question) != 1:
            reply.set_rcode(dns.rcode.FORMERR)
            return reply.to_wire(max_size=max_size)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        policy = self.policies(link)
        try:
            normal = egress.normalize_host(name)
        except ValueError:
            normal = ""
        if not normal or not policy.allows_name(normal):
            self._deny(
                link.bot, link.replica, name, "name not in the egress allowlist (NXDOMAIN, not forwarded)"
            )
            reply.set_rcode(dns.rcode.NXDOMAIN)
            return reply.to_wire(max_size=max_size)
        if question.rdtype == dns.rdatatype.AAAA and not link.bot_addr6:
            return reply.to_wire(max_size=max_size)  # no IPv6 on this bot's link: empty answer
        try:
            upstream = self.resolver.lookup(normal, question.rdtype)
        except UpstreamError:
            reply.set_rcode(dns.rcode.SERVFAIL)
            return reply.to_wire(max_size=max_size)
        allow = egress.private_networks(link.allow_private)
        dropped: list[str] = []
        for rrset in upstream.answer:
            if rrset.rdtype in _ADDRESS_TYPES:
                keep = [
                    rd
                    for rd in rrset
                    if egress.address_problem(rd.address, allow, host=self.host_addrs) is None
                ]
                dropped += [rd.address for rd in rrset if rd not in keep]
                if not keep or (rrset.rdtype == dns.rdatatype.AAAA and not link.bot_addr6):
                    continue
                clean = dns.rrset.from_rdata_list(rrset.name, rrset.ttl, keep)
                for rd in keep:
                    ip = str(ipaddress.ip_address(rd.address))
                    self.names.add(link.bot_addr, ip, normal, rrset.ttl)
                reply.answer.append(clean)
            else:
                reply.answer.append(rrset)
        if dropped:
            self._deny(
                link.bot,
                link.replica,
                name,
                f"answer withheld: {egress.address_problem(dropped[0], host=self.host_addrs)}",
            )
        reply.set_rcode(dns.rcode.Rcode.make(upstream.rcode))
        return reply.to_wire(max_size=max_size)

    def _deny(self, bot: str, replica: int, name: str, reason: str, count: int = 1) -> None:
        if self.log is not None:
            rec = ConnRecord(time.time(), bot, replica, "dns", name, self.port, "denied", reason, times=count)
            self.log.add(rec)


def _refused(data: bytes) -> bytes | None:
    """REFUSED for query ``data`` without asking anyone (over the bot's rate)."""
    try:
        query = dns.message.from_wire(data)
    except dns.exception.DNSException:
        return None
    reply = dns.message.make_response(query)
    reply.set_rcode(dns.rcode.REFUSED)
    return reply.to_wire(max_size=65535)


def _recv_exact(conn: socket.socket, size: int) -> bytes | None:
    buf = b""
    while len(buf) < size:
        chunk = conn.recv(size - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf
