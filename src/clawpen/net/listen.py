"""The gateway's listening sockets and the original destination of a redirected connection.

Each gateway port (proxy, transparent) has an IPv4 listener on ``host`` and, next to it, an
IPv6-only one (``IPV6_V6ONLY``) on ``host6`` and the same port, for the links of
``network.ipv6`` bots. Both are made in the gateway namespace. nftables redirects a bot's
other TCP connections to the transparent port; :func:`original_dst` reads where the bot meant
to go (``SO_ORIGINAL_DST`` for IPv4, ``IP6T_SO_ORIGINAL_DST`` for IPv6).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct

from clawpen.netns import socket_in

SO_ORIGINAL_DST = 80  # level SOL_IP, a sockaddr_in
IP6T_SO_ORIGINAL_DST = 80  # the same number at level SOL_IPV6, a sockaddr_in6
BACKLOG = 4096


def listeners(netns_fd: int | None, host: str, host6: str | None, port: int) -> list[socket.socket]:
    """The listening sockets of one port: IPv4 on ``host``, then IPv6-only on ``host6`` (left
    out when ``host6`` is None or the kernel has no IPv6) on the port the IPv4 one got."""
    made: list[socket.socket] = []
    try:
        v4 = _listen(netns_fd, socket.AF_INET, host, port, made)
        if host6 is not None:
            _listen(netns_fd, socket.AF_INET6, host6, v4.getsockname()[1], made)
    except BaseException:
        for sock in made:
            sock.close()
        raise
    return made


def _listen(
    netns_fd: int | None, family: int, host: str, port: int, made: list[socket.socket]
) -> socket.socket:
    try:
        sock = socket_in(netns_fd, family, socket.SOCK_STREAM)
    except OSError as err:
        if family == socket.AF_INET6 and err.errno == errno.EAFNOSUPPORT:
            return made[0]  # a kernel without IPv6: the IPv4 listener only
        raise
    made.append(sock)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted sockets inherit it
    sock.bind((host, port))
    sock.listen(BACKLOG)
    return sock


def original_dst(conn: socket.socket) -> tuple[str, int]:
    """Where the bot meant to go before nftables redirected it here. An IPv6 address comes back
    compressed (``str(IPv6Address)``), the spelling the gateway's DNS records answers in."""
    if conn.family == socket.AF_INET6:
        raw = conn.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
        port = struct.unpack_from("!H", raw, 2)[0]
        return str(ipaddress.IPv6Address(raw[8:24])), port
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack_from("!H", raw, 2)[0]
    return socket.inet_ntoa(raw[4:8]), port
