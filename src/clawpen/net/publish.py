"""Published ports: ``publish = ["[HOST_IP:]HOST_PORT:BOT_PORT"]``.

The daemon listens on ``HOST_IP:HOST_PORT`` in its own network namespace (the host's) and
relays each accepted connection to ``127.0.0.1:BOT_PORT`` *inside the bot's network namespace*:
the upstream socket is created by a short-lived thread that joined that namespace
(:func:`clawpen.net.netns.socket_in`), so a bot that binds only its loopback (OpenClaw does) is
reachable, and nothing is routed between the namespaces. This works for bots with a gateway
link (their namespace is a bind mount) and for bots without one (``/proc/PID/ns/net`` of the
sandbox's first process); the namespace is looked up again for each connection, so the relay
survives restarts of the bot.

``expose``: a non-loopback ``HOST_IP`` is refused by the spec unless ``expose = true``;
``from = [CIDRs]`` then limits who may connect: other sources are closed at once and reported
through ``on_refused`` (the daemon records an event).

Relaying: one task per direction, ``recv_into`` a 256 KiB buffer and ``sendall``; half-closes
are forwarded (``shutdown(SHUT_WR)``), so request/response protocols that close their write side
work.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
from collections.abc import Callable, Iterable
from typing import NamedTuple

from clawpen.net import netns
from clawpen.spec.rules import RuleViolation

BUFFER = 256 << 10
CONNECT_TIMEOUT = 5.0


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


async def _pump(loop: asyncio.AbstractEventLoop, src: socket.socket, dst: socket.socket) -> int:
    buf = bytearray(BUFFER)
    view = memoryview(buf)
    total = 0
    try:
        while True:
            n = await loop.sock_recv_into(src, buf)
            if not n:
                break
            await loop.sock_sendall(dst, view[:n])
            total += n
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
    return total


class PortRelay:
    """One published port: listens on the host side and relays into a bot's namespace.

    ``netns_path()`` names the bot's network namespace at the time of a connection (``None``:
    the bot is not running; the connection is closed).
    """

    def __init__(
        self,
        entry: Publish,
        netns_path: Callable[[], str | None],
        *,
        allowed_from: tuple[str, ...] = (),
        on_refused: Callable[[str], None] = lambda _why: None,
    ) -> None:
        self.entry = entry
        self.netns_path = netns_path
        self.allowed_from = allowed_from
        self.on_refused = on_refused
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind and listen (raises OSError if the port is taken)."""
        family = socket.AF_INET6 if ":" in self.entry.host_ip else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.entry.host_ip, self.entry.host_port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._listener = sock
        self._accept_task = asyncio.get_running_loop().create_task(self._accept_loop())

    @property
    def port(self) -> int:
        """The bound host port (useful when HOST_PORT was 0 in tests)."""
        return 0 if self._listener is None else int(self._listener.getsockname()[1])

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._listener is None:
                return
            try:
                conn, peer = await loop.sock_accept(self._listener)
            except OSError:
                await asyncio.sleep(0.1)  # EMFILE and friends: back off, keep serving
                continue
            source = str(peer[0])
            if not source_allowed(source, self.allowed_from):
                conn.close()
                self.on_refused(
                    f"published port {self.entry.host_port}: refused a connection from {source} (not in from)"
                )
                continue
            task = loop.create_task(self._serve(conn))
            self._conns.add(task)
            task.add_done_callback(self._conns.discard)

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        upstream: socket.socket | None = None
        try:
            conn.setblocking(False)
            path = self.netns_path()
            if path is None:
                return
            upstream = await loop.run_in_executor(None, _socket_for, path)
            await asyncio.wait_for(
                loop.sock_connect(upstream, ("127.0.0.1", self.entry.bot_port)), CONNECT_TIMEOUT
            )
            for s in (conn, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.gather(_pump(loop, conn, upstream), _pump(loop, upstream, conn))
        except (OSError, TimeoutError):
            pass
        finally:
            conn.close()
            if upstream is not None:
                upstream.close()

    async def stop(self) -> None:
        """Stop listening and end the relayed connections."""
        task, self._accept_task = self._accept_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for conn in list(self._conns):
            conn.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)


def _socket_for(path: str) -> socket.socket:
    fd = netns.open_netns(path)
    try:
        sock = netns.socket_in(fd, socket.AF_INET, socket.SOCK_STREAM)
    finally:
        os.close(fd)
    sock.setblocking(False)
    return sock
