"""The UDP side of the gateway's DNS server: one socket per bot link, read in turn.

Every bot asks the gateway address of its own link (``gw_addr``). Next to the wildcard socket
(``host:port``), the front binds one socket to each link's ``gw_addr`` the first time a query
of that link arrives; the kernel then delivers each bot's datagrams into that bot's own socket
buffer, so a bot flooding faster than the gateway reads fills only its own buffer, and the
kernel's drops fall on the flooder, not on its neighbours. One loop (epoll) reads at most
``burst`` datagrams from each ready socket in turn and hands them to ``on_query``, which must
not block (it queues or drops). Sockets of links that are gone are closed.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from collections.abc import Callable

from clawpen.net.types import LinkRegistry
from clawpen.netns import socket_in

READ_BURST = 64  # datagrams read from one socket before the next ready socket's turn
RCVBUF = 1 << 20  # bytes of receive buffer per socket
TICK = 1.0  # seconds between calls of ``on_tick`` (and the check for gone links)

OnQuery = Callable[[socket.socket, bytes, tuple[str, int]], None]


class UdpFront:
    """The read side: ``start`` binds, ``run`` loops (in its own thread) until ``stop``."""

    def __init__(
        self,
        registry: LinkRegistry,
        on_query: OnQuery,
        on_tick: Callable[[], None],
        *,
        netns_fd: int | None,
        host: str,
        port: int,
        per_link: bool = True,
    ) -> None:
        self.registry = registry
        self.on_query = on_query
        self.on_tick = on_tick
        self.netns_fd = netns_fd
        self.host = host
        self.port = port
        self.per_link = per_link and host in ("0.0.0.0", "")  # noqa: S104 - a wildcard bind only
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._main: socket.socket | None = None
        self._links: dict[str, tuple[socket.socket | None, str]] = {}  # gw_addr -> (sock, bot_addr)
        self._stopped = False

    def start(self) -> None:
        self._main = self._bind(self.host)
        self._sel.register(self._main, selectors.EVENT_READ)
        self._sel.register(self._wake_r, selectors.EVENT_READ)

    def _bind(self, host: str) -> socket.socket:
        sock = socket_in(self.netns_fd, socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # wildcard + per-link binds
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.bind((host, self.port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def stop(self) -> None:
        self._stopped = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def run(self) -> None:
        try:
            self._loop()
        finally:
            for sock in [self._main, *(s for s, _ in self._links.values())]:
                if sock is not None:
                    sock.close()
            self._links.clear()
            self._sel.close()
            self._wake_r.close()
            self._wake_w.close()

    def _loop(self) -> None:
        next_tick = time.monotonic() + TICK
        while not self._stopped:
            for key, _ in self._sel.select(timeout=TICK):
                sock = key.fileobj
                if sock is self._wake_r or not isinstance(sock, socket.socket):
                    continue
                self._read(sock)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK
                self.on_tick()
                self._prune()

    def _read(self, sock: socket.socket) -> None:
        for _ in range(READ_BURST):
            try:
                data, addr = sock.recvfrom(4096)
            except OSError:  # BlockingIOError: read empty; ICMP errors: try the next one later
                return
            if not data:
                continue
            if sock is self._main and self.per_link:
                self._adopt(addr[0])
            self.on_query(sock, data, addr)

    def _adopt(self, source: str) -> None:
        """Give the link of ``source`` its own socket (once; a failed bind is not retried)."""
        link = self.registry.by_source(source)
        if link is None or link.gw_addr in self._links:
            return
        try:
            sock: socket.socket | None = self._bind(link.gw_addr)
        except OSError:
            sock = None  # e.g. the address is not (yet) on an interface: the wildcard serves it
        if sock is not None:
            self._sel.register(sock, selectors.EVENT_READ)
        self._links[link.gw_addr] = (sock, link.bot_addr)

    def _prune(self) -> None:
        for gw, (sock, bot_addr) in list(self._links.items()):
            link = self.registry.by_source(bot_addr)
            if link is None or link.gw_addr != gw:
                del self._links[gw]
                if sock is not None:
                    self._sel.unregister(sock)
                    sock.close()

    def link_sockets(self) -> int:
        """How many links have a socket of their own (tests)."""
        return sum(1 for s, _ in self._links.values() if s is not None)
