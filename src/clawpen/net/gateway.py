"""The egress gateway: explicit proxy and transparent interception for every bot link.

Listening sockets live in the gateway network namespace (``0.0.0.0:PROXY_PORT`` and
``0.0.0.0:TRANSPARENT_PORT``, the same ports on ``[::]`` in IPv6-only sockets for the links of
``network.ipv6`` bots, plus DNS over IPv4). One loop accepts on all of them and reads every
connection's first bytes without blocking (:mod:`clawpen.net.heads`, with per-bot quotas from
:mod:`clawpen.net.fair`), so a slow bot holds no thread before the verdict. The loop runs in
the gateway's worker threads, which have joined the *upstream* namespace (the daemon's own by
default), so upstream sockets and DNS queries are made there; the thread that finds a head
complete serves that connection itself and keeps the loop while it waits, handing the loop to
another worker only when the loop has work or the thread would block where the loop cannot be
watched (:mod:`clawpen.net.lead`). Per connection:

1. who: the bot link behind the source address, IPv4 or IPv6 (``registry.by_source``), else
   close;
2. where: CONNECT target / absolute URL (proxy), or the original destination
   (``SO_ORIGINAL_DST`` / ``IP6T_SO_ORIGINAL_DST``) and then TLS SNI (port 443), HTTP Host
   (port 80), or the name the gateway's DNS gave that bot for that address (other ports)
   (transparent);
3. check the allowlist, resolve the name upstream (A, and AAAA for a ``network.ipv6`` bot),
   refuse if any address is not public (unless in ``allow_private``), connect (to the original
   destination first when it is one of the name's addresses), and relay (zero-copy,
   :mod:`clawpen.net.relay`).
   On CONNECT the first bytes must be a ClientHello whose SNI is the CONNECT host (port 443),
   and any ClientHello must name that host. After a CONNECT to 443 is answered ``200``, its
   ClientHello is read by :mod:`clawpen.net.hello` (2 ms in the worker, then the head stage),
   so no slow client holds a thread until a deadline.

Denied: ``403`` with a one-line reason (proxy), a reset (transparent). Every connection ends up
in the :class:`clawpen.net.connlog.ConnLog`.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Callable

import dns.rdatatype

from clawpen.net import sniff
from clawpen.net.addrcheck import AddressVerdicts
from clawpen.net.connlog import ConnLog
from clawpen.net.connrecord import ConnRecord
from clawpen.net.dns import DnsServer
from clawpen.net.fair import MAX_CONNECTIONS, Fairness
from clawpen.net.heads import FIRST_BYTE, HEAD_DEADLINE, Head, HeadStage
from clawpen.net.hello import HelloStep
from clawpen.net.hello import is_ip as _is_ip
from clawpen.net.hello import respond as _respond
from clawpen.net.hello import safe_normal as _safe_normal
from clawpen.net.hostaddr import PerNamespace
from clawpen.net.lead import NO_LEAD, Lead
from clawpen.net.learn import PolicyView
from clawpen.net.listen import listeners, original_dst
from clawpen.net.relay import (
    Refused,
    Workers,
    close_quietly,
    relay,
    reset,
    send_all,
    tune,
)
from clawpen.net.resolve import NameMap, Resolver, UpstreamError
from clawpen.net.sockwait import connect_nonblocking
from clawpen.net.types import DNS_PORT, PROXY_PORT, TRANSPARENT_PORT, BotLink, LinkRegistry
from clawpen.netns import setns
from clawpen.spec import egress

_log = logging.getLogger(__name__)

HEAD_TIMEOUT = HEAD_DEADLINE  # for the ClientHello after a CONNECT's 200 (read by the head stage)
CONNECT_TIMEOUT = 10.0
__all__ = ["MAX_CONNECTIONS", "Denied", "Gateway", "original_dst"]


class Denied(Exception):
    """A connection the policy refuses; the text is the one-line reason."""


class Gateway:
    """The gateway process side: proxy, transparent listener, DNS server, connection log."""

    def __init__(
        self,
        registry: LinkRegistry,
        log: ConnLog,
        resolver: Resolver,
        *,
        netns_fd: int | None = None,
        upstream_netns_fd: int | None = None,
        host: str = "0.0.0.0",  # noqa: S104 - inside the gateway namespace only
        host6: str | None = None,
        proxy_port: int = PROXY_PORT,
        transparent_port: int = TRANSPARENT_PORT,
        dns_port: int | None = DNS_PORT,
        head_timeout: float | None = None,  # the ClientHello after a CONNECT (default head_deadline)
        first_byte: float = FIRST_BYTE,
        head_deadline: float = HEAD_DEADLINE,
        policies: PolicyView | None = None,  # a link's egress now (learn mode ends); default: own
    ) -> None:
        self.registry = registry
        self.policies = policies if policies is not None else PolicyView()
        self.log = log
        self.resolver = resolver
        self.names = NameMap()
        self.netns_fd = netns_fd
        self.upstream_netns_fd = upstream_netns_fd
        self.host = host
        # IPv6 listeners: ``host6``, or "::" next to the IPv4 wildcard (the gateway namespace)
        self.host6 = host6 if host6 is not None else ("::" if host == "0.0.0.0" else None)  # noqa: S104
        self.proxy_port = proxy_port
        self.transparent_port = transparent_port
        hello_deadline = head_deadline if head_timeout is None else head_timeout
        self.host_addrs = PerNamespace()  # the host's own addresses: never a destination
        self.verdicts = AddressVerdicts()  # egress.address_problem, per host-address set
        self.dns = (
            DnsServer(
                registry,
                resolver,
                self.names,
                log,
                netns_fd=netns_fd,
                upstream_netns_fd=upstream_netns_fd,
                host=host,
                port=dns_port,
                host_addrs=self.host_addrs,
                policies=self.policies,
            )
            if dns_port is not None
            else None
        )
        self._listeners: list[socket.socket] = []
        self.fair = Fairness()  # each link carries its own quotas (BotLink.limits)
        # Connection threads live in the upstream namespace, so what they open is made there.
        self.workers = Workers(self._join_upstream, name="clawpen-gw")
        self.heads = HeadStage(
            registry,
            self.fair,
            plan=self._plan,
            ready=self._ready,
            failed=self._head_failed,
            refused=self._refused,
            first_byte=first_byte,
            deadline=head_deadline,
            spawn=self.workers.submit,  # the loop runs in the workers (see clawpen.net.lead)
        )
        self.ports: dict[str, int] = {}  # "proxy"/"transparent" -> bound port (after start)
        self.hello = HelloStep(
            self.fair, self.heads, self.workers, self._record, first_byte=first_byte, deadline=hello_deadline
        )

    # ------------------------------------------------------------ life cycle
    def start(self) -> None:
        try:
            for port, kind in ((self.proxy_port, "proxy"), (self.transparent_port, "transparent")):
                socks = listeners(self.netns_fd, self.host, self.host6, port)  # IPv4, IPv6
                self._listeners += socks
                self.ports[kind] = socks[0].getsockname()[1]
                for sock in socks:
                    self.heads.add_listener(sock, kind)
            if self.dns is not None:
                self.dns.start()
            self.heads.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.heads.stop()  # closes the unfinished heads
        for sock in self._listeners:
            close_quietly(sock)
        self._listeners.clear()
        if self.dns is not None:
            self.dns.stop()
        self.host_addrs.close()

    def _join_upstream(self) -> None:
        """Each worker thread, once: into the upstream namespace for good (no gateway task
        moves it), so its host-address lookups may skip finding the namespace each time."""
        if self.upstream_netns_fd is not None:
            setns(self.upstream_netns_fd)
        self.host_addrs.pin_thread()

    def stats(self) -> dict[str, dict[str, int]]:
        """Per bot: allowed, denied, bytes_up, bytes_down (for the metrics collector), and the
        fairness counters (refused_rate, refused_busy, refused_heads, head_timeouts)."""
        out = self.log.stats()
        for bot, counts in self.fair.counts().items():
            out.setdefault(bot, {}).update(counts)
        return out

    # ------------------------------------------------------------ head stage callbacks
    def _plan(self, head: Head) -> bool:
        """In the head stage: does this connection need its first bytes parsed?"""
        if head.kind == "proxy":
            head.parse = sniff.http_request
            return True
        head.dst = dst_ip, dst_port = original_dst(head.sock)
        link = head.link
        if dst_port in (self.proxy_port, self.transparent_port) and link.is_gateway(dst_ip):
            return False  # denied by the worker
        if self.policies(link).match(dst_ip, dst_port) is not None:
            return False
        if dst_port == 443:
            head.parse, head.missing = sniff.sni_of, "no TLS SNI (raw IP connection)"
        elif dst_port == 80:
            head.parse, head.missing = sniff.host_of, "no HTTP Host header"
        return head.parse is not None

    def _ready(self, head: Head) -> None:
        """In a worker thread (the head stage's leader that found the head complete)."""
        if head.phase == "hello":
            self.hello.ready(head)
            return
        self._serve(head)  # the socket stays non-blocking (the relay wants it so)

    def _serve(self, head: Head) -> None:
        conn, link = head.sock, head.link
        handed_back = False  # a CONNECT to 443 went back to the head stage for its ClientHello
        try:  # TCP_NODELAY comes from the listener (see clawpen.net.listen)
            if head.kind == "proxy":
                handed_back = self._serve_proxy(conn, link, head)
            else:
                self._serve_transparent(conn, link, head)
        except Exception as err:  # a broken connection must not take the gateway down
            self._record(link, "error", "-", 0, "denied", f"gateway error: {err!r}"[:300], head.t0)
            if not isinstance(err, OSError):  # not the network: a bug, with its traceback
                _log.exception("gateway connection failed")
        finally:
            if not handed_back:
                self.fair.conn_done(head.key)
                close_quietly(conn)

    def _head_failed(self, head: Head, why: str, detail: str) -> None:
        """In the head stage: the head did not come (closed, bad, late); answer and log."""
        link, conn = head.link, head.sock
        if head.phase == "hello":  # after a CONNECT's 200 (the stage closes both sockets)
            self.hello.failed(head, why, detail)
            return
        if head.kind == "proxy":
            if why == "timeout":
                self._record(link, "proxy", "-", 0, "denied", f"request head: {detail}", head.t0)
                _respond(conn, 408, "clawpen gateway: the request head did not come in time")
            elif why == "bad":
                _respond(conn, 400, "clawpen gateway: not an HTTP proxy request")
            return
        host, port = head.dst or ("-", 0)
        self._record(link, "transparent", host, port, "denied", f"{head.missing}: {detail}", head.t0)
        reset(conn)

    def _refused(self, head: Head, why: str) -> None:
        """In the head stage: over a per-bot limit; refused at once (429 on the proxy port)."""
        self._record(head.link, "error", "-", 0, "denied", why, head.t0)
        if head.kind == "proxy":
            _respond(head.sock, 429, f"clawpen gateway: {why}")
            close_quietly(head.sock)
        else:
            reset(head.sock)

    # ------------------------------------------------------------ checks
    def _check(
        self, link: BotLink, host: str, port: int, before_wait: Callable[[], None] = NO_LEAD
    ) -> tuple[str, list[str]]:
        """Allowlist + resolution + address classes: (reason it is allowed, addresses).
        ``before_wait`` is called first if a name must be asked upstream (not cached)."""
        try:
            name = egress.normalize_host(host)
        except ValueError as err:
            raise Denied(str(err)) from None
        policy = self.policies(link)
        rule = policy.match(name, port)
        if rule is None and not policy.open:
            what = "address" if _is_ip(name) else "host"
            raise Denied(f"{what} {name}:{port} is not in the egress allowlist")
        allowed_by = rule.raw if rule is not None else self.policies.allowed_by(policy)
        if _is_ip(name):
            addresses = [name]
        else:
            a, aaaa = dns.rdatatype.A, dns.rdatatype.AAAA
            if not self.resolver.cached(name, a) or (link.bot_addr6 and not self.resolver.cached(name, aaaa)):
                before_wait()
            try:
                addresses = self.resolver.addresses(name)
            except UpstreamError as err:
                raise Denied(f"cannot resolve {name}: {err}") from None
            if link.bot_addr6:  # an IPv6 bot: the name's IPv6 addresses too, under the same checks
                addresses += self._addresses6(name)
            if not addresses:
                raise Denied(f"{name} does not resolve")
        own = self.host_addrs()  # the host's addresses now (a change announced is seen here)
        for addr in addresses:
            problem = self.verdicts.problem(addr, link.allow_private, own)
            if problem is not None:
                raise Denied(f"{name} resolves to a refused address: {problem}")
        return allowed_by, addresses

    def _addresses6(self, name: str) -> list[str]:
        """Every IPv6 address ``name`` resolves to (none when the AAAA lookup fails)."""
        try:
            answer = self.resolver.lookup(name, dns.rdatatype.AAAA)
        except UpstreamError:
            return []
        aaaa = dns.rdatatype.AAAA
        return [
            str(ipaddress.ip_address(rd.address)) for rr in answer.answer if rr.rdtype == aaaa for rd in rr
        ]

    def _connect(self, addresses: list[str], port: int, lead: Lead = NO_LEAD) -> socket.socket:
        """A connected, non-blocking socket to the first of ``addresses`` that answers within
        :data:`CONNECT_TIMEOUT`; the waits watch the head stage's loop if ``lead`` holds it."""
        last: OSError | None = None
        for addr in addresses:
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            up = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            try:
                tune(up)
                connect_nonblocking(up, (addr, port), CONNECT_TIMEOUT, lead.watch())
                return up
            except OSError as err:
                close_quietly(up)
                last = err
        raise OSError(f"cannot connect to {port}: {last}")

    def _record(  # noqa: PLR0917
        self,
        link: BotLink,
        kind: str,
        host: str,
        port: int,
        verdict: str,
        reason: str,
        t0: float,
        up: int = 0,
        down: int = 0,
    ) -> None:
        self.log.add(
            ConnRecord(
                t0, link.bot, link.replica, kind, host, port, verdict, reason, up, down, time.time() - t0
            )
        )

    # ------------------------------------------------------------ explicit proxy
    def _serve_proxy(self, conn: socket.socket, link: BotLink, head: Head) -> bool:
        """True if the connection went back to the head stage (CONNECT to 443)."""
        t0, data, req = head.t0, head.data, head.result
        assert isinstance(req, sniff.Request)
        if req.method == "CONNECT":
            return self._proxy_connect(conn, link, req, head)
        head.handoff()  # plain HTTP: not the fast path
        self._proxy_http(conn, link, req, data[req.size :], t0)
        return False

    def _proxy_connect(self, conn: socket.socket, link: BotLink, req: sniff.Request, head: Head) -> bool:
        t0, rest = head.t0, head.data[req.size :]
        name, port = req.target[:200], 0
        try:
            host, port = sniff.split_host_port(req.target, 0)
            name = _safe_normal(host)
            if port == 0:
                raise Denied("CONNECT needs host:port")
            allowed_by, addresses = self._check(link, host, port, head.handoff)
        except (Denied, ValueError) as err:
            self._record(link, "connect", name, port, "denied", str(err), t0)
            _respond(conn, 403, f"clawpen gateway: {err}")
            return False
        try:
            up = self._connect(addresses, port, head.handoff)
        except OSError as err:
            self._record(link, "connect", name, port, "denied", f"upstream: {err}", t0)
            _respond(conn, 502, f"clawpen gateway: cannot connect to {name}:{port}")
            return False
        if port == 443:  # the ClientHello is read by HelloStep (and the head stage)
            head.target, head.data = (name, port, allowed_by), rest
            return self.hello.after_connect(head, up)
        try:
            head.handoff()
            send_all(conn, b"HTTP/1.1 200 Connection established\r\n\r\n")

            def gate() -> bytes:
                return self._hello_gate(conn, rest, name)

            counts = relay(conn, up, a_gate=gate, spawn=self.workers.submit)
        finally:
            close_quietly(up)
        if counts.refused:
            self._record(
                link, "connect", name, port, "denied", counts.refused, t0, counts.a_to_b, counts.b_to_a
            )
        else:
            self._record(link, "connect", name, port, "allowed", allowed_by, t0, counts.a_to_b, counts.b_to_a)
        return False

    def _hello_gate(self, conn: socket.socket, data: bytes, name: str) -> bytes:
        """After CONNECT to a port other than 443: a ClientHello, if one comes, must name the
        CONNECT host (port 443 is checked in the head stage, see :meth:`_await_hello`).

        A protocol where the server speaks first (or a client that only reads) is fine: the
        server's bytes already flow, and the gate waits without a time limit."""
        try:
            while True:
                if len(data) >= 3 and not sniff.looks_like_tls(data):
                    return data
                if len(data) >= 3:
                    sni = sniff.client_hello_sni(data)
                    if sni is not sniff.MORE:
                        break
                chunk = conn.recv(65536)
                if not chunk:
                    return data
                data += chunk
        except sniff.NotTLS as err:
            raise Refused(f"bad TLS ClientHello: {err}") from None
        if sni is None:
            if _is_ip(name):
                return data
            raise Refused(f"TLS ClientHello without SNI for CONNECT {name}")
        if _safe_normal(str(sni)) != name:
            raise Refused(f"TLS SNI {sni!r} does not match CONNECT host {name}")
        return data

    def _proxy_http(
        self, conn: socket.socket, link: BotLink, req: sniff.Request, rest: bytes, t0: float
    ) -> None:
        name, port = req.target[:200], 0
        try:
            host, port, path = sniff.absolute_url(req.target)
            name = _safe_normal(host)
            allowed_by, addresses = self._check(link, host, port)
        except (Denied, ValueError) as err:
            self._record(link, "proxy", name, port, "denied", str(err), t0)
            _respond(conn, 403, f"clawpen gateway: {err}")
            return
        try:
            up = self._connect(addresses, port)
        except OSError:
            self._record(link, "proxy", name, port, "denied", "upstream connect failed", t0)
            _respond(conn, 502, f"clawpen gateway: cannot connect to {name}:{port}")
            return
        drop = {"proxy-connection", "proxy-authorization", "connection", "keep-alive", "host"}
        authority = name if port == 80 else f"{name}:{port}"
        if ":" in name:
            authority = f"[{name}]" if port == 80 else f"[{name}]:{port}"
        lines = [f"{req.method} {path} {req.version}", f"Host: {authority}"]
        lines += [f"{k}: {v}" for k, v in req.headers if k.lower() not in drop]
        lines.append("Connection: close")
        head_bytes = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            counts = relay(conn, up, a_prefix=head_bytes + rest, spawn=self.workers.submit)
        finally:
            close_quietly(up)
        self._record(link, "proxy", name, port, "allowed", allowed_by, t0, counts.a_to_b, counts.b_to_a)

    # ------------------------------------------------------------ transparent
    def _serve_transparent(self, conn: socket.socket, link: BotLink, head: Head) -> None:
        t0, data = head.t0, head.data
        dst_ip, dst_port = head.dst or original_dst(conn)
        host = dst_ip
        try:
            policy = self.policies(link)
            if dst_port in (self.proxy_port, self.transparent_port) and link.is_gateway(dst_ip):
                raise Denied("connection to the gateway's own port")
            if policy.match(dst_ip, dst_port) is None:
                if head.parse is not None:  # 443 / 80: the head stage read the SNI / Host
                    if not head.result:
                        raise Denied(head.missing)
                    host = str(head.result)
                else:
                    known = self.names.get(link.bot_addr, dst_ip)
                    if known is None and not policy.open:
                        raise Denied(f"{dst_ip}:{dst_port} was not resolved through the gateway's DNS")
                    host = known or dst_ip
                named = _safe_normal(host)
                if _is_ip(named) and not policy.open and policy.match(named, dst_port) is None:
                    raise Denied(f"raw IP connection to {host}:{dst_port} (not in the allowlist)")
            allowed_by, addresses = self._check(link, host, dst_port, head.handoff)
        except (Denied, ValueError) as err:
            self._record(link, "transparent", host, dst_port, "denied", str(err), t0)
            reset(conn)
            return
        if dst_ip in addresses:
            addresses = [dst_ip] + [a for a in addresses if a != dst_ip]
        try:
            up = self._connect(addresses, dst_port, head.handoff)
        except OSError:
            self._record(link, "transparent", host, dst_port, "denied", "upstream connect failed", t0)
            reset(conn)
            return
        try:
            counts = relay(conn, up, a_prefix=data, spawn=self.workers.submit, watch=head.handoff.watch())
        finally:
            close_quietly(up)
        name = _safe_normal(host)
        self._record(
            link, "transparent", name, dst_port, "allowed", allowed_by, t0, counts.a_to_b, counts.b_to_a
        )
