"""The gateway's DNS server for bots (UDP and TCP on DNS_PORT in the gateway namespace).

For the asking bot (found by source address) a name its egress allows is looked up upstream
(:class:`clawpen.net.resolve.Resolver`) and answered with the public addresses only; every
other name gets NXDOMAIN *without* any upstream query, so a bot cannot smuggle data out in
query names. AAAA questions get an empty answer (bot links are IPv4). Each (bot, address) ->
name answer is remembered for the transparent path; denials go to the connection log.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from clawpen.net import egress
from clawpen.net.connlog import ConnLog, ConnRecord
from clawpen.net.netns import setns, socket_in
from clawpen.net.relay import Workers
from clawpen.net.resolve import NameMap, Resolver, UpstreamError
from clawpen.net.types import DNS_PORT, LinkRegistry

_ADDRESS_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)


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
    ) -> None:
        self.registry = registry
        self.resolver = resolver
        self.names = names
        self.log = log
        self.netns_fd = netns_fd
        self.upstream_netns_fd = upstream_netns_fd
        self.host = host
        self.port = port
        self.workers = workers
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._pool: ThreadPoolExecutor | None = None  # UDP answers: bounded
        self._tcp_workers: Workers | None = None  # one thread per TCP connection (reused)
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        udp = socket_in(self.netns_fd, socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket_in(self.netns_fd, socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            udp.bind((self.host, self.port))
            tcp.bind((self.host, self.port))
            tcp.listen(64)
        except OSError:
            udp.close()
            tcp.close()
            raise
        self._udp, self._tcp = udp, tcp
        fd = self.upstream_netns_fd
        enter = (lambda: setns(fd)) if fd is not None else None
        self._pool = ThreadPoolExecutor(self.workers, "clawpen-dns", initializer=enter)
        self._tcp_workers = Workers(enter, name="clawpen-dns-tcp")
        for target in (self._udp_loop, self._tcp_loop):
            t = threading.Thread(target=target, name="clawpen-dns-listen", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        for s in (self._udp, self._tcp):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    # ------------------------------------------------------------ transports
    def _udp_loop(self) -> None:
        sock, pool = self._udp, self._pool
        if sock is None or pool is None:
            return
        while True:
            try:
                data, addr = sock.recvfrom(4096)
            except OSError:
                return
            if not data:  # shutdown wakes recvfrom with an empty read
                if sock.fileno() < 0:
                    return
                continue
            try:
                pool.submit(self._answer_udp, sock, data, addr)
            except RuntimeError:
                return

    def _answer_udp(self, sock: socket.socket, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.answer(data, addr[0])
        if reply is not None:
            with contextlib.suppress(OSError):
                sock.sendto(reply, addr)

    def _tcp_loop(self) -> None:
        sock, workers = self._tcp, self._tcp_workers
        if sock is None or workers is None:
            return
        while True:
            try:
                conn, addr = sock.accept()
            except OSError:
                return
            workers.submit(functools.partial(self._serve_tcp, conn, addr[0]))

    def _serve_tcp(self, conn: socket.socket, source: str) -> None:
        conn.settimeout(10)
        try:
            while True:
                head = _recv_exact(conn, 2)
                if head is None:
                    return
                data = _recv_exact(conn, struct.unpack("!H", head)[0])
                if data is None:
                    return
                reply = self.answer(data, source, max_size=65535)
                if reply is None:
                    return
                conn.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            return
        finally:
            conn.close()

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
        policy = egress.policy_for(link.egress)
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
        if question.rdtype == dns.rdatatype.AAAA:
            return reply.to_wire(max_size=max_size)  # no IPv6 on bot links: empty answer
        try:
            upstream = self.resolver.lookup(normal, question.rdtype)
        except UpstreamError:
            reply.set_rcode(dns.rcode.SERVFAIL)
            return reply.to_wire(max_size=max_size)
        allow = egress.private_networks(link.allow_private)
        dropped: list[str] = []
        for rrset in upstream.answer:
            if rrset.rdtype in _ADDRESS_TYPES:
                keep = [rd for rd in rrset if egress.address_problem(rd.address, allow) is None]
                dropped += [rd.address for rd in rrset if rd not in keep]
                if not keep or rrset.rdtype == dns.rdatatype.AAAA:
                    continue
                clean = dns.rrset.from_rdata_list(rrset.name, rrset.ttl, keep)
                for rd in keep:
                    self.names.add(link.bot_addr, rd.address, normal, rrset.ttl)
                reply.answer.append(clean)
            else:
                reply.answer.append(rrset)
        if dropped:
            self._deny(link.bot, link.replica, name, f"answer withheld: {egress.address_problem(dropped[0])}")
        reply.set_rcode(dns.rcode.Rcode.make(upstream.rcode))
        return reply.to_wire(max_size=max_size)

    def _deny(self, bot: str, replica: int, name: str, reason: str) -> None:
        if self.log is not None:
            self.log.add(ConnRecord(time.time(), bot, replica, "dns", name, self.port, "denied", reason))


def _recv_exact(conn: socket.socket, size: int) -> bytes | None:
    buf = b""
    while len(buf) < size:
        chunk = conn.recv(size - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf
