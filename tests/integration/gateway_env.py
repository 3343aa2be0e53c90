"""A fake internet for the gateway tests, built from network namespaces this test creates.

    bot ns  eth0 10.213.0.2/30 --veth-- cb.. 10.213.0.1/30  gateway ns (nft from clawpen.net.nft,
                                                             gateway listeners)
    upstream ns  u.. 45.79.0.1/24 --veth-- i.. 45.79.0.2/24  inet ns
                 127.0.0.1:8443 "host-local" service         45.79.0.53  DNS (records every query)
                                                             45.79.0.10  www.allowed.test :80 :443 :8443
                                                             45.79.0.11  other.test       :80 :443 :8443

With :meth:`Env.add_ipv6` the fake internet also speaks IPv6 (the DNS answers AAAA from ZONE6):

    upstream ns  2600:3c00:45::1/64 (default    inet ns  2600:3c00:45::2/64
                 route via ::2), :8443 service           2600:3c00:45::10  www.allowed.test :80 :443 :8443
                                                         2600:3c00:45::11  other.test       :80 :443 :8443
                                                         fd00::5           (a ULA server)   :8443

The gateway's listening sockets are made in the gateway ns, its upstream sockets (and its
DNS lookups) in the upstream ns. The servers are threads of the test process whose sockets were
made inside the inet ns. Nothing touches the root namespace but ``ip netns add`` itself and
``/etc/netns/<bot ns>/resolv.conf`` (removed afterwards).
"""

from __future__ import annotations

import contextlib
import http.server
import os
import secrets
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from clawpen.net import nft
from clawpen.net.connlog import ConnLog, query
from clawpen.net.gateway import Gateway
from clawpen.net.resolve import Resolver
from clawpen.net.types import BotLink
from clawpen.netns import netns_thread_call, socket_in
from selfsigned import self_signed

BOT_ADDR, GW_ADDR = "10.213.0.2", "10.213.0.1"
UP_ADDR, INET_ADDR = "45.79.0.1", "45.79.0.2"
DNS_ADDR, WWW_ADDR, OTHER_ADDR = "45.79.0.53", "45.79.0.10", "45.79.0.11"
ZONE = {
    "www.allowed.test": ["45.79.0.10"],
    "other.test": ["45.79.0.11"],
    "secret-token.evil.example": ["45.79.0.11"],
    "loopy.allowed.test": ["127.0.0.1"],
    "tenx.allowed.test": ["10.0.0.5"],
    "meta.allowed.test": ["169.254.169.254"],
    "mixed.allowed.test": ["45.79.0.10", "127.0.0.1"],
    "a.wild.test": ["45.79.0.10"],
}
UP6, INET6 = "2600:3c00:45::1", "2600:3c00:45::2"
WWW6, OTHER6, ULA6 = "2600:3c00:45::10", "2600:3c00:45::11", "fd00::5"
NAT64_PRIVATE = "64:ff9b::a00:5"  # NAT64 for 10.0.0.5
ZONE6 = {
    "www.allowed.test": [WWW6],
    "other.test": [OTHER6],
    "ula.allowed.test": [ULA6],
    "nat64.allowed.test": [NAT64_PRIVATE],
}
EGRESS = (
    "www.allowed.test:443",
    "www.allowed.test:80",
    "www.allowed.test:8443",
    "loopy.allowed.test:443",
    "loopy.allowed.test:8443",
    "tenx.allowed.test:443",
    "meta.allowed.test:80",
    "mixed.allowed.test:443",
    "*.wild.test:443",
)


def ip(*args: str, ns: str | None = None) -> None:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    subprocess.run(argv, check=True, capture_output=True, text=True)


class Registry:
    """The test's stand-in for helper A's LinkManager: source address -> link."""

    def __init__(self, links: list[BotLink]) -> None:
        self.links = {link.bot_addr: link for link in links}

    def by_source(self, addr: str) -> BotLink | None:
        return self.links.get(addr)


def make_cert(directory: Path) -> tuple[Path, Path]:
    names = [*ZONE, "*.wild.test"]
    return self_signed(directory, dns=names, ips=[WWW_ADDR, "127.0.0.1"], ca=True)


class HttpHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        here = self.server.server_address
        body = f"hello from {here[0]}:{here[1]} host={self.headers.get('Host')} path={self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        size = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(size)
        body = f"got {len(data)} bytes\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class HttpServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    tls: ssl.SSLContext | None = None
    peers: list[str]  # the client address of every connection (see get_request)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = self.socket.accept()
        self.peers = [*getattr(self, "peers", []), addr[0]]
        if self.tls is not None:
            conn = self.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return conn, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class HttpServer6(HttpServer):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # not HTTPServer's: no reverse lookup (getfqdn)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


class FakeDNS:
    """An authoritative-ish UDP resolver for ZONE (A) and ZONE6 (AAAA) that records every name
    it was asked."""

    def __init__(
        self,
        sock: socket.socket,
        zone: dict[str, list[str]] | None = None,
        zone6: dict[str, list[str]] | None = None,
    ) -> None:
        self.sock = sock
        self.zone = ZONE if zone is None else zone
        self.zone6 = (ZONE6 if zone is None else {}) if zone6 is None else zone6
        self.asked: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                return
            if not data:
                return
            q = dns.message.from_wire(data)
            name = q.question[0].name.to_text(omit_final_dot=True).lower()
            self.asked.append(name)
            reply = dns.message.make_response(q)
            rdtype = q.question[0].rdtype
            if name not in self.zone and name not in self.zone6:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            elif rdtype == dns.rdatatype.A and name in self.zone:
                reply.answer.append(dns.rrset.from_text(name + ".", 30, "IN", "A", *self.zone[name]))
            elif rdtype == dns.rdatatype.AAAA and name in self.zone6:
                reply.answer.append(dns.rrset.from_text(name + ".", 30, "IN", "AAAA", *self.zone6[name]))
            self.sock.sendto(reply.to_wire(), addr)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class Env:
    def __init__(self, tmp: Path) -> None:
        tag = secrets.token_hex(3)
        self.tag = tag
        self.bot, self.gw = f"clawpen-t-{tag}-bot", f"clawpen-t-{tag}-gw"
        self.up, self.inet = f"clawpen-t-{tag}-up", f"clawpen-t-{tag}-inet"
        self.tmp = tmp
        self.fds: dict[str, int] = {}
        self.servers: list[HttpServer] = []
        self.dns: FakeDNS | None = None
        self.gateway: Gateway | None = None
        self.log: ConnLog | None = None
        self.cert, self.key = make_cert(tmp)
        self.etc = Path("/etc/netns") / self.bot

    # ------------------------------------------------------------ build
    def add_netns(self, ns: str) -> None:
        ip("netns", "add", ns)
        ip("link", "set", "lo", "up", ns=ns)
        self.fds[ns] = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)

    def wire_bot(self, ns: str, link: str, gw_addr: str, bot_addr: str) -> None:
        """A bot namespace's link to the gateway namespace: ``link`` there, ``eth0`` in ``ns``."""
        ip("link", "add", link, "netns", self.gw, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("addr", "add", f"{gw_addr}/30", "dev", link, ns=self.gw)
        ip("link", "set", link, "up", ns=self.gw)
        ip("addr", "add", f"{bot_addr}/30", "dev", "eth0", ns=ns)
        ip("link", "set", "eth0", "up", ns=ns)
        ip("route", "add", "default", "via", gw_addr, ns=ns)

    def build(self, egress: tuple[str, ...] | str = EGRESS, allow_private: tuple[str, ...] = ()) -> None:
        for ns in (self.bot, self.gw, self.up, self.inet):
            self.add_netns(ns)
        t = self.tag
        self.wire_bot(self.bot, f"cb{t}", GW_ADDR, BOT_ADDR)
        ip(
            "link",
            "add",
            f"u{t}",
            "netns",
            self.up,
            "type",
            "veth",
            "peer",
            "name",
            f"i{t}",
            "netns",
            self.inet,
        )
        ip("addr", "add", f"{UP_ADDR}/24", "dev", f"u{t}", ns=self.up)
        ip("link", "set", f"u{t}", "up", ns=self.up)
        ip("route", "add", "default", "via", INET_ADDR, ns=self.up)
        for addr in (INET_ADDR, DNS_ADDR, WWW_ADDR, OTHER_ADDR):
            ip("addr", "add", f"{addr}/24", "dev", f"i{t}", ns=self.inet)
        ip("link", "set", f"i{t}", "up", ns=self.inet)
        nft.apply(self.fds[self.gw], nft.ruleset())
        self.etc.mkdir(parents=True, exist_ok=True)
        (self.etc / "resolv.conf").write_text(f"nameserver {GW_ADDR}\n")
        self._servers()
        self.log = ConnLog(self.tmp / "connlog.db")
        self.log.start()
        link = BotLink("alpha", 0, BOT_ADDR, GW_ADDR, egress, allow_private)
        self.gateway = Gateway(
            Registry([link]),
            self.log,
            Resolver([DNS_ADDR]),
            netns_fd=self.fds[self.gw],
            upstream_netns_fd=self.fds[self.up],
        )
        self.gateway.start()

    def _servers(self) -> None:
        inet = self.fds[self.inet]
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(self.cert, self.key)
        plan = [(a, p, p != 80) for a in (WWW_ADDR, OTHER_ADDR) for p in (80, 443, 8443)]
        for addr, port, use_tls in plan:
            self._serve(inet, addr, port, tls if use_tls else None)
        self._serve(self.fds[self.up], "127.0.0.1", 8443, tls)  # a host-local service upstream
        sock = socket_in(inet, socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((DNS_ADDR, 53))
        self.dns = FakeDNS(sock)

    def add_ipv6(self) -> None:
        """Give the fake internet IPv6 (see the module docstring); call after :meth:`build`."""
        t = self.tag
        ip("-6", "addr", "add", f"{UP6}/64", "dev", f"u{t}", "nodad", ns=self.up)
        ip("-6", "route", "add", "default", "via", INET6, ns=self.up)
        for addr in (INET6, WWW6, OTHER6, ULA6):
            ip("-6", "addr", "add", f"{addr}/64", "dev", f"i{t}", "nodad", ns=self.inet)
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(self.cert, self.key)
        inet = self.fds[self.inet]
        for addr, port in [(a, p) for a in (WWW6, OTHER6) for p in (80, 443, 8443)] + [(ULA6, 8443)]:
            self._serve(inet, addr, port, tls if port != 80 else None, HttpServer6)
        self._serve(self.fds[self.up], UP6, 8443, tls, HttpServer6)  # a service on the host's own address

    def server(self, addr: str, port: int) -> HttpServer:
        """The fake server listening on ``addr:port``."""
        return next(s for s in self.servers if s.server_address[:2] == (addr, port))

    def _serve(
        self, fd: int, addr: str, port: int, tls: ssl.SSLContext | None, kind: type[HttpServer] = HttpServer
    ) -> None:
        server = netns_thread_call(fd, lambda: kind((addr, port), HttpHandler))
        server.tls = tls
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        self.servers.append(server)

    # ------------------------------------------------------------ use
    def run(self, ns: str, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout, check=False
        )

    def curl(self, *args: str, ns: str | None = None) -> subprocess.CompletedProcess[str]:
        base = ["curl", "-sS", "--max-time", "8", "--cacert", str(self.cert)]
        return self.run(ns or self.bot, *base, *args)

    def proxy(self) -> str:
        return f"http://{GW_ADDR}:3128"

    def sock(self, ns: str, kind: int = socket.SOCK_STREAM) -> socket.socket:
        s = socket_in(self.fds[ns], socket.AF_INET, kind)
        s.settimeout(8)
        return s

    def rows(self, **kw: Any) -> list[dict[str, Any]]:
        if self.log is None:
            return []
        self.log.flush()
        return query(self.log.path, **kw)

    def wait_row(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 5, **kw: Any) -> bool:
        """True once a log row matching ``pred`` is there (a connection is logged when it ends,
        which can be a moment after the bot saw it close)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(pred(r) for r in self.rows(bot="alpha", **kw)):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
        if self.log is not None:
            self.log.close()
        for server in self.servers:
            server.shutdown()
            server.server_close()
        if self.dns is not None:
            self.dns.close()
        for fd in self.fds.values():
            os.close(fd)
        for ns in (self.bot, self.gw, self.up, self.inet):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        shutil.rmtree(self.etc, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.etc.parent.rmdir()  # /etc/netns, if this test made it and nothing else is in it


@contextlib.contextmanager
def fake_internet(tmp: Path, **kw: Any) -> Iterator[Env]:
    env = Env(tmp)
    try:
        env.build(**kw)
        yield env
    finally:
        env.close()
