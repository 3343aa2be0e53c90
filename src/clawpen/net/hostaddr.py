"""The addresses of the host itself, read over netlink and cached, for the egress address check.

A bot whose egress is ``"open"`` may go to any public address, but never to the host it runs
on: a service bound to ``0.0.0.0`` on the host's public address would otherwise be one
gateway hop away. :func:`clawpen.spec.egress.address_problem` refuses every address this module
reports (plus the unspecified and loopback ranges) unless ``allow_private`` lists it on its own.

"The host" is the network namespace the gateway connects *from* (its upstream namespace, the
daemon's own by default). A netlink socket is bound to the namespace of the thread that made
it, so :class:`HostAddresses` takes the namespace as an fd, or uses the creating thread's.

* :func:`read_addresses` ``(sock)``: one ``RTM_GETADDR`` dump, every interface's local address.
* :class:`HostAddresses`: a cached set for one namespace, re-read when the kernel announces an
  address change (``RTMGRP_IPV4_IFADDR``/``RTMGRP_IPV6_IFADDR``, drained without blocking on
  each :meth:`~HostAddresses.get`) and at least every ``max_age`` seconds.
* :class:`PerNamespace`: a :class:`HostAddresses` for whichever namespace the *calling thread*
  is in (keyed by the namespace's inode), so one object serves threads in different namespaces.

Only the standard library talks netlink here (no pyroute2 event loop), so any thread, inside
an asyncio loop or not, may call it; a refresh is one dump of a few hundred bytes per interface.
"""

from __future__ import annotations

import collections
import errno
import ipaddress
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable

from clawpen.errors import HostError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Reader = Callable[[], frozenset[IPAddress]]

MAX_AGE = 2.0  # seconds: re-read at least this often even if no change was announced

_RTM_NEWADDR, _RTM_GETADDR = 20, 22
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_DUMP, _NLM_F_DUMP_INTR = 0x1, 0x300, 0x10
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_RTMGRP_IPV4_IFADDR, _RTMGRP_IPV6_IFADDR = 0x10, 0x100
_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTATTR = struct.Struct("=HH")  # len, type
_TIMEOUT = 2.0


def _align(n: int) -> int:
    return (n + 3) & ~3


def netlink_socket(groups: int = 0) -> socket.socket:
    """A NETLINK_ROUTE socket in the calling thread's namespace (``groups``: multicast groups)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    try:
        sock.bind((0, groups))
    except OSError:
        sock.close()
        raise
    return sock


def _parse_addr(payload: bytes) -> IPAddress | None:
    """The interface's own address in one RTM_NEWADDR payload (IFA_LOCAL, else IFA_ADDRESS:
    on a point-to-point link IFA_ADDRESS is the peer's)."""
    family = _IFADDRMSG.unpack_from(payload)[0]
    size = {socket.AF_INET: 4, socket.AF_INET6: 16}.get(family)
    if size is None:
        return None
    found: dict[int, bytes] = {}
    pos = _IFADDRMSG.size
    while pos + _RTATTR.size <= len(payload):
        length, kind = _RTATTR.unpack_from(payload, pos)
        if length < _RTATTR.size:
            break
        if kind in (_IFA_ADDRESS, _IFA_LOCAL) and length - _RTATTR.size == size:
            found[kind] = payload[pos + _RTATTR.size : pos + length]
        pos += _align(length)
    raw = found.get(_IFA_LOCAL, found.get(_IFA_ADDRESS))
    return ipaddress.ip_address(raw) if raw is not None else None


def read_addresses(sock: socket.socket, seq: int = 1) -> frozenset[IPAddress]:
    """Every address of every interface in ``sock``'s namespace (one RTM_GETADDR dump).

    ``sock`` is a NETLINK_ROUTE socket (:func:`netlink_socket`). Raises ``OSError`` when the
    kernel answers with an error; retries a dump the kernel marks as interrupted.
    """
    for attempt in range(5):
        request = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        seq_now = seq + attempt
        header = _NLMSG.pack(
            _NLMSG.size + len(request), _RTM_GETADDR, _NLM_F_REQUEST | _NLM_F_DUMP, seq_now, 0
        )
        sock.settimeout(_TIMEOUT)
        sock.sendto(header + request, (0, 0))
        found: set[IPAddress] = set()
        interrupted = False
        done = False
        while not done:
            data = sock.recv(1 << 16)
            pos = 0
            while pos + _NLMSG.size <= len(data):
                length, kind, flags, got_seq, _pid = _NLMSG.unpack_from(data, pos)
                if length < _NLMSG.size:
                    break
                body = data[pos + _NLMSG.size : pos + length]
                pos += _align(length)
                if got_seq != seq_now:
                    continue  # a stale answer to an earlier, abandoned dump
                interrupted |= bool(flags & _NLM_F_DUMP_INTR)
                if kind == _NLMSG_DONE:
                    done = True
                    break
                if kind == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", body)[0]
                    if code:
                        raise OSError(code, f"netlink RTM_GETADDR: {os.strerror(code)}")
                elif kind == _RTM_NEWADDR and len(body) >= _IFADDRMSG.size:
                    addr = _parse_addr(body)
                    if addr is not None:
                        found.add(addr)
        if not interrupted:
            return frozenset(found)
    raise OSError(errno.EAGAIN, "netlink RTM_GETADDR: the dump was interrupted five times in a row")


class Closed(OSError):
    """:meth:`HostAddresses.get` after :meth:`HostAddresses.close`."""


class HostAddresses:
    """The addresses of one network namespace (``netns_fd``; ``None``: the namespace of the
    thread that makes the object), cached: re-read when the kernel announces an address change
    (unless ``watch`` is false) and at least every ``max_age`` seconds. ``reader`` replaces the
    netlink dump (tests).

    Thread-safe. A read that fails raises :class:`~clawpen.errors.HostError` (the caller
    refuses the connection: the check fails closed) and is retried on the next call.
    """

    def __init__(
        self,
        netns_fd: int | None = None,
        *,
        max_age: float = MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
        reader: Reader | None = None,
        watch: bool = True,
    ) -> None:
        self.max_age = max_age
        self.clock = clock
        self._lock = threading.Lock()
        self._addresses: frozenset[IPAddress] | None = None
        self._read_at = 0.0
        self._seq = 0
        self._dump: socket.socket | None = None
        self._watch: socket.socket | None = None
        self._reader = reader
        if reader is None:
            from clawpen.netns import netns_thread_call

            self._dump, self._watch = netns_thread_call(netns_fd, lambda: self._open_sockets(watch))
        self._announced: select.poll | None = None  # readable (or in error): something to drain
        if self._watch is not None:
            self._announced = select.poll()
            self._announced.register(self._watch, select.POLLIN)

    @staticmethod
    def _open_sockets(watch: bool) -> tuple[socket.socket, socket.socket | None]:
        try:
            dump = netlink_socket()
        except OSError as err:
            raise HostError(f"cannot open a netlink socket: {err.strerror}", where="host addresses") from err
        if not watch:
            return dump, None
        try:
            announced = netlink_socket(_RTMGRP_IPV4_IFADDR | _RTMGRP_IPV6_IFADDR)
        except OSError:
            return dump, None  # no announcements: max_age still bounds how stale the set can be
        announced.setblocking(False)
        return dump, announced

    def _changed(self) -> bool:
        """Drain the announcement socket; True if the kernel announced anything (or dropped
        announcements: ENOBUFS)."""
        if self._watch is None:
            return False
        if self._announced is not None and not self._announced.poll(0):
            return False  # nothing announced (the common case: no failed read, no exception)
        changed = False
        while True:
            try:
                if not self._watch.recv(1 << 16):
                    return changed
                changed = True
            except BlockingIOError:
                return changed
            except OSError:  # ENOBUFS: announcements were lost, so assume a change
                changed = True

    def _read(self) -> frozenset[IPAddress]:
        if self._reader is not None:
            return self._reader()
        if self._dump is None:
            raise Closed("the host address reader was closed")
        self._seq = (self._seq + 8) % (1 << 31)
        return read_addresses(self._dump, self._seq + 1)

    def get(self) -> frozenset[IPAddress]:
        """The namespace's addresses now (cached; re-read if changed or older than max_age)."""
        with self._lock:
            now = self.clock()
            stale = self._addresses is None or now - self._read_at >= self.max_age
            if self._changed() or stale:
                try:
                    self._addresses = self._read()
                except Closed:
                    raise
                except OSError as err:
                    self._addresses = None
                    raise HostError(
                        f"cannot read the host's addresses over netlink: {err}",
                        where="host addresses",
                        hint="the egress check refuses connections until they can be read",
                    ) from None
                self._read_at = now
            assert self._addresses is not None
            return self._addresses

    __call__ = get

    def close(self) -> None:
        with self._lock:
            for sock in (self._dump, self._watch):
                if sock is not None:
                    sock.close()
            self._dump = self._watch = None
            self._addresses = None


class PerNamespace:
    """Host addresses of the network namespace the *calling thread* is in: one
    :class:`HostAddresses` per namespace (keyed by its inode), at most ``size`` of them (the
    least recently used one is closed first).

    Finding the calling thread's namespace is a ``stat`` of ``/proc/thread-self/ns/net`` (a
    procfs walk, the dearest step of a cached lookup). A thread that stays in its namespace for
    good (the gateway's workers, which join the upstream namespace once when they start) calls
    :meth:`pin_thread` once, and its lookups skip the walk."""

    def __init__(self, *, size: int = 16, max_age: float = MAX_AGE) -> None:
        self.size = size
        self.max_age = max_age
        self._lock = threading.Lock()
        self._by_ns: collections.OrderedDict[tuple[int, int], HostAddresses] = collections.OrderedDict()
        self._pinned = threading.local()  # .key: the calling thread's namespace, if pinned

    @staticmethod
    def _thread_ns() -> tuple[int, int]:
        st = os.stat("/proc/thread-self/ns/net")
        return st.st_dev, st.st_ino

    def pin_thread(self) -> None:
        """Remember the calling thread's namespace: it must never move to another one (no
        ``setns`` that is not undone before the thread's next lookup)."""
        self._pinned.key = self._thread_ns()

    def get(self) -> frozenset[IPAddress]:
        key: tuple[int, int] | None = getattr(self._pinned, "key", None)
        if key is None:
            key = self._thread_ns()
        while True:
            with self._lock:
                found = self._by_ns.get(key)
                if found is None:
                    found = HostAddresses(max_age=self.max_age)  # sockets made here: this namespace
                    self._by_ns[key] = found
                    while len(self._by_ns) > self.size:
                        self._by_ns.popitem(last=False)[1].close()
                self._by_ns.move_to_end(key)
            try:
                return found.get()
            except Closed:  # evicted by another thread meanwhile: make a new one
                with self._lock:
                    if self._by_ns.get(key) is found:
                        del self._by_ns[key]

    __call__ = get

    def close(self) -> None:
        with self._lock:
            while self._by_ns:
                self._by_ns.popitem()[1].close()


def read_once() -> frozenset[IPAddress]:
    """The addresses of the calling thread's network namespace, read now (no cache: for callers
    that hold no :class:`HostAddresses` or :class:`PerNamespace` of their own)."""
    reader = HostAddresses()
    try:
        return reader.get()
    finally:
        reader.close()
