"""Move bytes both ways between two connected TCP sockets, zero-copy where the kernel allows.

:func:`relay` blocks until both directions end. Each direction runs ``splice(2)`` from the
source socket into a pipe and from the pipe into the destination socket, so the data never
enters Python. Normally the caller's thread does both directions (``poll`` + non-blocking
splice); with a gate that must wait for ``a``'s first bytes while ``b`` may already talk, the
``b`` -> ``a`` direction gets a thread of its own (blocking splice). When a side closes its
writing half, the other side's writing half is shut down (half-close is kept:
a client can send EOF and still read the answer). A reset or error on either side tears both
down. Byte counts come back as ``(a_to_b, b_to_a)``.

Published ports can use the same call: ``relay(client_sock, bot_sock)``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import queue
import select
import socket
import struct
import threading
from collections.abc import Callable
from typing import NamedTuple

_log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes per splice call
PIPE_SIZE = 1 << 20  # asked for; the kernel caps it at /proc/sys/fs/pipe-max-size for non-root
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1)  # not SPLICE_F_MORE: it corks small replies ~200 ms
_BENIGN = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.EBADF, errno.ESHUTDOWN, errno.ETIMEDOUT)


class Counts(NamedTuple):
    a_to_b: int
    b_to_a: int
    refused: str | None = None  # the reason a gate refused the connection


class Refused(Exception):
    """Raised by a gate (see :func:`relay`) to tear the connection down; the text is the reason."""


def tune(sock: socket.socket) -> None:
    """No Nagle delay for a relayed socket (buffers are left to the kernel's autotuning, which
    grows them for bulk transfers and keeps idle connections small)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


Watch = tuple[int, Callable[[], None]]
"""A descriptor a wait also watches, and what to call (once) when it becomes readable: the
gateway's parked head-stage loop (:class:`clawpen.net.heads.Lead`)."""


def send_all(sock: socket.socket, data: bytes, before_wait: Callable[[], None] | None = None) -> None:
    """Send all of ``data``, waiting for room if ``sock`` is non-blocking (``before_wait()``
    first)."""
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            if before_wait is not None:
                before_wait()
                before_wait = None
            poller = select.poll()
            poller.register(sock, select.POLLOUT)
            poller.poll()
            continue
        view = view[sent:]


def _pump(
    src: socket.socket,
    dst: socket.socket,
    prefix: bytes,
    errors: list[BaseException],
    gate: Callable[[], bytes] | None = None,
) -> int:
    """One direction until EOF: ``gate()`` and ``prefix`` first, then splice. Returns bytes moved."""
    moved = [0]
    try:
        if gate is not None:
            prefix += gate()
        if prefix:
            send_all(dst, prefix)
            moved[0] += len(prefix)
        _splice_loop(src.fileno(), dst.fileno(), moved)
    except (OSError, Refused) as err:
        if not isinstance(err, OSError) or err.errno not in _BENIGN:
            errors.append(err)
        # Wake the other direction: nothing more can flow.
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        return moved[0]
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
    return moved[0]


SPARE_PIPES = 4  # empty pipes kept for the next relays (process-wide)
_spares: list[tuple[int, int]] = []
_spares_lock = threading.Lock()


def _pipe() -> tuple[int, int]:
    """A spare pipe (kept between connections: fewer syscalls), or a new one."""
    with _spares_lock:
        if _spares:
            return _spares.pop()
    rd, wr = os.pipe2(os.O_CLOEXEC)
    with contextlib.suppress(OSError):
        fcntl.fcntl(wr, _F_SETPIPE_SZ, PIPE_SIZE)
    return rd, wr


def _keep(rd: int, wr: int, empty: bool) -> None:
    """Keep an empty pipe for a next connection (at most :data:`SPARE_PIPES` in the process,
    whichever thread relays next: no descriptors pile up with the threads), else close it."""
    if empty:
        with _spares_lock:
            if len(_spares) < SPARE_PIPES:
                _spares.append((rd, wr))
                return
    os.close(rd)
    os.close(wr)


def _splice_loop(src: int, dst: int, moved: list[int]) -> None:
    rd, wr = _pipe()
    clean = False
    try:
        while True:
            try:
                got = os.splice(src, wr, CHUNK, flags=_SPLICE_FLAGS)
            except OSError as err:
                if err.errno in (errno.EINVAL, errno.ENOSYS) and moved[0] == 0:
                    _copy_loop(src, dst, moved)
                    return
                raise
            if got == 0:
                clean = True  # the pipe is empty: keep it for this thread's next connection
                return
            left = got
            while left:
                left -= os.splice(rd, dst, left, flags=_SPLICE_FLAGS)
            moved[0] += got
    finally:
        _keep(rd, wr, clean)


def _copy_loop(src: int, dst: int, moved: list[int]) -> None:
    """Fallback when splice is not available for these descriptors."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    while True:
        got = os.readv(src, [buf])
        if got == 0:
            return
        out = view[:got]
        while out:
            out = out[os.write(dst, out) :]
        moved[0] += got


def relay(
    a: socket.socket,
    b: socket.socket,
    *,
    a_prefix: bytes = b"",
    b_prefix: bytes = b"",
    a_gate: Callable[[], bytes] | None = None,
    gate_first: bool = False,
    spawn: Callable[[Callable[[], None]], None] | None = None,
    idle: float | None = None,
    watch: Watch | None = None,
) -> Counts:
    """Relay between ``a`` and ``b`` until both directions end; close neither (the caller does).

    ``a_prefix`` is sent to ``b`` before anything else read from ``a`` (bytes the caller already
    read to sniff the destination); ``b_prefix`` likewise to ``a``. ``a_gate`` (optional) runs
    first in the ``a`` -> ``b`` direction while ``b`` -> ``a`` already flows: it reads what it
    needs from ``a`` and returns those bytes (sent on to ``b``), or raises :class:`Refused`,
    which tears both sides down and comes back in ``Counts.refused``. ``spawn`` runs the
    second direction (default: a new thread; the gateway passes its :class:`Workers`).
    With ``gate_first`` the gate runs before ``b`` -> ``a`` starts (for protocols where ``a``
    speaks first, such as TLS): then handing off the second direction overlaps with ``b``'s
    answer instead of delaying the first bytes. The sockets may be blocking or not: with a
    gate they are made blocking, without one they are made (and left) non-blocking; tune them
    first (:func:`tune`) if they are TCP. ``idle`` (seconds, only without a gate): when no byte
    has moved either way for that long, both sides are torn down (the published-port relay
    bounds its connections this way). ``watch`` (only without a gate): a :data:`Watch` the
    relay's poll also waits on.
    """
    if a_gate is not None:  # a gate reads and a direction of its own splices: blocking
        for s in (a, b):
            if s.gettimeout() is not None:
                s.setblocking(True)
    errors: list[BaseException] = []
    back = [0]
    done = threading.Event()
    if gate_first and a_gate is not None:
        try:
            a_prefix += a_gate()
            if a_prefix:
                send_all(b, a_prefix)
        except (OSError, Refused) as err:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            refused = str(err) if isinstance(err, Refused) else None
            return Counts(0, 0, refused)
        sent, a_prefix, a_gate = len(a_prefix), b"", None
    else:
        sent = 0

    if a_gate is None:  # nothing to wait for: one thread moves both directions
        forward, backward = _poll_relay(a, b, a_prefix, b_prefix, idle, watch)
        return Counts(sent + forward, backward, None)

    def other() -> None:
        try:
            back[0] = _pump(b, a, b_prefix, errors)
        finally:
            done.set()

    if spawn is None:
        threading.Thread(target=other, name="clawpen-relay", daemon=True).start()
    else:
        spawn(other)
    forward = sent + _pump(a, b, a_prefix, errors, a_gate)
    done.wait()
    refused = next((str(e) for e in errors if isinstance(e, Refused)), None)
    return Counts(forward, back[0], refused)


_NONBLOCK = _SPLICE_FLAGS | getattr(os, "SPLICE_F_NONBLOCK", 2)
_STALL_LIMIT = 1000  # poll said ready this many times in a row and nothing moved: give up


class _Way:
    """One direction of :func:`_poll_relay`: src -> pipe -> dst, non-blocking."""

    __slots__ = ("done", "dst", "dst_fd", "moved", "pending", "rd", "src", "src_fd", "wr")

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src, self.dst = src, dst
        self.src_fd, self.dst_fd = src.fileno(), dst.fileno()
        self.rd, self.wr = _pipe()
        self.pending = 0  # bytes in the pipe
        self.moved = 0
        self.done = False

    def want(self) -> tuple[int, int]:
        """(fd, poll bit) this direction waits for: room in dst while the pipe holds bytes,
        else bytes in src."""
        return (self.dst_fd, select.POLLOUT) if self.pending else (self.src_fd, select.POLLIN)

    def step(self) -> bool:
        """Move what can move now; True if anything did. Raises OSError on a broken side.

        A read shorter than :data:`CHUNK` emptied the socket's queue: the next bytes are left
        to the next ``poll`` instead of one more read that would say ``EAGAIN``."""
        progress = False
        while not self.done:
            if not self.pending:
                try:
                    got = os.splice(self.src_fd, self.wr, CHUNK, flags=_NONBLOCK)
                except BlockingIOError:
                    return progress
                if got == 0:
                    self.done = True
                    with contextlib.suppress(OSError):
                        self.dst.shutdown(socket.SHUT_WR)
                    return True
                self.pending = got
                full = got == CHUNK
            else:
                full = True
            try:
                out = os.splice(self.rd, self.dst_fd, self.pending, flags=_NONBLOCK)
            except BlockingIOError:
                return progress
            self.pending -= out
            self.moved += out
            progress = True
            if self.pending or not full:
                return progress
        return progress

    def release(self, clean: bool) -> None:
        _keep(self.rd, self.wr, clean and not self.pending)


def _poll_relay(  # noqa: PLR0917
    a: socket.socket,
    b: socket.socket,
    a_prefix: bytes,
    b_prefix: bytes,
    idle: float | None = None,
    watch: Watch | None = None,
) -> tuple[int, int]:
    """Both directions in the calling thread: poll, then splice without blocking, only the
    direction whose descriptor is ready. With ``idle``, a connection on which nothing moved for
    that many seconds is torn down. Both sockets are left non-blocking (the caller closes them)."""
    sent_ab = sent_ba = 0
    ways: list[_Way] = []
    clean = False
    watch_fd, on_watch = watch if watch is not None else (-1, None)
    try:
        if a_prefix:
            send_all(b, a_prefix, on_watch)
            sent_ab = len(a_prefix)
        if b_prefix:
            send_all(a, b_prefix, on_watch)
            sent_ba = len(b_prefix)
        for s in (a, b):
            if s.gettimeout() != 0.0:
                s.setblocking(False)
        ways = [_Way(a, b), _Way(b, a)]
        _relay_loop(ways[0], ways[1], idle, watch_fd, on_watch)
        clean = True
    except OSError:
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
    finally:
        for w in ways:
            w.release(clean)
    moved_counts = [w.moved for w in ways] or [0, 0]
    return sent_ab + moved_counts[0], sent_ba + moved_counts[1]


_IN, _OUT = select.POLLIN, select.POLLOUT
_IN_ERR = _IN | select.POLLERR | select.POLLHUP
_OUT_ERR = _OUT | select.POLLERR | select.POLLHUP


def _relay_loop(
    ab: _Way, ba: _Way, idle: float | None, watch_fd: int, on_watch: Callable[[], None] | None
) -> None:
    """The poll loop of :func:`_poll_relay` (a hot path: one turn per burst of bytes)."""
    fa, fb = ab.src_fd, ba.src_fd
    poller = select.poll()
    registered: dict[int, int] = {}
    stalls = 0
    wait_ms = None if idle is None else max(1, int(idle * 1000))
    while not (ab.done and ba.done):
        mask_a = mask_b = 0  # what each socket is waited for: bytes in, or room out
        if not ab.done:
            if ab.pending:
                mask_b = _OUT
            else:
                mask_a = _IN
        if not ba.done:
            if ba.pending:
                mask_a |= _OUT
            else:
                mask_b |= _IN
        for fd, mask in ((fa, mask_a), (fb, mask_b), (watch_fd, _IN)):
            if fd < 0:
                continue
            old = registered.get(fd, 0)
            if mask != old:
                if not mask:
                    poller.unregister(fd)
                    del registered[fd]
                else:
                    (poller.modify if old else poller.register)(fd, mask)
                    registered[fd] = mask
        events = poller.poll(wait_ms)
        if not events:
            if idle is not None:
                raise OSError(errno.ETIMEDOUT, "relay idle")
            continue
        ev_a = ev_b = 0
        moved = False
        for fd, ev in events:
            if fd == fa:
                ev_a = ev
            elif fd == fb:
                ev_b = ev
            elif fd == watch_fd:
                poller.unregister(fd)
                del registered[fd]
                watch_fd = -1
                moved = True  # not a stall
                if on_watch is not None:
                    on_watch()
        if not ab.done and ((ev_b & _OUT_ERR) if ab.pending else (ev_a & _IN_ERR)) and ab.step():
            moved = True
        if not ba.done and ((ev_a & _OUT_ERR) if ba.pending else (ev_b & _IN_ERR)) and ba.step():
            moved = True
        if moved:
            stalls = 0
        else:
            stalls += 1
            if stalls > _STALL_LIMIT:
                raise OSError(errno.EIO, "relay stalled")


class Workers:
    """Reusable threads without an upper bound (a relay holds its thread for the connection's
    life): a task goes to an idle thread if there is one, else to a new thread. Threads idle for
    ``idle_exit`` seconds end. ``init`` runs once in each new thread (e.g. join a namespace)."""

    def __init__(
        self, init: Callable[[], None] | None = None, idle_exit: float = 60.0, name: str = "clawpen"
    ) -> None:
        self.init = init
        self.idle_exit = idle_exit
        self.name = name
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._idle = 0
        self._threads = 0

    def busy(self) -> int:
        """Threads working on a task now (or about to take one from the queue)."""
        with self._lock:
            return self._threads - self._idle

    def submit(self, task: Callable[[], None]) -> None:
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
                self._queue.put(task)
                return
            self._threads += 1
        try:
            threading.Thread(target=self._run, args=(task,), name=self.name, daemon=True).start()
        except BaseException:
            with self._lock:
                self._threads -= 1
            raise

    def _run(self, task: Callable[[], None]) -> None:
        try:
            self._serve(task)
        finally:
            with self._lock:
                self._threads -= 1

    def _serve(self, task: Callable[[], None]) -> None:
        if self.init is not None:
            self.init()
        while True:
            try:
                task()
            except Exception:  # a task's bug must not end the worker, nor pass unseen
                _log.exception("gateway worker task failed")
            with self._lock:
                self._idle += 1
            while True:
                try:
                    task = self._queue.get(timeout=self.idle_exit)
                    break
                except queue.Empty:
                    with self._lock:
                        if self._queue.empty():
                            self._idle -= 1
                            return


def close_quietly(*socks: socket.socket | None) -> None:
    for s in socks:
        if s is not None:
            with contextlib.suppress(OSError):
                s.close()


def reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the peer sees a refused connection, not a clean EOF."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    close_quietly(sock)
